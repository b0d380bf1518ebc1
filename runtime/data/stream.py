"""The streaming image pipeline: an ImageFolder indexed as file paths, decoded on the fly in DataLoader workers.

For data sets too big to hold decoded (ImageNet, Places): memory is the file list (paths and labels, a few
dozen bytes an image) plus the batches in flight, whatever the size of the set. The order is that of
`Batches` (a permutation seeded by (seed, epoch); rank r takes every world_size-th example of it), so DDP and
one process see the same global batches, and `set_epoch(epoch, skip)` resumes mid-epoch. Each image's random
crop is drawn from (seed, epoch, example index): it does not depend on the worker, the rank or the process count.

Layouts (the same rules as the in-memory reader): root/train/<class>/* and root/test/<class>/*, or
root/<class>/* (or root/train/<class>/* alone) split 90/10 with a fixed seed.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from netspec.data_spec import STREAM_AUTO_BYTES, Augment, DataSpec
from netspec.errors import UserError, plural
from netspec.limits import Limits
from netspec.runtime.data.batches import _generator, augment_batch, batch_count, normalisation, shard_size
from netspec.runtime.data.sources import IMAGEFOLDER_SPLIT_SEED, IMAGEFOLDER_TEST_FRACTION, Dataset, data_root, hold_out, load_dataset
from netspec.runtime.data.transforms import Transform, rng
from netspec.runtime.images import IMAGE_SUFFIXES
from netspec.runtime.data.sources import without_data

LAYOUTS = "root/train/<class>/* and root/test/<class>/*, or root/<class>/* (split 90/10)"
PROGRESS_EVERY = 2.0  # seconds between progress lines while indexing


@dataclass
class StreamData:
    """An image folder as file lists: paths relative to `root` (numpy bytes arrays: ~1 byte a character) and int64
    labels; nothing decoded."""

    train_files: np.ndarray
    train_y: torch.Tensor
    test_files: np.ndarray
    test_y: torch.Tensor
    classes: list[str]
    root: Path
    max_pixels: int  # Limits.image_pixels: a larger image is refused from its header when it is decoded
    val_files: np.ndarray | None = None  # the validation split (data.val_split), None without one
    val_y: torch.Tensor | None = None


def index_imagefolder(spec: DataSpec, root: Path, progress=sys.stderr, limits: Limits = Limits()) -> StreamData:
    """The files of an image folder, sorted, with labels; a progress line every few seconds on large folders.
    Its images are decoded within `limits` when they are streamed."""
    train_root = root / "train" if (root / "train").is_dir() else root
    if not train_root.is_dir():
        raise UserError(f"no imagefolder data at {root}: the directory is not there",
                        f"set data.path to a directory laid out as {LAYOUTS}; {without_data(spec)}", spec.at)
    classes = sorted(e.name for e in os.scandir(train_root) if e.is_dir())
    if not classes:
        raise UserError(f"no class directories in {train_root}",
                        f"lay the images out as {LAYOUTS} (one directory per class)", spec.at)
    counter = _Counter(progress, train_root)
    train = _list(train_root, classes, counter, spec)
    if (root / "test").is_dir() and train_root != root:
        test = _list(root / "test", classes, counter, spec)
    else:
        order = np.random.default_rng(IMAGEFOLDER_SPLIT_SEED).permutation(len(train))
        n_test = int(len(train) * IMAGEFOLDER_TEST_FRACTION)
        test, train = [train[i] for i in sorted(order[:n_test])], [train[i] for i in sorted(order[n_test:])]
    counter.done(len(train) + len(test))
    if not train:
        raise UserError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in the class directories of {train_root}",
                        f"lay the images out as {LAYOUTS}", spec.at)
    held = hold_out(len(train), spec)
    val = None
    if held is None:
        train = train[:spec.train_limit]
    else:
        val, train = [train[i] for i in held[0]], [train[i] for i in held[1]]
    test = test[:spec.test_limit]

    def split(files):
        paths = np.array([os.fsencode(os.path.relpath(p, root)) for p, _ in files]) if files else np.zeros(0, "S1")
        return paths, torch.tensor([label for _, label in files], dtype=torch.int64)

    (tf, ty), (vf, vy) = split(train), split(test)
    return StreamData(tf, ty, vf, vy, list(spec.classes or classes), root, limits.image_pixels,
                      *(split(val) if val is not None else ()))


class _Counter:
    def __init__(self, out, root: Path):
        self.out, self.root, self.n, self.last, self.shown = out, root, 0, time.monotonic(), False

    def add(self, k: int) -> None:
        self.n += k
        now = time.monotonic()
        if self.out is not None and now - self.last > PROGRESS_EVERY:
            print(f"\rindexing {self.root}: {plural(self.n, 'file')}", end="", file=self.out, flush=True)
            self.last, self.shown = now, True

    def done(self, n: int) -> None:
        if self.shown:
            print(f"\rindexed {self.root}: {plural(n, 'file')}", file=self.out, flush=True)


def _list(root: Path, classes: list[str], counter: _Counter, spec: DataSpec) -> list[tuple[str, int]]:
    out = []
    for d in sorted((e for e in os.scandir(root) if e.is_dir()), key=lambda e: e.name):
        if d.name not in classes:
            raise UserError(f"{d.path} is a class directory that {root.parent / 'train'} does not have",
                            "give train/ and test/ the same class directories", spec.at)
        label = classes.index(d.name)
        names = sorted(e.name for e in os.scandir(d.path) if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)
        out += [(os.path.join(d.path, n), label) for n in names]
        counter.add(len(names))
    return out


def check_classes(spec, data) -> None:
    """An image folder's class directories must number the spec's `classes:`."""
    if spec.data.source != "imagefolder" or spec.data.classes:
        return
    root = data_root(spec.data)
    where = root / "train" if (root / "train").is_dir() else root
    if len(data.classes) != spec.classes:
        raise UserError(f"{where} has {len(data.classes)} class directories but the spec has classes: {spec.classes}",
                        f"set classes: {len(data.classes)}, or point data.path at a folder laid out as {LAYOUTS} "
                        f"with one directory per class", spec.data.at)


def streams(spec) -> bool | None:
    """Whether a spec's data go through the streaming pipeline (data.stream); None: `auto`, decided by size."""
    d = spec.data
    if d.source != "imagefolder" or d.stream is False:
        return False
    if d.stream is True or d.crop != "none" or d.resize is not None:
        return True
    return None  # auto without crop/resize: decided by the size once indexed


