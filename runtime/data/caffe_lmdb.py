"""`data.source: lmdb`: Caffe's LMDB databases of Datum records, streamed through the DataLoader workers.

Indexing reads the keys only (a few dozen bytes a record; the values stay on disk); each worker opens the
database itself and decodes the records of its batches. The order, the per-rank shards and `set_epoch(epoch,
skip)` are `StreamBatches`' (so a resumed run sees the batches an uninterrupted one sees); each record's crop
and mirror are drawn from (seed, epoch, record index), whatever the worker, rank or process count.

Caffe's DataTransformer, per record (data_transformer.cpp): a crop of the input's size — random in TRAIN,
the centre in TEST (`data.crop: caffe`; Caffe's crop_size) —, the mean image's same window subtracted
(`data.mean_file`), mirrored (`data.augment.flip`; Caffe's mirror) — here, in the worker —, then
`(pixel − mean_value) × scale`, which is input.mean = mean_value / 255, input.std = 1 / (255 · scale),
applied batched on the device as for every source. Records stay BGR (as Caffe's OpenCV reads images, and
as the imported weights expect).

The labels are inside the records, read with the pixels: `train_y`/`test_y` hold -1 (not read) for each
record, and a label outside 0..classes-1 stops the run naming the record.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from netspec.data_spec import Augment
from netspec.errors import UserError
from netspec.limits import Limits
from netspec.compiler.caffe.database import (DatabaseError, datum_pixels, entries, first_datum, open_lmdb,
                                             parse_datum, read_mean)
from netspec.runtime.arrays import too_large
from netspec.runtime.data.sources import data_root, hold_out, without_data
from netspec.runtime.data.stream import StreamBatches, StreamData, _Counter
from netspec.runtime.data.transforms import caffe_window, rng

UNREAD = -1  # the label of a record not read yet (labels are read with the pixels)


@dataclass(kw_only=True)
class LmdbData(StreamData):
    """Two databases as key lists (numpy bytes arrays; `*_lengths` restore keys that end in NUL bytes); the
    validation split (data.val_split) is keys of the training database."""

    test_root: Path
    train_lengths: np.ndarray
    test_lengths: np.ndarray
    val_lengths: np.ndarray | None = None
    record_shape: tuple[int, int, int]
    floats: bool  # the records hold float_data
    mean: np.ndarray | None  # the mean image (C, H, W) of data.mean_file


@dataclass(frozen=True)
class DatumTransform:
    """A record's pixels (C, H, W) → the input-sized window, mean image subtracted, mirrored: Caffe's
    DataTransformer up to mean_value and scale (those are input.mean/std, applied on the device)."""

    shape: tuple[int, int, int]  # the network input, C, H, W
    train: bool
    crop: bool  # data.crop: caffe — else the records must have the input's size
    flip: bool  # data.augment.flip (Caffe's mirror): training only
    mean: np.ndarray | None = None
    floats: bool = False  # float32 out (a mean image, or float_data records); uint8 otherwise
    max_pixels: int = Limits().image_pixels  # an encoded record's image larger than this is refused

    def window(self, h: int, w: int, gen: np.random.Generator | None) -> tuple[int, int, bool]:
        """(top, left, mirror): Caffe's crop offsets (random in TRAIN, centre in TEST) and mirror coin."""
        _, out_h, out_w = self.shape
        top, left, mirror = caffe_window(h, w, out_h, out_w, self.train, gen)
        return top, left, mirror and self.flip

    def __call__(self, pixels: np.ndarray, gen: np.random.Generator | None) -> torch.Tensor:
        c, out_h, out_w = self.shape
        pc, h, w = pixels.shape
        if pc != c:
            raise ValueError(f"the record has {pc} channel(s), the input {c}")
        if (h, w) != (out_h, out_w) and not (self.crop and h >= out_h and w >= out_w):
            raise ValueError(f"the record is {h}×{w}, the input {out_h}×{out_w}" +
                             ("" if self.crop else " (data.crop: caffe crops it)"))
        if self.mean is not None and self.mean.shape != pixels.shape:
            raise ValueError(f"the record is {pc}×{h}×{w}, the mean image {'×'.join(map(str, self.mean.shape))}")
        top, left, mirror = self.window(h, w, gen)
        out = pixels[:, top:top + out_h, left:left + out_w]
        if self.mean is not None:
            out = out.astype(np.float32) - self.mean[:, top:top + out_h, left:left + out_w]
        if mirror:
            out = out[:, :, ::-1]
        dtype = np.float32 if self.floats else np.uint8
        return torch.from_numpy(np.array(out, dtype, order="C"))  # a writable copy (a record's buffer is read-only)


