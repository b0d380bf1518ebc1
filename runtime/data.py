"""The data layer: the spec's `data:` section, readers that hold whole data sets as uint8
tensors, and `Batches`, which turns a split into shuffled, sharded, augmented float batches.

Readers: IDX (MNIST, Fashion-MNIST), CIFAR-10/100 python pickles, ImageFolder trees and `.npz`.
Every bad or missing file is a `UserError` naming the file and the fix, never a traceback.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import pickle
import struct
import sys
import tarfile
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from netspec.errors import UserError
from netspec.images import IMAGE_SUFFIXES, read_image
from netspec.project import atomic_file
from netspec.schema_base import Strict

Source = Literal["fashion-mnist", "mnist", "idx", "cifar10", "cifar100", "imagefolder", "npz"]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

# Where each downloadable source is published; NETSPEC_DATA_MIRROR replaces the base URL.
MIRRORS = {
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/",
    "cifar100": "https://www.cs.toronto.edu/~kriz/",
}

# The published MD5 of every file a source downloads.
CHECKSUMS: dict[str, dict[str, str]] = {
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "cifar10": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    "cifar100": {"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
}

DOWNLOAD_TIMEOUT = 60.0
_CORRUPT = "the file is damaged or not what its name says: delete it and fetch it again"


class Augment(Strict):
    """Training-time augmentation, done batched on the device."""

    __section__ = "data.augment"

    crop_pad: int = Field(0, ge=0, description="Pad each side by this many pixels, then crop a random window of the original size (CIFAR uses 4); 0 turns it off.")
    flip: bool = Field(False, description="Flip each training image horizontally with probability 1/2.")


class DataSpec(Strict):
    """Where the training data comes from and how it is augmented."""

    __section__ = "data"

    source: Source = Field("fashion-mnist", description="The data set's format: fashion-mnist, mnist and idx read IDX files; cifar10 and cifar100 the python-pickle batches; imagefolder a tree of class directories of images; npz arrays x_train, y_train, x_test, y_test (and optionally classes).")
    path: str | None = Field(None, description="Directory (or .npz file) holding the data. Default: /usr/share/datasets/fashion-mnist for fashion-mnist when it exists, else $NETSPEC_CACHE/<source> (NETSPEC_CACHE defaults to ~/.cache/netspec).")
    download: bool = Field(False, description="Download missing files into the data directory, checking their published MD5 (fashion-mnist, mnist, cifar10, cifar100 only). NETSPEC_DATA_MIRROR replaces the download base URL.")
    augment: Augment = Field(default_factory=Augment, description="Random augmentation of training batches.")
    train_limit: int | None = Field(None, ge=1, description="Use only the first N training examples (for smoke runs).")
    test_limit: int | None = Field(None, ge=1, description="Use only the first N test examples (for smoke runs).")
    classes: list[str] | None = Field(None, min_length=1, description="Class names, by label index, overriding those the data set carries.")

    @model_validator(mode="after")
    def _download_needs_a_mirror(self) -> DataSpec:
        if self.download and self.source not in MIRRORS:
            raise ValueError(f"data.download works for {', '.join(MIRRORS)}, not for source '{self.source}'")
        return self


@dataclass
class Dataset:
    """A whole data set in memory: images uint8 (N, C, H, W), labels int64 (N)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]


Split = tuple[np.ndarray, np.ndarray]


def cache_dir(source: str) -> Path:
    """The download directory of a source: $NETSPEC_CACHE/<source>, default ~/.cache/netspec/<source>."""
    return Path(os.environ.get("NETSPEC_CACHE") or "~/.cache/netspec").expanduser() / source


def data_root(spec: DataSpec) -> Path:
    """The directory (or file) a spec's data is read from."""
    if spec.path:
        return Path(spec.path).expanduser()
    if spec.source == "fashion-mnist" and DEBIAN_FASHION_MNIST.is_dir():
        return DEBIAN_FASHION_MNIST
    return cache_dir(spec.source)


