"""Tests of runtime.data: readers on small generated files, downloads from a loopback server, Batches."""
from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from netspec.errors import UserError
from netspec.limits import Limits
from netspec.data_spec import Augment, DataSpec
from netspec.runtime.data import Batches, batches, download, load_dataset, sources
from netspec.runtime.data.sources import read_idx

RNG = np.random.default_rng(1)


def write_idx(path: Path, a: np.ndarray, gz: bool) -> Path:
    raw = bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def make_idx_dir(root: Path, gz: bool = True, n_train: int = 12, n_test: int = 5) -> dict[str, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": RNG.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": RNG.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": RNG.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": RNG.integers(0, 10, n_test),
    }
    for name, a in arrays.items():
        write_idx(root / (name + ".gz" if gz else name), a, gz)
    return arrays


# ---------------------------------------------------------------- spec


def test_spec_defaults_and_strictness():
    s = DataSpec()
    assert (s.source, s.download, s.augment.crop_pad, s.augment.flip) == ("fashion-mnist", False, 0, False)
    with pytest.raises(ValidationError, match="did you mean 'augment'"):
        DataSpec.model_validate({"augmnt": {}})
    with pytest.raises(ValidationError, match="did you mean 'crop_pad'"):
        DataSpec.model_validate({"augment": {"crop_pd": 4}})
    with pytest.raises(ValidationError, match="data.download works for"):
        DataSpec.model_validate({"source": "npz", "download": True})
    assert all(f.description for f in DataSpec.model_fields.values() if f.alias not in ("_at", "_keys"))


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    arrays = make_idx_dir(tmp_path, gz)
    d = load_dataset(DataSpec(source="idx", path=str(tmp_path)), (1, 28, 28))
    assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.int64
    assert torch.equal(d.train_x[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"].astype(np.uint8)))
    assert torch.equal(d.test_y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]))
    assert d.test_x.shape == (5, 1, 28, 28)
    assert d.classes == [str(i) for i in range(int(max(d.train_y.max(), d.test_y.max())) + 1)]


def test_idx_limits_and_class_override(tmp_path):
    make_idx_dir(tmp_path)
    spec = DataSpec(source="mnist", path=str(tmp_path), train_limit=3, test_limit=2, classes=[f"c{i}" for i in range(10)])
    d = load_dataset(spec, (1, 28, 28))
    assert (len(d.train_x), len(d.train_y), len(d.test_x), len(d.test_y)) == (3, 3, 2, 2)
    assert d.classes[0] == "c0"
    with pytest.raises(UserError, match="only 2 class names"):
        load_dataset(DataSpec(source="idx", path=str(tmp_path), classes=["a", "b"]), (1, 28, 28))


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[:-7], "holds .* bytes of data but its header says"),
    (lambda raw: b"\x00\x00\x09\x03" + raw[4:], "not an IDX file"),
    (lambda raw: raw[:6], "ends inside its IDX header"),
    (lambda raw: b"", "magic missing"),
])
def test_idx_bad_files(tmp_path, damage, message):
    path = write_idx(tmp_path / "x", RNG.integers(0, 256, (3, 4, 4)), gz=False)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(UserError, match=message) as e:
        read_idx(path, 3, Limits().data_bytes)
    assert str(path) in str(e.value)


def test_idx_bad_gzip_and_count_mismatch(tmp_path):
    make_idx_dir(tmp_path)
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:30])
    with pytest.raises(UserError, match="cannot read .*t10k-images"):
        load_dataset(DataSpec(source="idx", path=str(tmp_path)), (1, 28, 28))
    write_idx(bad, RNG.integers(0, 256, (4, 28, 28)), gz=True)
    with pytest.raises(UserError, match="has 4 images but .* has 5 labels"):
        load_dataset(DataSpec(source="idx", path=str(tmp_path)), (1, 28, 28))


