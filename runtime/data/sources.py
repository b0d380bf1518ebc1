"""Data sources: readers that hold whole data sets as uint8 tensors, one registered reader per source.

Readers: IDX (MNIST, Fashion-MNIST), CIFAR-10/100 python pickles, ImageFolder trees and `.npz`. Adding a
source: its name in `netspec.data_spec.SOURCES` and its reader here (`@reader("name")`).
Every bad or missing file is a `UserError` naming the file and the fix, never a traceback.
"""
from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from netspec.data_spec import SYNTHETIC_SIZES, DataSpec
from netspec.errors import UserError, plural
from netspec.limits import Limits
from netspec.runtime.arrays import bomb, load_arrays, too_large
from netspec.runtime.data.download import CORRUPT, MIRRORS, download, extract_tar
from netspec.runtime.images import IMAGE_SUFFIXES, read_image

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

@dataclass
class Dataset:
    """A whole data set in memory: images uint8 (N, C, H, W), labels int64 (N). `val_x`/`val_y` hold the
    validation split (data.val_split), None without one."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None


Split = tuple[np.ndarray, np.ndarray]
MAX_CLASSES = 1 << 20  # a label at or beyond this is damage, not a class


def cache_dir(source: str) -> Path:
    """The download directory of a source: $NETSPEC_CACHE/<source>, default ~/.cache/netspec/<source>."""
    return Path(os.environ.get("NETSPEC_CACHE") or "~/.cache/netspec").expanduser() / source


def data_root(spec: DataSpec) -> Path:
    """The directory (or file) a spec's data is read from (synthetic data reads none: data.path is not used)."""
    if spec.path and spec.source != "synthetic":
        return Path(spec.path).expanduser()
    if spec.source == "fashion-mnist" and DEBIAN_FASHION_MNIST.is_dir():
        return DEBIAN_FASHION_MNIST
    return cache_dir(spec.source)


def hold_out(n: int, spec: DataSpec) -> tuple[np.ndarray, np.ndarray] | None:
    """data.val_split: (validation indices, training indices) of a training set of `n` examples, each sorted, drawn
    by a permutation seeded with data.val_seed; data.train_limit then keeps the first of the training indices.
    None without a validation split."""
    if spec.val_split is None:
        return None
    count = spec.val_split if isinstance(spec.val_split, int) else round(spec.val_split * n)
    if not 0 < count < n:
        raise UserError(f"data.val_split {spec.val_split} holds out {count} of the {n} training examples: "
                        "nothing would be left to " + ("validate on" if count < 1 else "train on"),
                        f"give a count between 1 and {n - 1}, or a fraction such as 0.1", spec.where("val_split"))
    order = np.random.default_rng(spec.val_seed).permutation(n)
    return np.sort(order[:count]), np.sort(order[count:])[:spec.train_limit]


def load_dataset(spec: DataSpec, input_shape: tuple[int, int, int], limits: Limits = Limits()) -> Dataset:
    """Read the data set a spec names, within `limits`, and check its images have the network's input shape."""
    shape = tuple(int(d) for d in input_shape)
    train, test, classes = READERS[spec.source](spec, data_root(spec), shape, limits)
    return _finish(spec, shape, train, test, classes)