def load_dataset(spec: DataSpec, input_shape: tuple[int, int, int]) -> Dataset:
    """Read the data set a spec names and check its images have the network's input shape."""
    shape = tuple(int(d) for d in input_shape)
    reader = {
        "fashion-mnist": _load_idx, "mnist": _load_idx, "idx": _load_idx,
        "cifar10": _load_cifar, "cifar100": _load_cifar,
        "imagefolder": _load_imagefolder, "npz": _load_npz,
    }[spec.source]
    train, test, classes = reader(spec, data_root(spec), shape)
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
    names = spec.classes or classes or [str(i) for i in range(top + 1)]
    if top >= len(names):
        raise UserError(f"the labels of data source '{spec.source}' go up to {top} but there are only {len(names)} class names",
                        f"give data.classes {top + 1} names", spec.at)

    def tensor(a: np.ndarray, limit: int | None, dtype: type) -> torch.Tensor:
        return torch.from_numpy(np.array(a[:limit], dtype=dtype))  # a writable, contiguous copy

    (tx, ty), (vx, vy) = train, test
    lt, lv = spec.train_limit, spec.test_limit
    return Dataset(tensor(tx, lt, np.uint8), tensor(ty, lt, np.int64), tensor(vx, lv, np.uint8), tensor(vy, lv, np.int64), list(names))


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
    return UserError(f"no {spec.source} data at {root}: {what} not found", fix, spec.at)


# ---------------------------------------------------------------- download


def download(source: str, name: str, root: Path) -> Path:
    """Fetch one published file of `source` into `root`, checking its MD5; atomic, no partial file left."""
    url = (os.environ.get("NETSPEC_DATA_MIRROR") or MIRRORS[source]).rstrip("/") + "/" + name
    expected = CHECKSUMS[source][name]
    dest = root / name
    print(f"netspec: downloading {url}", file=sys.stderr)
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with atomic_file(dest, binary=True) as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
            if digest.hexdigest() != expected:  # raised inside: nothing is written
                raise UserError(f"{url} has MD5 {digest.hexdigest()}, expected {expected}", "the download was damaged "
                                "or the mirror serves other data: try again, or fix NETSPEC_DATA_MIRROR")
        return dest
    except (OSError, http.client.HTTPException, ValueError) as e:  # URLError, timeouts, HTTP, bad mirror URL, disk
        raise UserError(f"could not download {url}: {e}",
                        f"check the network (or NETSPEC_DATA_MIRROR), or put {name} into {root} by hand") from e


def _extract_tar(archive: Path, root: Path) -> None:
    """Unpack a .tar.gz into root, refusing absolute paths, `..` and anything but files and dirs."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                p = PurePosixPath(m.name)
                if p.is_absolute() or ".." in p.parts or not (m.isfile() or m.isdir()):
                    raise UserError(f"{archive}: refusing unsafe archive member '{m.name}'", _CORRUPT)
            tar.extractall(root, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise UserError(f"{archive} is not a readable .tar.gz archive: {e}", _CORRUPT) from e


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes with `ndim` dimensions, gzipped or not."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"cannot read {path}: {e}", _CORRUPT) from e
    if len(raw) < 4 or raw[:3] != b"\0\0\x08" or raw[3] != ndim:
        raise UserError(f"{path} is not an IDX file of unsigned bytes with {ndim} dimension(s) (magic {raw[:4].hex() or 'missing'})", _CORRUPT)
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise UserError(f"{path} ends inside its IDX header", _CORRUPT)
    dims = struct.unpack(f">{ndim}I", raw[4:start])
    if len(raw) - start != math.prod(dims):
        raise UserError(f"{path} holds {len(raw) - start} bytes of data but its header says {_fmt(dims)} = {math.prod(dims)}", _CORRUPT)
    return np.frombuffer(raw, np.uint8, offset=start).reshape(dims)


def _load_idx(spec: DataSpec, root: Path, shape: tuple[int, ...]) -> tuple[Split, Split, list[str] | None]:
    def find(name: str) -> Path | None:
        return next((p for p in (root / name, root / f"{name}.gz") if p.is_file()), None)

    for name in (n for pair in IDX_FILES.values() for n in pair):
        if find(name) is None:
            if not spec.download:
                raise _missing(spec, root, f"{name}(.gz)")
            download(spec.source, f"{name}.gz", root)
    splits = []
    for images, labels in IDX_FILES.values():
        x, y = read_idx(find(images), 3), read_idx(find(labels), 1)
        if len(x) != len(y):
            raise UserError(f"{find(images)} has {len(x)} images but {find(labels)} has {len(y)} labels", _CORRUPT)
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


def _unpickle(path: Path) -> dict[str, Any]:
    """A CIFAR pickle as a dict with str keys (python-2 pickles carry bytes keys)."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as e:  # a malformed pickle can raise nearly anything
        raise UserError(f"cannot read {path}: {type(e).__name__}: {e}", _CORRUPT) from e
    if not isinstance(obj, dict):
        raise UserError(f"{path} does not hold a CIFAR dictionary", _CORRUPT)
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_batch(path: Path, labels_key: str) -> Split:
    d = _unpickle(path)
    x, y = d.get("data"), d.get(labels_key)
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or y is None:
        raise UserError(f"{path} lacks uint8 'data' of shape N×3072 or '{labels_key}'", _CORRUPT)
    y = np.asarray(y, dtype=np.int64)
    if y.shape != (len(x),):
        raise UserError(f"{path} has {len(x)} images but {y.size} labels", _CORRUPT)
    return x.reshape(-1, 3, 32, 32), y