def test_missing_fashion_mnist_mentions_apt_get(tmp_path, monkeypatch):
    with pytest.raises(UserError) as e:
        load_dataset(DataSpec(path=str(tmp_path / "nope")), (1, 28, 28))
    assert "apt-get install dataset-fashion-mnist" in e.value.fix and "data.download" in e.value.fix
    assert str(tmp_path / "nope") in e.value.what
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    monkeypatch.setenv("NETSPEC_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match=str(tmp_path / "cache" / "fashion-mnist")):
        load_dataset(DataSpec(), (1, 28, 28))


def test_shape_mismatch(tmp_path):
    make_idx_dir(tmp_path)
    with pytest.raises(UserError) as e:
        load_dataset(DataSpec(source="idx", path=str(tmp_path)), (3, 32, 32))
    assert "1×28×28" in e.value.what and "3×32×32" in e.value.what
    assert "input.shape: [1, 28, 28]" in e.value.fix


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    d = load_dataset(DataSpec(train_limit=100), (1, 28, 28))
    assert d.train_x.shape == (100, 1, 28, 28) and d.test_x.shape == (10000, 1, 28, 28)
    assert d.classes[0] == "T-shirt/top" and d.classes[9] == "Ankle boot"
    assert int(d.train_y.max()) <= 9 and d.train_x.float().mean() > 10


# ---------------------------------------------------------------- CIFAR


def write_cifar(root: Path, source: str, protocol: int, n: int = 6) -> dict[str, tuple[np.ndarray, list[int]]]:
    """A CIFAR python dir in the original layout (bytes keys, as the python-2 pickles have)."""
    lay = sources.CIFAR[source]
    folder = root / lay.folder
    folder.mkdir(parents=True)
    n_classes = 10 if source == "cifar10" else 100
    batches = {}
    for name in (*lay.train, lay.test):
        x = RNG.integers(0, 256, (n, 3072)).astype(np.uint8)
        y = RNG.integers(0, n_classes, n).tolist()
        batches[name] = (x, y)
        (folder / name).write_bytes(pickle.dumps({b"data": x, lay.labels.encode(): y, b"batch_label": b"x"}, protocol=protocol))
    names = [f"class{i}".encode() for i in range(n_classes)]
    (folder / lay.meta).write_bytes(pickle.dumps({lay.names.encode(): names}, protocol=protocol))
    return batches


@pytest.mark.parametrize("source", ["cifar10", "cifar100"])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar(tmp_path, source, protocol):
    batches = write_cifar(tmp_path, source, protocol)
    lay = sources.CIFAR[source]
    for path in (tmp_path, tmp_path / lay.folder):
        d = load_dataset(DataSpec(source=source, path=str(path)), (3, 32, 32))
        assert d.train_x.shape == (6 * len(lay.train), 3, 32, 32)
        x, y = batches[lay.test]
        assert torch.equal(d.test_x, torch.from_numpy(x.reshape(-1, 3, 32, 32)))
        assert d.test_y.tolist() == y
        first_x, first_y = batches[lay.train[0]]
        assert torch.equal(d.train_x[:6].reshape(6, -1), torch.from_numpy(first_x)) and d.train_y[:6].tolist() == first_y
        assert d.classes[1] == "class1" and len(d.classes) == (10 if source == "cifar10" else 100)


def test_cifar_refuses_code_in_pickles(tmp_path):
    write_cifar(tmp_path, "cifar10", 2)

    class Evil:
        def __reduce__(self):
            return os.system, ("echo pwned",)

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(UserError, match="refusing to load posix.system"):
        load_dataset(DataSpec(source="cifar10", path=str(tmp_path)), (3, 32, 32))


def test_cifar_bad_batch(tmp_path):
    write_cifar(tmp_path, "cifar10", 2)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(UserError, match="cannot read .*data_batch_3"):
        load_dataset(DataSpec(source="cifar10", path=str(tmp_path)), (3, 32, 32))


# ---------------------------------------------------------------- ImageFolder


def write_png(path: Path, rgb: tuple[int, int, int], size=(6, 5)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)


def test_imagefolder_train_test(tmp_path):
    for split, n in (("train", 3), ("test", 1)):
        for cls, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            for i in range(n):
                write_png(tmp_path / split / cls / f"{i}.png", color)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    d = load_dataset(DataSpec(source="imagefolder", path=str(tmp_path)), (3, 4, 4))
    assert d.classes == ["cat", "dog"]
    assert d.train_x.shape == (6, 3, 4, 4) and d.test_x.shape == (2, 3, 4, 4)
    assert d.train_y.tolist() == [0, 0, 0, 1, 1, 1] and d.test_y.tolist() == [0, 1]
    assert d.train_x[0, :, 0, 0].tolist() == [255, 0, 0] and d.train_x[5, :, 2, 2].tolist() == [0, 0, 255]
    grey = load_dataset(DataSpec(source="imagefolder", path=str(tmp_path)), (1, 5, 6))
    assert grey.train_x.shape == (6, 1, 5, 6)


def test_imagefolder_flat_split_is_deterministic(tmp_path):
    for i in range(20):
        write_png(tmp_path / ("a" if i < 10 else "b") / f"{i:02}.png", (i, i, i))
    spec = DataSpec(source="imagefolder", path=str(tmp_path))
    d1, d2 = load_dataset(spec, (3, 5, 6)), load_dataset(spec, (3, 5, 6))
    assert (len(d1.train_x), len(d1.test_x)) == (18, 2)
    assert torch.equal(d1.test_x, d2.test_x) and torch.equal(d1.train_y, d2.train_y)
    seen = sorted(d1.train_x[:, 0, 0, 0].tolist() + d1.test_x[:, 0, 0, 0].tolist())
    assert seen == list(range(20))


def test_imagefolder_bad_image(tmp_path):
    write_png(tmp_path / "a" / "ok.png", (1, 2, 3))
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot read image .*broken.png"):
        load_dataset(DataSpec(source="imagefolder", path=str(tmp_path)), (3, 4, 4))


# ---------------------------------------------------------------- npz


@pytest.mark.parametrize("layout", ["NHWC", "NCHW", "NHW"])
def test_npz(tmp_path, layout):
    c = 1 if layout == "NHW" else 3
    x_nchw = RNG.integers(0, 256, (7, c, 5, 6)).astype(np.uint8)
    stored = {"NHWC": x_nchw.transpose(0, 2, 3, 1), "NCHW": x_nchw, "NHW": x_nchw[:, 0]}[layout]
    y = RNG.integers(0, 3, 7)
    np.savez(tmp_path / "data.npz", x_train=stored, y_train=y, x_test=stored[:2], y_test=y[:2], classes=np.array(["a", "b", "c"]))
    for path in (tmp_path, tmp_path / "data.npz"):
        d = load_dataset(DataSpec(source="npz", path=str(path)), (c, 5, 6))
        assert torch.equal(d.train_x, torch.from_numpy(x_nchw)) and torch.equal(d.test_x, torch.from_numpy(x_nchw[:2]))
        assert d.train_y.tolist() == y.tolist() and d.classes == ["a", "b", "c"]


def test_npz_errors(tmp_path):
    f = tmp_path / "d.npz"
    np.savez(f, x_train=np.zeros((2, 4, 4), np.uint8), y_train=np.zeros(2, np.int64))
    with pytest.raises(UserError, match="lacks the array.*x_test, y_test"):
        load_dataset(DataSpec(source="npz", path=str(f)), (1, 4, 4))
    np.savez(f, x_train=np.zeros((2, 4, 4)), y_train=np.zeros(2), x_test=np.zeros((1, 4, 4)), y_test=np.zeros(1))
    with pytest.raises(UserError, match="x_train is float64"):
        load_dataset(DataSpec(source="npz", path=str(f)), (1, 4, 4))
    f.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(UserError, match="cannot read"):
        load_dataset(DataSpec(source="npz", path=str(f)), (1, 4, 4))


# ---------------------------------------------------------------- download


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A loopback HTTP server over tmp_path/served, with NETSPEC_DATA_MIRROR and NETSPEC_CACHE set."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv("NETSPEC_DATA_MIRROR", f"http://127.0.0.1:{server.server_address[1]}/")
    monkeypatch.setenv("NETSPEC_CACHE", str(tmp_path / "cache"))
    yield served
    server.shutdown()
    thread.join()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_idx(mirror, tmp_path, monkeypatch):
    make_idx_dir(mirror)
    monkeypatch.setitem(download.CHECKSUMS, "mnist", {p.name: md5(p) for p in mirror.iterdir()})
    d = load_dataset(DataSpec(source="mnist", download=True), (1, 28, 28))
    assert d.train_x.shape == (12, 1, 28, 28) and d.classes == [str(i) for i in range(10)]
    cache = tmp_path / "cache" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(p.name for p in mirror.iterdir())


def test_download_checksum_mismatch_leaves_nothing(mirror, tmp_path, monkeypatch):
    make_idx_dir(mirror)
    monkeypatch.setitem(download.CHECKSUMS, "mnist", {p.name: "0" * 32 for p in mirror.iterdir()})
    with pytest.raises(UserError, match="has MD5 .*expected 0000"):
        load_dataset(DataSpec(source="mnist", download=True), (1, 28, 28))
    assert list((tmp_path / "cache" / "mnist").iterdir()) == []


def test_download_missing_file_is_a_user_error(mirror, tmp_path, monkeypatch):
    monkeypatch.setitem(download.CHECKSUMS, "mnist", {n + ".gz": "0" * 32 for pair in sources.IDX_FILES.values() for n in pair})
    with pytest.raises(UserError, match="could not download .*404"):
        load_dataset(DataSpec(source="mnist", download=True, path=str(tmp_path / "dl")), (1, 28, 28))
    assert list((tmp_path / "dl").iterdir()) == []


def make_tar(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))


