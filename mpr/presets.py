"""Named VOI window presets (``preset=lung``), kept as data in ``config/window_presets.toml``."""

from __future__ import annotations

import functools
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .window import Window

__all__ = [
    "PRESETS_FILE",
    "WindowPreset",
    "load_presets",
    "presets",
    "resolve_window",
    "window_presets",
]

# The repository's config/ directory: presets are site-editable data, not code.
PRESETS_FILE = Path(__file__).resolve().parents[1] / "config" / "window_presets.toml"


@dataclass(frozen=True)
class WindowPreset:
    """One named window preset.

    Attributes
    ----------
    name : str
        Canonical lower-case name, e.g. ``"lung"``.
    label : str
        Human-readable label (English and Chinese), e.g. ``"Lung 肺窗"``.
    window : Window or None
        The window; None means "the image's own window" (the ``default`` preset).
    aliases : tuple of str
        Other lower-case names accepted for this preset, e.g. ``("head",)`` for ``brain``.
    """

    name: str
    label: str
    window: Window | None
    aliases: tuple[str, ...] = ()


def _number(entry: dict[str, Any], key: str, where: str) -> float:
    value = entry[key]
    # bool is an int subclass in Python; "center = true" is a typo, not 1.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}: {key} must be a finite number, got {value!r}")
    return float(value)


def _preset(name: str, entry: Any, where: str) -> WindowPreset:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: [{name}] must be a table")
    unknown = set(entry) - {"label", "center", "width", "aliases"}
    if unknown:
        raise ValueError(f"{where}: [{name}] has unknown keys {sorted(unknown)}")
    label = entry.get("label")
    if not isinstance(label, str) or not label.strip():
        raise ValueError(f"{where}: [{name}] needs a non-empty label")
    aliases = entry.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise ValueError(f"{where}: [{name}] aliases must be a list of names")
    has_center, has_width = "center" in entry, "width" in entry
    if has_center != has_width:
        raise ValueError(f"{where}: [{name}] needs both center and width, or neither")
    window = None
    if has_center:
        try:
            window = Window(_number(entry, "center", where), _number(entry, "width", where))
        except ValueError as exc:
            raise ValueError(f"{where}: [{name}] {exc}") from None
    return WindowPreset(name.lower(), label.strip(), window, tuple(a.lower() for a in aliases))


def load_presets(path: Path = PRESETS_FILE) -> tuple[WindowPreset, ...]:
    """Read and validate a window presets file.

    Parameters
    ----------
    path : pathlib.Path, optional
        The TOML file; one table per preset with ``label``, optional ``center`` and
        ``width`` (both or neither) and optional ``aliases``.

    Returns
    -------
    tuple of WindowPreset
        The presets in file order.

    Raises
    ------
    RuntimeError
        If the file is missing or unreadable.
    ValueError
        If the file is not valid TOML, an entry is malformed, or a name or alias repeats.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        # The file ships with the repository; without it `preset=` cannot work at all.
        raise RuntimeError(f"window presets file {path} cannot be read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: invalid TOML: {exc}") from exc
    result = tuple(_preset(name, entry, str(path)) for name, entry in data.items())
    seen: set[str] = set()
    for preset in result:
        for key in (preset.name, *preset.aliases):
            if key in seen:
                raise ValueError(f"{path}: preset name {key!r} is used twice")
            seen.add(key)
    return result


@functools.cache
def presets() -> tuple[WindowPreset, ...]:
    """The presets of :data:`PRESETS_FILE`, loaded once (with labels, for user interfaces).

    Returns
    -------
    tuple of WindowPreset
        The presets in file order.
    """
    return load_presets(PRESETS_FILE)


def window_presets() -> dict[str, Window | None]:
    """Canonical preset name -> window (None for ``default``: the image's own window).

    Returns
    -------
    dict
        A new dict each call (the cached presets cannot be changed through it).
    """
    return {preset.name: preset.window for preset in presets()}


def resolve_window(
    window: str | None, preset: str | None, fallback: Window | None
) -> Window | None:
    """Choose the window to apply from the ``window=`` and ``preset=`` query parameters.

    Parameters
    ----------
    window : str or None
        ``"center,width[,function]"`` text (see :meth:`Window.parse`); empty means absent.
    preset : str or None
        A preset name or alias, case-insensitive; empty means absent.
    fallback : Window or None
        What to use when neither is given or the preset is ``default``, typically the
        image's or volume's own window.

    Returns
    -------
    Window or None
        The window; None only when the result is ``fallback`` and that is None.

    Raises
    ------
    ValueError
        If both parameters are given, the window text is malformed, or the preset is
        unknown (the message lists the known names).
    """
    window = window.strip() if window else None
    preset = preset.strip().lower() if preset else None
    if window and preset:
        # Two sources of truth for one image: make the client choose instead of guessing.
        raise ValueError("give either window or preset, not both")
    if window:
        return Window.parse(window)
    if not preset:
        return fallback
    for candidate in presets():
        if preset == candidate.name or preset in candidate.aliases:
            return candidate.window if candidate.window is not None else fallback
    names = ", ".join(p.name for p in presets())
    raise ValueError(f"unknown window preset {preset!r}; known presets: {names}")