class DatumRecords(torch.utils.data.Dataset):
    """The records of one database by key; item (index, epoch) → (C, H, W) tensor, label, error. Each process
    opens the database itself (an lmdb environment does not survive a fork)."""

    def __init__(self, path: Path, keys: np.ndarray, lengths: np.ndarray, transform: DatumTransform, seed: int,
                 classes: int):
        self.path, self.keys, self.lengths = Path(path), keys, lengths
        self.transform, self.seed, self.classes = transform, seed, classes
        self._env, self._pid = None, None

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self):
        return {**self.__dict__, "_env": None, "_pid": None}

    def key(self, index: int) -> bytes:
        return self.keys[index].ljust(int(self.lengths[index]), b"\0")

    def __getitem__(self, item: tuple[int, int]):
        index, epoch = item
        if self._env is None or self._pid != os.getpid():
            self._env, self._pid = open_lmdb(self.path), os.getpid()
        key = self.key(index)
        where = f"record {key.decode('utf-8', 'backslashreplace')!r} of {self.path}"
        try:
            with self._env.begin(buffers=False) as txn:
                value = txn.get(key)
            if value is None:
                raise ValueError("it is gone (the database changed since it was indexed)")
            datum = parse_datum(value, where)
            if not 0 <= datum.label < self.classes:
                raise ValueError(f"its label {datum.label} is not a class index 0..{self.classes - 1}")
            pixels = datum_pixels(datum, self.transform.shape[0] if datum.encoded else None, self.transform.max_pixels)
            x = self.transform(pixels, rng(self.seed, epoch, index) if self.transform.train else None)
        except DatabaseError as err:
            return None, -1, err.what
        except Exception as err:  # a bad record: reported by the main process as one line
            return None, -1, f"{where}: {str(err)[:200]}"
        return x, int(datum.label), None


class DatumBatches(StreamBatches):
    BAD_ITEM = "rewrite the database (Caffe's convert_imageset), or check data.path/test_path, data.crop and classes"


def _keys(path: Path, counter: _Counter, limit: int | None, spec) -> tuple[np.ndarray, np.ndarray]:
    """The keys of a database in Caffe's order (LMDB's: bytewise sorted), with their lengths."""
    env = open_lmdb(path, spec.data.at)
    keys = []
    try:
        with env.begin(buffers=False) as txn:
            for key in txn.cursor().iternext(keys=True, values=False):
                keys.append(key)
                if len(keys) % 4096 == 0:
                    counter.add(4096)
                if limit is not None and len(keys) >= limit:
                    break
    finally:
        env.close()
    if not keys:
        raise UserError(f"the LMDB database {path} is empty", "give the database Caffe's Data layer reads",
                        spec.data.at)
    return np.array(keys, dtype=bytes), np.array([len(k) for k in keys], np.int32)


def index_lmdb(spec, progress=sys.stderr, limits: Limits = Limits()) -> LmdbData:
    """The keys of the training and test databases, the records' shape checked against the input's."""
    d = spec.data
    if not d.path or not d.test_path:
        raise UserError("source lmdb needs data.path (the training database) and data.test_path (the test one)",
                        f"set them to the sources of Caffe's TRAIN and TEST Data layers; {without_data(d)}", d.at)
    root, test_root = data_root(d), Path(d.test_path).expanduser()
    shape = tuple(int(v) for v in spec.input.shape)
    record, floats = None, False
    for path in (root, test_root):
        found, _, float_data = first_datum(path, d.at)
        record, floats = record or found, floats or float_data
        c, h, w = found
        if c != shape[0] or (h, w) != shape[1:] and not (d.crop == "caffe" and h >= shape[1] and w >= shape[2]):
            fix = (f"set input.shape: [{c}, {h}, {w}]" if c != shape[0] or d.crop == "caffe" or h < shape[1]
                   or w < shape[2] else f"set data.crop: caffe (a {shape[1]}×{shape[2]} crop, Caffe's crop_size), "
                   f"or input.shape: [{c}, {h}, {w}]")
            raise UserError(f"the records of {path} are {c}×{h}×{w} (C×H×W) but the network's input is "
                            f"{'×'.join(map(str, shape))}", fix, d.at)
    mean = None
    if d.mean_file:
        mean = read_mean(Path(d.mean_file).expanduser(), d.at)
        if mean.shape != record:
            raise UserError(f"the mean image {d.mean_file} is {'×'.join(map(str, mean.shape))}, the records "
                            f"{'×'.join(map(str, record))}", "give the mean of this database (compute_image_mean)",
                            d.at)
    counter = _Counter(progress, root)
    tk, tl = _keys(root, counter, d.train_limit if d.val_split is None else None, spec)
    vk, vl = _keys(test_root, counter, d.test_limit, spec)
    counter.done(len(tk) + len(vk))
    classes = list(d.classes or [str(i) for i in range(spec.classes)])

    def unread(n: int) -> torch.Tensor:
        return torch.full((n,), UNREAD, dtype=torch.int64)

    val = {}
    held = hold_out(len(tk), d)
    if held is not None:  # the validation split: keys of the training database, drawn as for every source
        (hk, hl), (tk, tl) = ((tk[i], tl[i]) for i in held)
        val = dict(val_files=hk, val_y=unread(len(hk)), val_lengths=hl)
    return LmdbData(train_files=tk, train_y=unread(len(tk)), test_files=vk, test_y=unread(len(vk)), classes=classes,
                    root=root, max_pixels=limits.image_pixels, test_root=test_root, train_lengths=tl,
                    test_lengths=vl, record_shape=record, floats=floats, mean=mean, **val)


