"""VOI window settings as requested by a client (DICOMweb ``window=`` parameter)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

WindowFunction = Literal["linear", "linear_exact", "sigmoid"]

# PS3.18 spells the exact variant "linear-exact" while the DICOM VOI LUT Function
# (0028,1056) uses LINEAR_EXACT; accept both so URLs copied from either world work.
_FUNCTIONS: dict[str, WindowFunction] = {
    "linear": "linear",
    "linear-exact": "linear_exact",
    "linear_exact": "linear_exact",
    "sigmoid": "sigmoid",
}


@dataclass(frozen=True)
class Window:
    """A VOI window: center and width in modality units (e.g. HU), plus the VOI function.

    Attributes
    ----------
    center : float
        Window center, in the output units of the Modality LUT.
    width : float
        Window width; ``>= 1`` for ``linear``, ``> 0`` for the other functions
        (PS3.3 C.11.2.1.2).
    function : {"linear", "linear_exact", "sigmoid"}
        The VOI LUT function (PS3.3 C.11.2.1.3).
    """

    center: float
    width: float
    function: WindowFunction = "linear"

    def __post_init__(self) -> None:
        # Validate here rather than only in parse() so that windows built in code
        # fail early instead of deep inside pydicom's windowing.
        if self.function not in ("linear", "linear_exact", "sigmoid"):
            raise ValueError(
                f"unknown window function {self.function!r}; "
                "expected linear, linear-exact or sigmoid"
            )
        if not (math.isfinite(self.center) and math.isfinite(self.width)):
            raise ValueError(
                f"window center and width must be finite numbers, got {self.center}, {self.width}"
            )
        if self.function == "linear" and self.width < 1:
            raise ValueError(f"window width must be >= 1 for linear windowing, got {self.width:g}")
        if self.width <= 0:
            raise ValueError(f"window width must be > 0, got {self.width:g}")

    @property
    def voi_lut_function(self) -> str:
        """The DICOM (0028,1056) VOI LUT Function code string for this window."""
        return self.function.upper()

    @classmethod
    def parse(cls, text: str) -> Window:
        """Parse the DICOMweb ``window`` query parameter (PS3.18 8.3.5.1.3).

        Parameters
        ----------
        text : str
            ``center,width`` or ``center,width,function``; function is ``linear``,
            ``linear-exact`` (``linear_exact`` is accepted too) or ``sigmoid``,
            case-insensitive.

        Returns
        -------
        Window
            The parsed window.

        Raises
        ------
        ValueError
            If the text is malformed, a number is not finite, the width is out of
            range for the function, or the function is unknown.
        """
        parts = [p.strip() for p in text.split(",")]
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"window must be 'center,width[,function]', got {text!r}")
        try:
            center = float(parts[0])
            width = float(parts[1])
        except ValueError:
            raise ValueError(
                f"window center and width must be numbers, got {parts[0]!r} and {parts[1]!r}"
            ) from None
        function: WindowFunction = "linear"
        if len(parts) == 3:
            key = parts[2].lower()
            if key not in _FUNCTIONS:
                raise ValueError(
                    f"unknown window function {parts[2]!r}; "
                    "expected linear, linear-exact or sigmoid"
                )
            function = _FUNCTIONS[key]
        return cls(center=center, width=width, function=function)
