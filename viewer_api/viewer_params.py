"""Query parameters shared by the viewer's image endpoints, parsed into values or 400s."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Query, Request

from collectors.multipart import parse_accept
from mpr.display import MAX_OUTPUT_SIDE
from mpr.presets import resolve_window
from mpr.window import Window
from viewer_api.problems import HTTPProblem

SERIES = "/studies/{study}/series/{series}"
_NUMBER = r"\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*"


def accepted_image_type(request: Request) -> str:
    """image/jpeg (the default) or image/png, from the Accept header; 406 otherwise."""
    for entry in parse_accept(request.headers.get("accept")):
        if entry.quality <= 0:
            continue
        if entry.media_type in ("*/*", "image/*", "image/jpeg"):
            return "image/jpeg"
        if entry.media_type == "image/png":
            return "image/png"
    raise HTTPProblem(406, "Not acceptable", "viewer images are image/jpeg or image/png")


def explicit_window(window: str | None, preset: str | None) -> Window | None:
    """The window asked for by ``window=`` or ``preset=``; None means the image's own."""
    try:
        return resolve_window(window, preset, None)
    except ValueError as exc:
        raise HTTPProblem(400, "Invalid window", str(exc)) from exc


def _numbers(text: str, count: int, name: str, form: str) -> list[float]:
    match = re.fullmatch(",".join([_NUMBER] * count), text)
    if not match:
        raise HTTPProblem(400, f"Invalid {name}", f"{name} must be {form}, got {text!r}")
    return [float(v) for v in match.groups()]


def parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    form = f"W,H: two integers 1..{MAX_OUTPUT_SIDE}"
    width, height = _numbers(text, 2, "size", form)
    if not all(v.is_integer() and 1 <= v <= MAX_OUTPUT_SIDE for v in (width, height)):
        raise HTTPProblem(400, "Invalid size", f"size must be {form}, got {text!r}")
    return int(width), int(height)


def parse_region(text: str | None) -> tuple[float, float, float, float] | None:
    if text is None:
        return None
    form = "x0,y0,x1,y1: fractions with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1"
    x0, y0, x1, y1 = _numbers(text, 4, "region", form)
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise HTTPProblem(400, "Invalid region", f"region must be {form}, got {text!r}")
    return x0, y0, x1, y1


def window_key(window: Window | None) -> list[object] | None:
    return None if window is None else [window.center, window.width, window.function]


def window_header(window: Window | None) -> dict[str, str]:
    if window is None:
        return {}
    text = f"{window.center:g},{window.width:g}"
    if window.function != "linear":
        text += f",{window.function}"
    return {"X-Window": text}


Quality = Annotated[int, Query(ge=1, le=100)]