def _load_cifar(spec: DataSpec, root: Path, shape: tuple[int, ...]) -> tuple[Split, Split, list[str] | None]:
    lay = CIFAR[spec.source]
    folder = next((d for d in (root, root / lay.folder) if (d / lay.train[0]).is_file()), None)
    if folder is None:
        if not spec.download:
            raise _missing(spec, root, f"{lay.folder}/{lay.train[0]}")
        archive = download(spec.source, lay.archive, root)
        _extract_tar(archive, root)
        archive.unlink(missing_ok=True)
        folder = root / lay.folder
    batches = [_cifar_batch(folder / name, lay.labels) for name in lay.train]
    train = np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])
    test = _cifar_batch(folder / lay.test, lay.labels)
    names = _unpickle(folder / lay.meta).get(lay.names)
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names] if names is not None else None
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


def _decode_images(files: list[tuple[Path, int]], shape: tuple[int, ...]) -> Split:
    """Decode, convert to L or RGB and resize every image to `shape` (C, H, W)."""
    c, h, w = shape
    x = np.empty((len(files), h, w, c), np.uint8)
    for i, (f, _) in enumerate(files):
        x[i] = read_image(f, shape)
    return x.transpose(0, 3, 1, 2), np.array([label for _, label in files], np.int64)


def _load_imagefolder(spec: DataSpec, root: Path, shape: tuple[int, ...]) -> tuple[Split, Split, list[str] | None]:
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
    return _decode_images(train, shape), _decode_images(test, shape), classes


# ---------------------------------------------------------------- npz


def _load_npz(spec: DataSpec, root: Path, shape: tuple[int, ...]) -> tuple[Split, Split, list[str] | None]:
    """x_train, y_train, x_test, y_test (uint8 NHWC, NCHW or NHW) and an optional `classes`."""
    file = root / "data.npz" if root.is_dir() else root
    if not file.is_file():
        raise _missing(spec, root, file.name if root.is_dir() else "the file")
    try:
        with np.load(file, allow_pickle=False) as z:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(z.files)
            if missing:
                raise UserError(f"{file} lacks the array(s) {', '.join(sorted(missing))}", "save x_train, y_train, x_test and y_test in it")
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"cannot read {file}: {e}", "save it with numpy.savez of plain (non-object) arrays") from e
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
    classes = [str(c) for c in arrays["classes"]] if "classes" in arrays else None
    return splits[0], splits[1], classes


# ---------------------------------------------------------------- batches