def load_data(spec, progress=sys.stderr, limits: Limits = Limits()) -> Dataset | StreamData:
    """The spec's data, read within `limits`: file lists for streaming (data.stream), else the whole set decoded
    in memory."""
    if spec.data.source == "lmdb":  # Caffe's databases: always streamed
        from netspec.runtime.data.caffe_lmdb import index_lmdb
        return index_lmdb(spec, progress, limits)
    choice = streams(spec)
    if choice is not False:
        data = index_imagefolder(spec.data, data_root(spec.data), progress, limits)
        check_classes(spec, data)
        decoded = (len(data.train_files) + len(data.test_files)) * int(np.prod(spec.input.shape))
        if choice or decoded > STREAM_AUTO_BYTES:
            return data
    data = load_dataset(spec.data, spec.input.shape, limits)
    check_classes(spec, data)
    return data


class ImageFiles(torch.utils.data.Dataset):
    """Paths (relative to `root`) and labels; item (index, epoch) decodes one file. Holds no decoded image."""

    def __init__(self, files: np.ndarray, labels: torch.Tensor, transform: Transform, seed: int, root: str | Path = ""):
        self.files, self.labels, self.root = files, labels.numpy(), os.fsencode(root)
        self.transform, self.seed = transform, seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        path = os.fsdecode(os.path.join(self.root, self.files[index]))
        try:
            x = self.transform(path, rng(self.seed, epoch, index) if self.transform.train else None)
        except Exception as err:  # a bad file: reported by the main process as one line
            return None, -1, f"cannot read image {path}: {err}"
        return x, int(self.labels[index]), None


