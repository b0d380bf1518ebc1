"""Reading one image file for a network input (Pillow and numpy only: `netspec predict` must not need torch)."""
from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import numpy as np

from netspec.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MAX_IMAGE_PIXELS = 1 << 26  # 67M pixels (8192²): a larger header is refused before decoding; NETSPEC_MAX_IMAGE_PIXELS
MAX_IMAGE_BYTES = 1 << 28  # an image file larger than this is not read


def image_limit() -> int:
    text = os.environ.get("NETSPEC_MAX_IMAGE_PIXELS")
    try:
        value = int(text) if text is not None else MAX_IMAGE_PIXELS
    except ValueError:
        value = 0
    if value <= 0:
        raise UserError(f"NETSPEC_MAX_IMAGE_PIXELS={str(text)[:40]!r} is not a positive integer",
                        f"e.g. NETSPEC_MAX_IMAGE_PIXELS={MAX_IMAGE_PIXELS}")
    return value


def read_image(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """The image as uint8 pixels (H, W, C) for an input of `shape` (C, H, W): grey or RGB, resized bilinearly."""
    from PIL import Image, UnidentifiedImageError

    c, h, w = shape
    if c not in (1, 3):
        raise UserError(f"images give 1 (grey) or 3 (RGB) channels, not the {c} of this input",
                        "set input.shape to [1, H, W] or [3, H, W], or give .npy/.npz arrays")
    limit = image_limit()
    fix = "replace or delete the file (PNG, JPG, ... expected)"
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO would block the reader forever, a device never end
            raise UserError(f"{path} is not a regular file", fix)
        if path.stat().st_size > MAX_IMAGE_BYTES:
            raise UserError(f"image {path} is {path.stat().st_size:,} bytes, more than {MAX_IMAGE_BYTES:,}", fix)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes (palette transparency, ...) are no concern here
            Image.MAX_IMAGE_PIXELS = limit  # Pillow refuses larger images itself, for formats we do not check
            with Image.open(path) as im:  # reads the header only
                width, height = im.size
                if width * height > limit:  # a decompression bomb: the header is checked before decoding
                    raise UserError(f"image {path} is {width}×{height} pixels, more than the limit of {limit:,}",
                                    f"{fix}; for really large images raise NETSPEC_MAX_IMAGE_PIXELS")
                im.draft("L" if c == 1 else "RGB", (w, h))  # JPEG: decode at a reduced size when it can
                im = im.convert("L" if c == 1 else "RGB")
                if im.size != (w, h):
                    im = im.resize((w, h), Image.Resampling.BILINEAR)
                return np.asarray(im, np.uint8).reshape(h, w, c)
    except UserError:
        raise
    except Image.DecompressionBombError as err:
        raise UserError(f"image {path} is too large to decode: {str(err)[:120]}", fix) from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"cannot read image {path}: {str(err)[:160]}", fix) from None
    except Exception as err:  # a damaged file can make a decoder raise nearly anything (SyntaxError, struct.error)
        raise UserError(f"cannot read image {path}: damaged ({type(err).__name__}: {str(err)[:120]})", fix) from None
