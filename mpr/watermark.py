"""A visible watermark naming who shared or exported an image, burned into the rendered pixels.

The text is repeated along diagonal rows over the whole image, white with a dark outline and
half transparent: it stays legible on black air and on white bone, and cropping any part of
the image keeps the name on it.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["FONT_CANDIDATES", "burn_watermark", "watermark_font"]

# Fonts with CJK glyphs, first found wins; Pillow's own font has none (names become boxes).
FONT_CANDIDATES = (
    Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"),
    Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"),
    Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"),
    Path("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf"),
)
OPACITY = 0.5
ANGLE = 30.0  # degrees, counter-clockwise
_CONVERTED_MODES = {"P", "PA", "1", "CMYK", "YCbCr", "LAB", "HSV"}


@functools.lru_cache(maxsize=32)
def watermark_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A CJK-capable font of ``size`` pixels, or Pillow's default font if none is installed."""
    for path in FONT_CANDIDATES:
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def burn_watermark(image: Image.Image, text: str) -> Image.Image:
    """Return a copy of ``image`` with ``text`` tiled diagonally across it.

    Parameters
    ----------
    image : PIL.Image.Image
        A rendered image in any Pillow mode. One smaller than 32 pixels on a side is first
        enlarged (nearest neighbour) to 64 on that side, so that no image leaves unmarked.
    text : str
        Who the image was released to, e.g. ``"张医生 · 2026-05-01 · teaching"``.

    Returns
    -------
    PIL.Image.Image
        A new image of the same mode, and of the same size unless it had to be enlarged.
    """
    if min(image.size) < 32:
        factor = -(-64 // min(image.size))
        image = image.resize(
            (image.width * factor, image.height * factor), Image.Resampling.NEAREST
        )
    text = " ".join(text.split()) or "-"
    shade, alpha = _text_layer(image.size, text)
    if image.mode in _CONVERTED_MODES:  # palettes, bilevel, other colour spaces: blend in RGB
        transparent = image.mode == "PA" or "transparency" in image.info
        working = image.convert("RGBA" if transparent else "RGB")
        return _blend(working, shade, alpha).convert(image.mode)
    return _blend(image, shade, alpha)


@functools.lru_cache(maxsize=16)  # a viewer scrolls hundreds of same-sized slices per user
def _text_layer(size: tuple[int, int], text: str) -> tuple[np.ndarray, np.ndarray]:
    """The watermark as ``shade`` (0 dark outline .. 1 white fill) and ``alpha`` (0..OPACITY)."""
    width, height = size
    font_size = max(10, min(width, height) // 18)
    font = watermark_font(font_size)
    stroke = max(1, font_size // 10)
    # The text is drawn once, then pasted in rows over a square canvas that covers the image
    # at any rotation; the canvas is rotated and its middle cut out.
    left, top, right, bottom = ImageDraw.Draw(Image.new("LA", (1, 1))).textbbox(
        (0, 0), text, font=font, stroke_width=stroke
    )
    tile = Image.new("LA", (math.ceil(right - left), math.ceil(bottom - top)), (0, 0))
    ImageDraw.Draw(tile).text(
        (-left, -top), text, font=font, fill=(255, 255), stroke_width=stroke, stroke_fill=(0, 255)
    )
    side = math.ceil(math.hypot(width, height)) + 2 * font_size
    canvas = Image.new("LA", (side, side), (0, 0))
    step_x = tile.width + 2 * font_size
    step_y = max(tile.height, font_size) * 3
    for row, y in enumerate(range(-step_y, side, step_y)):
        offset = (row % 2) * step_x // 2  # staggered rows, like brickwork
        for x in range(-step_x + offset, side, step_x):
            canvas.paste(tile, (x, y), tile)
    rotated = canvas.rotate(ANGLE, resample=Image.Resampling.BICUBIC)
    x0, y0 = (side - width) // 2, (side - height) // 2
    layer = np.asarray(rotated.crop((x0, y0, x0 + width, y0 + height)), dtype=np.float32) / 255
    shade, alpha = layer[..., 0], layer[..., 1] * OPACITY
    shade.flags.writeable = alpha.flags.writeable = False  # shared through the cache
    return shade, alpha


def _blend(image: Image.Image, shade: np.ndarray, alpha: np.ndarray) -> Image.Image:
    bands = []
    for name, band in zip(image.getbands(), image.split(), strict=True):
        values = np.asarray(band)
        if name == "A":  # make the mark visible on transparent parts too
            bands.append(np.maximum(values, np.round(alpha / OPACITY * 255)).astype(values.dtype))
            continue
        low, high = _value_range(values)
        target = low + shade * (high - low)
        mixed = values.astype(np.float64) * (1 - alpha) + target * alpha
        if np.issubdtype(values.dtype, np.integer):
            info = np.iinfo(values.dtype)
            mixed = np.clip(np.round(mixed), info.min, info.max)
        bands.append(mixed.astype(values.dtype))
    if len(bands) == 1:
        return Image.fromarray(bands[0])
    return Image.merge(image.mode, [Image.fromarray(b) for b in bands])


def _value_range(values: np.ndarray) -> tuple[float, float]:
    """Black and white for this band: the full range of 8-bit data, the data's own otherwise."""
    if values.dtype == np.uint8:
        return 0.0, 255.0
    low, high = float(values.min()), float(values.max())
    if high - low < 1:  # a flat image: black and white of the type
        if np.issubdtype(values.dtype, np.integer):
            info = np.iinfo(values.dtype)
            return float(info.min), float(info.max)
        return 0.0, 1.0
    return low, high
