"""Reading one image file for a network input (Pillow and numpy only: `netspec predict` must not need torch)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from netspec.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def read_image(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """The image as uint8 pixels (H, W, C) for an input of `shape` (C, H, W): grey or RGB, resized bilinearly."""
    from PIL import Image, UnidentifiedImageError

    c, h, w = shape
    if c not in (1, 3):
        raise UserError(f"images give 1 (grey) or 3 (RGB) channels, not the {c} of this input",
                        "set input.shape to [1, H, W] or [3, H, W], or give .npy/.npz arrays")
    try:
        with Image.open(path) as im:
            im = im.convert("L" if c == 1 else "RGB")
            if im.size != (w, h):
                im = im.resize((w, h), Image.Resampling.BILINEAR)
            return np.asarray(im, np.uint8).reshape(h, w, c)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"cannot read image {path}: {err}", "replace or delete the file (PNG, JPG, ... expected)") from None