def _ignore_signals(worker_id: int) -> None:
    """Workers leave SIGINT/SIGTERM to the training process, which saves a checkpoint and stops (the DataLoader
    then ends its workers); a Ctrl-C reaching the whole process group must not kill them mid-batch first."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def collate(items):
    """uint8 (B, C, H, W) and int64 (B) from a list of items; the first error instead, if any."""
    for _, _, err in items:
        if err:
            return err
    return torch.stack([x for x, _, _ in items]), torch.tensor([y for _, y, _ in items], dtype=torch.int64)


class StreamBatches:
    """One epoch of a split of image files as (float32 normalised images, int64 labels) batches on `device`.

    The order, the sharding, `drop_last`, `set_epoch(epoch, skip)` and the device-side augmentation are those of
    `Batches`; the images come decoded and cropped from `workers` DataLoader processes (from `dataset`, items
    (index, epoch) → (image, label, error), when given: ImageFiles of `files` otherwise)."""

    BAD_ITEM = "replace or delete the file (PNG, JPG, ... expected), or re-index the folder"

    def __init__(self, files: np.ndarray, y: torch.Tensor, batch_size: int, *, train: bool, transform: Transform,
                 mean: list[float], std: list[float], augment: Augment | None = None,
                 device: torch.device | str = "cpu", seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool | None = None, workers: int = 2, prefetch: int = 4, root: str | Path = "",
                 dataset: torch.utils.data.Dataset | None = None):
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad batch_size {batch_size} or rank {rank} of {world_size}")
        channels = transform.shape[0]
        self.y = y.to(torch.int64)
        self.dataset = dataset if dataset is not None else ImageFiles(files, self.y, transform, seed, root)
        self.batch_size, self.train = batch_size, train
        self.augment = augment if train and augment and (augment.crop_pad or augment.flip) else None
        self.device = torch.device(device)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.drop_last = train if drop_last is None else drop_last
        self.workers, self.prefetch = workers, prefetch
        self.epoch, self.skip = 0, 0
        self._scale, self._shift = normalisation(mean, std, channels, self.device)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """As `Batches.set_epoch`: the epoch's order and crops, and how many of its first batches to leave out."""
        self.epoch, self.skip = epoch, skip

    def _shard_size(self) -> int:
        return shard_size(len(self.y), self.rank, self.world_size, self.drop_last)

    def __len__(self) -> int:
        return batch_count(self._shard_size(), self.batch_size, self.drop_last)

    def indices(self) -> list[list[int]]:
        """This rank's batches of the epoch (example indices), after `skip`: the order of `Batches`."""
        n = len(self.y)
        order = torch.randperm(n, generator=_generator(self.seed, self.epoch)) if self.train else torch.arange(n)
        mine = order[self.rank::self.world_size][: self._shard_size()].tolist()
        return [mine[b * self.batch_size:(b + 1) * self.batch_size] for b in range(self.skip if self.train else 0, len(self))]

    def loader(self) -> torch.utils.data.DataLoader:
        """The DataLoader of this epoch's remaining batches (keys (index, epoch)), uint8 batches on the CPU."""
        keys = [[(i, self.epoch) for i in batch] for batch in self.indices()]
        extra = dict(prefetch_factor=self.prefetch, persistent_workers=False) if self.workers else {}
        return torch.utils.data.DataLoader(self.dataset, batch_sampler=keys, num_workers=self.workers,
                                           collate_fn=collate, pin_memory=self.device.type == "cuda",
                                           worker_init_fn=_ignore_signals if self.workers else None, **extra)

    def __iter__(self):
        start = self.skip if self.train else 0
        for b, batch in enumerate(self.loader(), start=start):
            if isinstance(batch, str):
                raise UserError(batch, self.BAD_ITEM)
            x, y = (t.to(self.device, non_blocking=True) for t in batch)
            if self.augment:
                x = augment_batch(x, self.augment, _generator(self.seed, self.epoch, self.rank, b))
            yield x.to(torch.float32).mul_(self._scale).add_(self._shift), y


def stream_batches(spec, data: StreamData, device, rank: int = 0, world_size: int = 1
                   ) -> tuple[StreamBatches, StreamBatches | None, StreamBatches]:
    """This rank's streamed training, validation (None without data.val_split) and test batches for a spec (what `train.make_batches` gives when streaming)."""
    if spec.data.source == "lmdb":
        from netspec.runtime.data.caffe_lmdb import lmdb_batches
        return lmdb_batches(spec, data, device, rank, world_size)
    shape = tuple(int(d) for d in spec.input.shape)
    d = spec.data
    if d.crop == "none" and d.resize is not None and resize_hw(d.resize, shape) != shape[1:]:
        raise UserError(f"data.resize {d.resize} with data.crop: none does not give the input's {shape[1]}×{shape[2]}",
                        "set data.crop: caffe or random_resized, or drop data.resize", d.at)
    if isinstance(d.resize, list) and (d.resize[0] < shape[1] or d.resize[1] < shape[2]):
        raise UserError(f"data.resize {d.resize} is smaller than the {shape[1]}×{shape[2]} input",
                        "set data.resize to at least the input size (Caffe: 256 for 227)", d.at)
    if isinstance(d.resize, int) and d.resize < max(shape[1:]):
        raise UserError(f"data.resize {d.resize} is smaller than the {shape[1]}×{shape[2]} input",
                        f"set data.resize to at least {max(shape[1:])} (Caffe: 256 for 227)", d.at)
    common = dict(mean=spec.input.mean, std=spec.input.std, device=device, seed=spec.train.seed, rank=rank,
                  world_size=world_size, workers=d.workers, root=data.root)
    train = StreamBatches(data.train_files, data.train_y, spec.train.batch_size // world_size, train=True,
                          transform=Transform(shape, d.crop, d.resize, train=True, max_pixels=data.max_pixels), augment=d.augment, **common)
    test, val = (StreamBatches(files, y, spec.train.eval_batch_size, train=False,
                               transform=Transform(shape, d.crop, d.resize, train=False,
                                                   max_pixels=data.max_pixels), **common)
                 if files is not None else None
                 for files, y in ((data.test_files, data.test_y), (data.val_files, data.val_y)))
    return train, val, test


def resize_hw(resize, shape) -> tuple[int, int]:
    return tuple(resize) if isinstance(resize, list) else (resize, resize)