def read_whole(d, root: Path, shape: tuple[int, ...], limits: Limits) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Both databases decoded into memory (within `limits`) as uint8 (N, C, H, W) test-phase windows (the
    centre crop) and labels, for the commands that read a data set whole (calibrate, probe, export's
    calibration): `netspec train` streams instead. `d` is the spec's data section."""
    if not d.test_path:
        raise UserError("source lmdb needs data.test_path (the test database)", "set it to the source of Caffe's "
                        "TEST Data layer", d.at)
    if d.mean_file:
        raise UserError("data.mean_file is subtracted by the streaming reader of `netspec train` only; this "
                        "command reads the databases whole, as uint8 pixels", "run it with data.mean_file=null and "
                        "an input.mean that approximates the mean image", d.at)
    transform = DatumTransform(tuple(shape), False, d.crop == "caffe", False)
    out = []
    train_limit = d.train_limit if d.val_split is None else None  # (load_dataset holds out, then limits)
    for path, limit in ((root, train_limit), (Path(d.test_path).expanduser(), d.test_limit)):
        env = open_lmdb(path, d.at)
        try:
            count = min(entries(env), limit or entries(env))
            if count * int(np.prod(shape)) > limits.data_bytes:
                raise too_large(path, f"{count} records of {'×'.join(map(str, shape))} take", count * int(np.prod(shape)),
                                limits.data_bytes)
            x, y = np.empty((count, *shape), np.uint8), np.empty(count, np.int64)
            with env.begin(buffers=False) as txn:
                for i, (key, value) in enumerate(txn.cursor()):
                    if i == count:
                        break
                    where = f"record {key.decode('utf-8', 'backslashreplace')!r} of {path}"
                    datum = parse_datum(value, where)
                    try:
                        x[i] = transform(datum_pixels(datum, shape[0] if datum.encoded else None, limits.image_pixels),
                                         None).numpy()
                    except (ValueError, OSError) as err:
                        raise UserError(f"{where}: {str(err)[:200]}", DatumBatches.BAD_ITEM, d.at) from None
                    y[i] = datum.label
        finally:
            env.close()
        out.append((x, y))
    return out[0], out[1], None


def lmdb_batches(spec, data: LmdbData, device, rank: int = 0, world_size: int = 1
                 ) -> tuple[DatumBatches, DatumBatches | None, DatumBatches]:
    """This rank's streamed training, validation (None without data.val_split) and test batches of Caffe
    databases."""
    d = spec.data
    shape = tuple(int(v) for v in spec.input.shape)
    common = dict(mean=spec.input.mean, std=spec.input.std, device=device, seed=spec.train.seed, rank=rank,
                  world_size=world_size, workers=d.workers)
    out = []
    for train, path, keys, lengths, y in ((True, data.root, data.train_files, data.train_lengths, data.train_y),
                                          (False, data.root, data.val_files, data.val_lengths, data.val_y),
                                          (False, data.test_root, data.test_files, data.test_lengths, data.test_y)):
        if keys is None:
            out.append(None)
            continue
        transform = DatumTransform(shape, train, d.crop == "caffe", d.augment.flip, data.mean,
                                   data.floats or data.mean is not None, data.max_pixels)
        records = DatumRecords(path, keys, lengths, transform, spec.train.seed, len(data.classes))
        batch = spec.train.batch_size // world_size if train else spec.train.eval_batch_size
        out.append(DatumBatches(keys, y, batch, train=train, transform=transform, dataset=records,
                                augment=Augment(crop_pad=d.augment.crop_pad) if train else None, **common))
    return out[0], out[1], out[2]