def _finish(spec: DataSpec, shape: tuple[int, ...], train: Split, test: Split, classes: list[str] | None) -> Dataset:
    """Check shapes and labels, apply the limits, and turn the arrays into tensors."""
    for split, (x, _) in (("training", train), ("test", test)):
        if tuple(x.shape[1:]) != shape:
            raise UserError(
                f"the {split} images of data source '{spec.source}' are {_fmt(x.shape[1:])} (C×H×W) but the network's input is {_fmt(shape)}",
                f"set input.shape: [{', '.join(map(str, x.shape[1:]))}] in the spec, or use data of shape {_fmt(shape)}",
                spec.at,
            )
    labels = [y for _, y in (train, test) if len(y)]
    if any(y.min() < 0 for y in labels):
        raise UserError(f"data source '{spec.source}' has negative labels", "labels must be class indices 0, 1, ...", spec.at)
    top = max((int(y.max()) for y in labels), default=-1)
    if top >= MAX_CLASSES:
        raise UserError(f"data source '{spec.source}' has a label {top}, beyond any class count (at most {MAX_CLASSES:,})",
                        "labels must be class indices 0, 1, ...: is the label array damaged?", spec.at)
    names = spec.classes or classes or [str(i) for i in range(top + 1)]
    if top >= len(names):
        raise UserError(f"the labels of data source '{spec.source}' go up to {top} but there are only {len(names)} class names",
                        f"give data.classes {top + 1} names", spec.at)

    def tensor(a: np.ndarray, limit: int | None, dtype: type) -> torch.Tensor:
        return torch.from_numpy(np.array(a[:limit], dtype=dtype))  # a writable, contiguous copy

    (tx, ty), (vx, vy) = train, test
    lt, lv = spec.train_limit, spec.test_limit
    test_x, test_y = tensor(vx, lv, np.uint8), tensor(vy, lv, np.int64)
    split = hold_out(len(ty), spec)
    if split is None:
        return Dataset(tensor(tx, lt, np.uint8), tensor(ty, lt, np.int64), test_x, test_y, list(names))
    held, kept = split
    return Dataset(tensor(tx[kept], None, np.uint8), tensor(ty[kept], None, np.int64), test_x, test_y, list(names),
                   tensor(tx[held], None, np.uint8), tensor(ty[held], None, np.int64))


def _fmt(shape: Any) -> str:
    return "×".join(map(str, shape))


def _missing(spec: DataSpec, root: Path, what: str) -> UserError:
    """The error for data that is not there, with the ways to get it."""
    where = "set data.path to the directory holding it"
    if spec.source == "fashion-mnist":
        fix = f"install it with `apt-get install dataset-fashion-mnist` (Debian), set data.download: true, or {where}"
    elif spec.source in MIRRORS:
        fix = f"set data.download: true to fetch it into {root}, or {where}"
    else:
        fix = where
    return UserError(f"no {spec.source} data at {root}: {what} not found", f"{fix}; {without_data(spec)}", spec.at)


def without_data(spec: DataSpec) -> str:
    """The end of every missing-data error: how to run the spec anyway."""
    fmnist = " or a specs/*_fmnist.yaml spec (Fashion-MNIST)" if spec.source != "fashion-mnist" else ""
    return f"to try the spec without the data: data.source=synthetic (random images of its shape){fmnist}"



Reader = Callable[[DataSpec, Path, tuple[int, ...], Limits], tuple["Split", "Split", "list[str] | None"]]
READERS: dict[str, Reader] = {}