def test_download_cifar_tarball(mirror, tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_cifar(src, "cifar10", 2)
    folder = src / "cifar-10-batches-py"
    make_tar(mirror / "cifar-10-python.tar.gz", {f"cifar-10-batches-py/{p.name}": p.read_bytes() for p in folder.iterdir()})
    monkeypatch.setitem(download.CHECKSUMS, "cifar10", {"cifar-10-python.tar.gz": md5(mirror / "cifar-10-python.tar.gz")})
    d = load_dataset(DataSpec(source="cifar10", download=True), (3, 32, 32))
    assert d.train_x.shape == (30, 3, 32, 32)
    assert [p.name for p in (tmp_path / "cache" / "cifar10").iterdir()] == ["cifar-10-batches-py"]


def test_download_refuses_unsafe_tarball(mirror, tmp_path, monkeypatch):
    make_tar(mirror / "cifar-10-python.tar.gz", {"../escape": b"x"})
    monkeypatch.setitem(download.CHECKSUMS, "cifar10", {"cifar-10-python.tar.gz": md5(mirror / "cifar-10-python.tar.gz")})
    with pytest.raises(UserError, match="unsafe archive member '../escape'"):
        load_dataset(DataSpec(source="cifar10", download=True), (3, 32, 32))
    assert not (tmp_path / "cache" / "escape").exists()


# ---------------------------------------------------------------- Batches


def toy(n=50, c=3, h=8, w=8):
    x = torch.from_numpy(RNG.integers(0, 256, (n, c, h, w)).astype(np.uint8))
    return x, torch.arange(n)


def collect(b: Batches, epoch: int = 0):
    b.set_epoch(epoch)
    xs, ys = zip(*b)
    return torch.cat(xs), torch.cat(ys)


def test_batches_reproducible_and_shuffled_per_epoch():
    x, y = toy()
    a, b = (Batches(x, y, 8, train=True, mean=[0.5], std=[0.25], augment=Augment(crop_pad=2, flip=True), seed=3) for _ in range(2))
    assert len(a) == 6
    xa, ya = collect(a, 1)
    xb, yb = collect(b, 1)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    _, y2 = collect(a, 2)
    assert not torch.equal(ya, y2)
    assert len(set(ya.tolist())) == 48  # a permutation, last partial batch dropped
    _, y_other_seed = collect(Batches(x, y, 8, train=True, mean=[0.5], std=[0.25], seed=4), 1)
    assert not torch.equal(ya, y_other_seed)


@pytest.mark.parametrize("train", [True, False])
def test_batches_shards_disjoint_and_covering(train):
    x, y = toy(n=23)
    world = 3
    shards = [Batches(x, y, 4, train=train, mean=[0.0], std=[1.0], seed=7, rank=r, world_size=world) for r in range(world)]
    labels = [collect(s, 5)[1].tolist() for s in shards]
    flat = [v for part in labels for v in part]
    assert len(flat) == len(set(flat))
    if train:  # drop_last: every rank the same number of batches, 7 samples each -> one batch of 4
        assert {len(s) for s in shards} == {1} and all(len(p) == 4 for p in labels)
        full = [Batches(x, y, 4, train=True, mean=[0.0], std=[1.0], seed=7, rank=r, world_size=world, drop_last=False) for r in range(world)]
        assert sorted(v for s in full for v in collect(s, 5)[1].tolist()) == list(range(23))
    else:
        assert sorted(flat) == list(range(23)) and labels[0][:3] == [0, 3, 6]  # strided, remainder to low ranks
        assert [len(p) for p in labels] == [8, 8, 7] and [len(s) for s in shards] == [2, 2, 2]


def test_ranks_together_see_the_single_process_batches():
    """With world_size ranks of batch B, step b covers exactly the single process's step b of batch world·B."""
    x, y = toy(n=24)
    single = [set(b[1].tolist()) for b in Batches(x, y, 6, train=True, mean=[0.0], std=[1.0], seed=3)]
    ranks = [list(Batches(x, y, 3, train=True, mean=[0.0], std=[1.0], seed=3, rank=r, world_size=2)) for r in range(2)]
    assert single == [set(ranks[0][b][1].tolist()) | set(ranks[1][b][1].tolist()) for b in range(len(single))]


def test_batches_normalisation_and_no_augment_on_test():
    x, y = toy(n=10)
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]
    b = Batches(x, y, 4, train=False, mean=mean, std=std, augment=Augment(crop_pad=2, flip=True))
    got, labels = collect(b)
    want = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert got.dtype == torch.float32 and labels.dtype == torch.int64
    assert torch.allclose(got, want, atol=1e-5)
    assert len(b) == 3


def test_augment_flip_and_crop():
    x, y = toy(n=64)
    gen = batches._generator(0)
    flipped = batches.augment_batch(x, Augment(flip=True), gen)
    same = (flipped == x).flatten(1).all(1)
    mirrored = (flipped == x.flip(3)).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()

    cropped = batches.augment_batch(x, Augment(crop_pad=2), batches._generator(1))
    assert cropped.shape == x.shape and cropped.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):  # every output is some window of its padded input
        windows = padded[i].unfold(1, 8, 1).unfold(2, 8, 1)  # C, 5, 5, 8, 8
        assert (windows == cropped[i][:, None, None]).flatten(3).all(3).all(0).any()
    assert not torch.equal(cropped, x)


def test_batches_augment_keeps_shape():
    x, y = toy(n=16, c=1, h=6, w=6)
    b = Batches(x, y, 5, train=True, mean=[0.5], std=[0.5], augment=Augment(crop_pad=3, flip=True))
    shapes = {tuple(xb.shape) for xb, _ in b}
    assert shapes == {(5, 1, 6, 6)}
