"""Reading one image file for a network input (Pillow and numpy only: `netspec predict` must not need torch)."""
from __future__ import annotations

import stat
import warnings
from pathlib import Path

import numpy as np

from netspec.errors import UserError
from netspec.limits import env_name

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MAX_IMAGE_BYTES = 1 << 28  # an image file larger than this is not read


def read_image(path: Path, shape: tuple[int, ...], max_pixels: int) -> np.ndarray:
    """The image as uint8 pixels (H, W, C) for an input of `shape` (C, H, W): grey or RGB, resized bilinearly.
    An image of more than `max_pixels` (Limits.image_pixels) is refused from its header, before decoding."""
    from PIL import Image, UnidentifiedImageError

    c, h, w = shape
    if c not in (1, 3):
        raise UserError(f"images give 1 (grey) or 3 (RGB) channels, not the {c} of this input",
                        "set input.shape to [1, H, W] or [3, H, W], or give .npy/.npz arrays")
    fix = "replace or delete the file (PNG, JPG, ... expected)"
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO would block the reader forever, a device never end
            raise UserError(f"{path} is not a regular file", fix)
        if path.stat().st_size > MAX_IMAGE_BYTES:
            raise UserError(f"image {path} is {path.stat().st_size:,} bytes, more than {MAX_IMAGE_BYTES:,}", fix)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes (palette transparency, ...) are no concern here
            Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow refuses larger images itself, for formats we do not check
            with Image.open(path) as im:  # reads the header only
                width, height = im.size
                if width * height > max_pixels:  # a decompression bomb: the header is checked before decoding
                    raise UserError(f"image {path} is {width}×{height} pixels, more than the limit of {max_pixels:,}",
                                    f"{fix}; for really large images raise {env_name('image_pixels')}")
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
