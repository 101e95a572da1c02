"""Decoding user images robustly: any mode (L, LA, P, RGBA, I;16, CMYK) becomes 8-bit RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tinyshot.errors import DataError

IMAGE_EXTENSIONS = {
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
}
MIN_SIDE = 8


def to_rgb(img: Image.Image, source: str = "image") -> Image.Image:
    """Alpha is composited on white; 16-bit and float images are rescaled to 8 bits."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.round().astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    return img.convert("RGB")


def open_rgb(path: str | Path, min_side: int = MIN_SIDE) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            im.load()
            img = to_rgb(im, str(path))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    if min(img.size) < min_side:
        raise DataError(f"{path}: image is {img.size[0]}x{img.size[1]}, smaller than {min_side} px")
    return img