def _generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded by a stable hash of `parts`."""
    digest = hashlib.blake2b(struct.pack(f"<{len(parts)}q", *parts), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def augment_batch(x: torch.Tensor, augment: Augment, gen: torch.Generator) -> torch.Tensor:
    """Pad + random crop and random horizontal flip of a uint8 (B, C, H, W) batch, on its device.

    The random draws (B-sized) come from the CPU generator `gen`, so results do not depend on the device."""
    b, _, h, w = x.shape
    dev = x.device
    p = augment.crop_pad
    if p:
        dy, dx = torch.randint(0, 2 * p + 1, (2, b), generator=gen).to(dev)
        windows = F.pad(x, (p, p, p, p)).unfold(2, h, 1).unfold(3, w, 1)  # B, C, 2p+1, 2p+1, H, W (a view)
        x = windows[torch.arange(b, device=dev), :, dy, dx]
    if augment.flip:
        flip = (torch.rand(b, generator=gen) < 0.5).to(dev)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


class Batches:
    """One epoch of a split as (float32 normalised images, int64 labels) batches on `device`.

    Training (`train=True`): the order is a permutation seeded by (seed, epoch), the same on
    every rank; each rank takes every world_size-th example of it, and with `drop_last` every rank has
    the same number of batches. Augmentation runs on the device, seeded by (seed, epoch, rank,
    batch index). Test: the data in order, no augmentation, shards as even as possible (the
    remainder goes to the lower ranks). `batch_size` is per rank.
    """

    def __init__(self, x_uint8: torch.Tensor, y: torch.Tensor, batch_size: int, *, train: bool,
                 mean: list[float], std: list[float], augment: Augment | None = None,
                 device: torch.device | str = "cpu", seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool | None = None):
        if x_uint8.dtype != torch.uint8 or x_uint8.dim() != 4 or y.shape != x_uint8.shape[:1]:
            raise ValueError("Batches wants uint8 images (N, C, H, W) and N labels")
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad batch_size {batch_size} or rank {rank} of {world_size}")
        channels = x_uint8.shape[1]
        mean_t = torch.tensor(mean, dtype=torch.float32)
        std_t = torch.tensor(std, dtype=torch.float32)
        if mean_t.numel() not in (1, channels) or std_t.numel() not in (1, channels) or (std_t <= 0).any():
            raise ValueError(f"mean and std need 1 or {channels} values, std > 0")
        self.x, self.y = x_uint8, y.to(torch.int64)
        self.batch_size, self.train = batch_size, train
        self.augment = augment if train and augment and (augment.crop_pad or augment.flip) else None
        self.device = torch.device(device)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.drop_last = train if drop_last is None else drop_last
        self.epoch = 0
        # (x / 255 - mean) / std as one multiply-add
        self._scale = (1.0 / (255.0 * std_t)).reshape(1, -1, 1, 1).to(self.device)
        self._shift = (-mean_t / std_t).reshape(1, -1, 1, 1).to(self.device)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shuffle and augmentation the next iteration uses."""
        self.epoch = epoch

    def _shard_size(self) -> int:
        """How many examples of the epoch this rank sees (equal on every rank with drop_last)."""
        base, rem = divmod(len(self.y), self.world_size)
        return base if self.drop_last else base + (self.rank < rem)

    def __len__(self) -> int:
        size = self._shard_size()
        return size // self.batch_size if self.drop_last else -(-size // self.batch_size)

    def __iter__(self):
        n = len(self.y)
        order = torch.randperm(n, generator=_generator(self.seed, self.epoch)) if self.train else torch.arange(n)
        # every world_size-th example: together the ranks' b-th batches are the single-process run's b-th
        # batch of world_size × batch_size examples, so DDP and one process see the same data step for step
        mine = order[self.rank::self.world_size][: self._shard_size()].to(self.x.device)
        for b in range(len(self)):
            idx = mine[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.x.index_select(0, idx).to(self.device, non_blocking=True)
            y = self.y.index_select(0, idx.to(self.y.device)).to(self.device, non_blocking=True)
            if self.augment:
                x = augment_batch(x, self.augment, _generator(self.seed, self.epoch, self.rank, b))
            yield x.to(torch.float32).mul_(self._scale).add_(self._shift), y