def reader(*names: str) -> Callable[[Reader], Reader]:
    """Register a function (spec, root, input shape, limits) -> (train, test, class names or None) for these
    sources."""
    def register(fn: Reader) -> Reader:
        for name in names:
            READERS[name] = fn
        return fn
    return register


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path, ndim: int, max_bytes: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes with `ndim` dimensions, gzipped or not. The header's claim is checked
    against `max_bytes` (and, uncompressed, the file size) first, and no more than it claims is ever decompressed,
    so a gzip bomb or a lying header costs nothing."""
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as f:
            start = 4 + 4 * ndim
            head = f.read(start)
            if len(head) < 4 or head[:3] != b"\0\0\x08" or head[3] != ndim:
                raise UserError(f"{path} is not an IDX file of unsigned bytes with {ndim} dimension(s) "
                                f"(magic {head[:4].hex() or 'missing'})", CORRUPT)
            if len(head) < start:
                raise UserError(f"{path} ends inside its IDX header", CORRUPT)
            dims = struct.unpack(f">{ndim}I", head[4:start])
            claimed = math.prod(dims)
            if claimed > max_bytes:
                raise too_large(path, f"its header claims {_fmt(dims)} =", claimed, max_bytes)
            if gzipped and (err := bomb(path, claimed, path.stat().st_size)):
                raise err
            if not gzipped and path.stat().st_size - start != claimed:
                raise UserError(f"{path} holds {path.stat().st_size - start} bytes of data but its header says "
                                f"{_fmt(dims)} = {claimed}", CORRUPT)
            raw = f.read(claimed + 1)  # one byte more than claimed tells a longer file, without reading it all
    except UserError:
        raise
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"cannot read {path}: {str(e)[:160]}", CORRUPT) from None
    if len(raw) != claimed:
        held = f"{len(raw)}" if len(raw) <= claimed else f"more than {claimed}"
        raise UserError(f"{path} holds {held} bytes of data but its header says {_fmt(dims)} = {claimed}", CORRUPT)
    return np.frombuffer(raw, np.uint8).reshape(dims)


@reader("fashion-mnist", "mnist", "idx")
def _load_idx(spec: DataSpec, root: Path, shape: tuple[int, ...],
              limits: Limits) -> tuple[Split, Split, list[str] | None]:
    def find(name: str) -> Path | None:
        return next((p for p in (root / name, root / f"{name}.gz") if p.is_file()), None)

    for name in (n for pair in IDX_FILES.values() for n in pair):
        if find(name) is None:
            if not spec.download:
                raise _missing(spec, root, f"{name}(.gz)")
            download(spec.source, f"{name}.gz", root)
    splits = []
    for images, labels in IDX_FILES.values():
        x, y = read_idx(find(images), 3, limits.data_bytes), read_idx(find(labels), 1, limits.data_bytes)
        if len(x) != len(y):
            raise UserError(f"{find(images)} has {plural(len(x), 'image')} but {find(labels)} has {plural(len(y), 'label')}",
                            CORRUPT)
        splits.append((x[:, None], y))
    classes = {"fashion-mnist": FASHION_MNIST_CLASSES, "mnist": [str(d) for d in range(10)]}.get(spec.source)
    return splits[0], splits[1], classes


# ---------------------------------------------------------------- CIFAR python pickles


@dataclass(frozen=True)
class _CifarLayout:
    folder: str
    archive: str
    train: tuple[str, ...]
    test: str
    meta: str
    labels: str
    names: str


CIFAR = {
    "cifar10": _CifarLayout("cifar-10-batches-py", "cifar-10-python.tar.gz",
                            tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta", "labels", "label_names"),
    "cifar100": _CifarLayout("cifar-100-python", "cifar-100-python.tar.gz",
                             ("train",), "test", "meta", "fine_labels", "fine_label_names"),
}

# Pickle runs code; CIFAR batches need nothing beyond rebuilding numpy arrays, so nothing else loads.
_PICKLE_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that can only rebuild numpy arrays and plain containers."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module.replace("numpy.core.", "numpy._core."), name)


def _unpickle(path: Path, max_bytes: int) -> dict[str, Any]:
    """A CIFAR pickle as a dict with str keys (python-2 pickles carry bytes keys)."""
    try:
        if path.stat().st_size > max_bytes:
            raise too_large(path, "the file has", path.stat().st_size, max_bytes)
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except UserError:
        raise
    except Exception as e:  # a malformed pickle can raise nearly anything
        raise UserError(f"cannot read {path}: {type(e).__name__}: {str(e)[:160]}", CORRUPT) from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} does not hold a CIFAR dictionary", CORRUPT)
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_batch(path: Path, labels_key: str, max_bytes: int) -> Split:
    d = _unpickle(path, max_bytes)
    x, y = d.get("data"), d.get(labels_key)
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or y is None:
        raise UserError(f"{path} lacks uint8 'data' of shape N×3072 or '{labels_key}'", CORRUPT)
    y = _labels(y, path, labels_key)
    if y.shape != (len(x),):
        raise UserError(f"{path} has {plural(len(x), 'image')} but {plural(y.size, 'label')}", CORRUPT)
    return x.reshape(-1, 3, 32, 32), y


def _labels(y: Any, path: Path, key: str) -> np.ndarray:
    """Class indices as int64: a list or array of integers, nothing else (no strings, floats, bools, objects)."""
    try:
        a = np.asarray(y)
    except (ValueError, TypeError, OverflowError):
        a = None
    if a is None or a.dtype.kind not in "iu" or a.ndim != 1:
        kind = "?" if a is None else f"{a.dtype} of {a.ndim} dimension(s)"
        raise UserError(f"{path}: '{key}' must be a list of integer class indices, not {kind}", CORRUPT)
    if a.size and (a.min() < 0 or (a.dtype.kind == "u" and a.max() > np.iinfo(np.int64).max)):
        raise UserError(f"{path}: '{key}' holds labels out of range (min {a.min()})", CORRUPT)
    return a.astype(np.int64)


@reader("cifar10", "cifar100")
def _load_cifar(spec: DataSpec, root: Path, shape: tuple[int, ...],
                limits: Limits) -> tuple[Split, Split, list[str] | None]:
    lay = CIFAR[spec.source]
    folder = next((d for d in (root, root / lay.folder) if (d / lay.train[0]).is_file()), None)
    if folder is None:
        if not spec.download:
            raise _missing(spec, root, f"{lay.folder}/{lay.train[0]}")
        archive = download(spec.source, lay.archive, root)
        extract_tar(archive, root)
        archive.unlink(missing_ok=True)
        folder = root / lay.folder
    batches = [_cifar_batch(folder / name, lay.labels, limits.data_bytes) for name in lay.train]
    train = np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])
    test = _cifar_batch(folder / lay.test, lay.labels, limits.data_bytes)
    names = _unpickle(folder / lay.meta, limits.data_bytes).get(lay.names)
    if names is not None and not (isinstance(names, (list, tuple)) and all(isinstance(n, (str, bytes)) for n in names)):
        raise UserError(f"{folder / lay.meta}: '{lay.names}' must be a list of class names", CORRUPT)
    try:
        classes = [n.decode() if isinstance(n, bytes) else n for n in names] if names is not None else None
    except UnicodeDecodeError:
        raise UserError(f"{folder / lay.meta}: a class name is not UTF-8 text", CORRUPT) from None
    return train, test, classes


# ---------------------------------------------------------------- ImageFolder

IMAGEFOLDER_TEST_FRACTION, IMAGEFOLDER_SPLIT_SEED = 0.1, 0


def _image_files(root: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(file, label) for every image under root/<class>/, in sorted order."""
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if d.name not in classes:
            raise UserError(f"{d} is a class directory that {root.parent / 'train'} does not have",
                            "give train/ and test/ the same class directories")
        label = classes.index(d.name)
        out += [(f, label) for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    return out


def _decode_images(files: list[tuple[Path, int]], shape: tuple[int, ...], limits: Limits) -> Split:
    """Decode, convert to L or RGB and resize every image to `shape` (C, H, W)."""
    c, h, w = shape
    if len(files) * h * w * c > limits.data_bytes:
        raise too_large(files[0][0].parent.parent, f"{plural(len(files), 'image')} of {_fmt(shape)} take",
                        len(files) * h * w * c, limits.data_bytes)
    x = np.empty((len(files), h, w, c), np.uint8)
    for i, (f, _) in enumerate(files):
        x[i] = read_image(f, shape, limits.image_pixels)
    return x.transpose(0, 3, 1, 2), np.array([label for _, label in files], np.int64)


@reader("imagefolder")
def _load_imagefolder(spec: DataSpec, root: Path, shape: tuple[int, ...],
                      limits: Limits) -> tuple[Split, Split, list[str] | None]:
    """root/train/<class>/* and root/test/<class>/*, or root/<class>/* split 90/10 with a fixed seed.

    A train/ without test/ is split the same way."""
    train_root = root / "train" if (root / "train").is_dir() else root
    if not train_root.is_dir():
        raise _missing(spec, root, "the directory")
    classes = sorted(p.name for p in train_root.iterdir() if p.is_dir())
    if not classes:
        raise _missing(spec, root, "class directories (train/<class>/ or <class>/)")
    train = _image_files(train_root, classes)
    if (root / "test").is_dir() and train_root != root:
        test = _image_files(root / "test", classes)
    else:
        order = np.random.default_rng(IMAGEFOLDER_SPLIT_SEED).permutation(len(train))
        n_test = int(len(train) * IMAGEFOLDER_TEST_FRACTION)
        test, train = [train[i] for i in sorted(order[:n_test])], [train[i] for i in sorted(order[n_test:])]
    if not train:
        raise _missing(spec, root, "image files")
    return _decode_images(train, shape, limits), _decode_images(test, shape, limits), classes


# ---------------------------------------------------------------- npz


@reader("npz")
def _load_npz(spec: DataSpec, root: Path, shape: tuple[int, ...],
              limits: Limits) -> tuple[Split, Split, list[str] | None]:
    """x_train, y_train, x_test, y_test (uint8 NHWC, NCHW or NHW) and an optional `classes`."""
    file = root / "data.npz" if root.is_dir() else root
    if not file.is_file():
        raise _missing(spec, root, file.name if root.is_dir() else "the file")
    arrays = load_arrays(file, limits.data_bytes)
    missing = {"x_train", "y_train", "x_test", "y_test"} - set(arrays)
    if missing:
        raise UserError(f"{file} lacks the array(s) {', '.join(sorted(missing))}", "save x_train, y_train, x_test and y_test in it")
    splits = []
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim not in (3, 4):
            raise UserError(f"{file}: x_{split} is {x.dtype} of {x.ndim} dimensions", "store images as uint8 N×H×W, N×H×W×C or N×C×H×W")
        if not np.issubdtype(y.dtype, np.integer) or y.shape != (len(x),):
            raise UserError(f"{file}: y_{split} must hold {len(x)} integer labels, not {y.dtype} {_fmt(y.shape)}",
                            "store labels as one integer class index per image")
        if x.ndim == 3:
            x = x[:, None]
        elif tuple(x.shape[1:]) != shape and x.shape[3] in (1, 3, 4):
            x = x.transpose(0, 3, 1, 2)  # NHWC
        splits.append((x, y))
    names = arrays.get("classes")
    if names is not None and (names.ndim != 1 or names.dtype.kind not in "USiu" or len(names) > 1 << 20):
        raise UserError(f"{file}: 'classes' must be a list of class names, not {names.dtype} {_fmt(names.shape)}",
                        "store the names as a 1-D array of strings")
    classes = [str(c) for c in names] if names is not None else None
    return splits[0], splits[1], classes



# ---------------------------------------------------------------- synthetic (no files)

SYNTHETIC_SEED = 0  # ours: every run of a spec sees the same synthetic data


@reader("synthetic")
def _synthetic(spec: DataSpec, root: Path, shape: tuple[int, ...],
               limits: Limits) -> tuple[Split, Split, list[str] | None]:
    """Random uint8 images of the input's shape and uniform random labels over the spec's classes (Caffe's
    DummyData, seeded): data.train_limit / data.test_limit of each, default SYNTHETIC_SIZES (plus the validation
    split's images, when the spec holds one out of the training set)."""
    count = spec._class_count or (len(spec.classes) if spec.classes else None)
    if count is None:
        raise UserError("data.source: synthetic needs the number of classes", "use it in a spec (its `classes:` "
                        "sets it), or give data.classes", spec.at)
    sizes = [limit or default for limit, default in zip((spec.train_limit, spec.test_limit), SYNTHETIC_SIZES)]
    held = spec.val_split  # a validation split is drawn from the training images: make it on top
    if held:
        sizes[0] = sizes[0] + held if isinstance(held, int) else math.ceil(sizes[0] / (1 - held)) + 1
    if sum(sizes) * math.prod(shape) > limits.data_bytes:
        raise too_large("data.source: synthetic", f"{sizes[0]:,} + {plural(sizes[1], 'image')} of {_fmt(shape)} take",
                        sum(sizes) * math.prod(shape), limits.data_bytes)
    rng = np.random.default_rng(SYNTHETIC_SEED)
    splits = [(rng.integers(0, 256, (n, *shape), np.uint8), rng.integers(0, count, n, np.int64)) for n in sizes]
    return splits[0], splits[1], [str(i) for i in range(count)]


# ---------------------------------------------------------------- Caffe LMDB, whole (calibrate, probe, export)

@reader("lmdb")
def _load_lmdb(spec: DataSpec, root: Path, shape: tuple[int, ...],
               limits: Limits) -> tuple[Split, Split, list[str] | None]:
    from netspec.runtime.data.caffe_lmdb import read_whole  # the streaming reader's module builds on this one
    return read_whole(spec, root, shape, limits)
