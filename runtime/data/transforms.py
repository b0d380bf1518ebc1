"""The streaming pipeline's per-image transforms: decode with Pillow, resize, crop, mirror; uint8 (C, H, W) out.

No torchvision: the crop windows are drawn here (from a numpy generator seeded by (seed, epoch, example index),
so an image's crop does not depend on the worker, the rank or the number of processes), the resize is Pillow's
(`draft` lets JPEG decode at a reduced scale first), the crop and the mirror are strided views of the uint8 pixels, copied once into the (C, H, W) tensor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from netspec.limits import Limits, env_name

RRC_SCALE, RRC_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)
CAFFE_RESIZE = 256 / 227  # Caffe's ImageNet recipe: 256 → random 227 crop


def rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one example's random draws in one epoch."""
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, index])


def resized_size(h: int, w: int, resize: int | list[int]) -> tuple[int, int]:
    """(H, W) after resizing an h×w image to a shorter side (int) or to exactly [H, W]."""
    if not isinstance(resize, int):
        return int(resize[0]), int(resize[1])
    if h <= w:
        return resize, max(1, round(w * resize / h))
    return max(1, round(h * resize / w)), resize


def caffe_window(h: int, w: int, out_h: int, out_w: int, train: bool, gen: np.random.Generator | None) -> tuple[int, int, bool]:
    """(top, left, mirror) of Caffe's crop of an out_h×out_w window from h×w: random + coin-flip mirror when
    training, the centre without mirror for test."""
    if not train:
        return (h - out_h) // 2, (w - out_w) // 2, False
    return int(gen.integers(0, h - out_h + 1)), int(gen.integers(0, w - out_w + 1)), bool(gen.random() < 0.5)


def random_resized_box(h: int, w: int, gen: np.random.Generator, scale=RRC_SCALE, ratio=RRC_RATIO) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop of `scale` of the area and aspect in `ratio` (10 tries, then
    the centre crop at the nearest allowed aspect), as torchvision's RandomResizedCrop draws it."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * gen.uniform(*scale)
        aspect = math.exp(gen.uniform(*log_ratio))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(gen.integers(0, h - ch + 1)), int(gen.integers(0, w - cw + 1)), ch, cw
    aspect = w / h
    if aspect < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif aspect > ratio[1]:
        ch, cw = h, round(h * ratio[1])
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


@dataclass(frozen=True)
class Transform:
    """File → uint8 (C, H, W) tensor of the input's shape, by the spec's data.crop and data.resize."""

    shape: tuple[int, int, int]  # the network input, C, H, W
    crop: str = "none"
    resize: int | tuple[int, int] | None = None
    train: bool = True
    max_pixels: int = Limits().image_pixels  # a larger image is refused from its header, before decoding

    def __post_init__(self):
        c, h, w = self.shape
        if c not in (1, 3):
            raise ValueError(f"images give 1 or 3 channels, not {c}")
        if self.resize is None and self.crop != "none":
            object.__setattr__(self, "resize", round(min(h, w) * CAFFE_RESIZE))
        if isinstance(self.resize, list):
            object.__setattr__(self, "resize", tuple(self.resize))

    def __call__(self, path: str, gen: np.random.Generator | None) -> torch.Tensor:
        from PIL import Image

        c, h, w = self.shape
        with Image.open(path) as im:  # reads the header only
            if im.width * im.height > self.max_pixels:  # a decompression bomb: refused before decoding
                raise ValueError(f"{im.width}×{im.height} pixels, more than the limit of {self.max_pixels:,} "
                                 f"(raise {env_name('image_pixels')} for really large images)")
            mode = "L" if c == 1 else "RGB"
            if self.crop == "random_resized" and self.train:
                im = im.convert(mode)
                top, left, ch, cw = random_resized_box(im.height, im.width, gen)
                im = im.resize((w, h), Image.Resampling.BILINEAR, box=(left, top, left + cw, top + ch))
                return _chw(_pixels(im, c), 0, 0, h, w, gen.random() < 0.5)
            rh, rw = (h, w) if self.crop == "none" else resized_size(im.height, im.width, self.resize)
            im.draft(mode, (rw, rh))  # JPEG: decode at the smallest scale still ≥ the target (a no-op otherwise)
            im = im.convert(mode)
            if im.size != (rw, rh):
                im = im.resize((rw, rh), Image.Resampling.BILINEAR)
            a = _pixels(im, c)
        if self.crop == "none":
            return _chw(a, 0, 0, h, w, False)
        if rh < h or rw < w:
            raise ValueError(f"resized to {rh}×{rw}, smaller than the {h}×{w} input: raise data.resize")
        top, left, mirror = caffe_window(rh, rw, h, w, self.train and self.crop == "caffe", gen)
        return _chw(a, top, left, h, w, mirror)


def _pixels(im, c: int) -> np.ndarray:
    """A Pillow image as uint8 (H, W, C) pixels."""
    return np.asarray(im, np.uint8).reshape(im.height, im.width, c)


def _chw(a: np.ndarray, top: int, left: int, h: int, w: int, mirror: bool) -> torch.Tensor:
    """The h×w window at (top, left) of (H, W, C) pixels, mirrored or not, as a contiguous uint8 (C, H, W) tensor.

    Cropped and mirrored as strided views, then one copy (torch's strided uint8 copies in a process with
    several intra-op threads are ~100× slower than numpy's, and the main process may decode when workers: 0)."""
    window = a[top:top + h, left:left + w]
    if mirror:
        window = window[:, ::-1]
    return torch.from_numpy(window.transpose(2, 0, 1).copy())  # C order: contiguous, writable
