"""Issue 10, classes 7 and 9: what predict and the data readers read — ONNX metadata, images, arrays, IDX and
CIFAR files — is checked before it is trusted, bounded before it is decoded, and a failure is one line with no
library warning before it. Generated: every metadata entry × wrong values, bomb/truncation/dtype variants of
every file kind."""
from __future__ import annotations

import gzip
import io
import json
import math
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from netspec.cli import main
from netspec.data_spec import DataSpec
from netspec.errors import UserError
from netspec.limits import Limits
from netspec.runtime.arrays import load_arrays
from netspec.runtime.data.sources import load_dataset, read_idx
from netspec.runtime.images import read_image
from conftest import MINI, write
from test_data import make_idx_dir, write_cifar


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("model")
    spec = write(root, MINI)
    out = root / "m.onnx"
    assert main(["export", str(spec), "--random-init", str(out), "data.source=npz", f"data.path={root}/none.npz"]) == 0
    return out


def predict(capsys, *argv) -> tuple[int, str]:
    code = main(["predict", *map(str, argv)])
    return code, capsys.readouterr().err


def one_line(code: int, err: str) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and "Warning" not in err, err
    assert len(err) < 500, err


def with_metadata(model: Path, tmp_path: Path, key: str, value) -> Path:
    import onnx

    proto = onnx.load(str(model))
    props = {p.key: p.value for p in proto.metadata_props}
    if value is None:
        props.pop("netspec." + key)
    else:
        props["netspec." + key] = value if isinstance(value, str) else json.dumps(value)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    out = tmp_path / "edited.onnx"
    onnx.save(proto, str(out))
    return out


BAD_META = {
    "input_shape": [None, "{", [], [1, 8], [0, 8, 8], [-1, 8, 8], [1, 8, 8.5], [10**6, 10**6, 10**6], [True, 8, 8],
                    "x", {"a": 1}, [1, 9, 8]],
    "mean": [None, "{", [], [math.nan], [math.inf], ["a"], [0.1, 0.2], [[0.1]], 5],
    "std": [None, [0.0], [-1], [math.nan], [], [1, 2], "[1e400]"],
    "classes": [None, [], "abc", [1, 2, 3], [None], {"0": "a"}, ["a", "b"]],
}


@pytest.mark.parametrize("key,value", [(k, v) for k, vs in BAD_META.items() for v in vs],
                         ids=lambda v: str(v)[:20])
def test_predict_checks_every_metadata_entry(model, tmp_path, capsys, key, value):
    edited = with_metadata(model, tmp_path, key, value)
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), np.uint8))
    code, err = predict(capsys, edited, tmp_path / "x.npy")
    one_line(code, err)
    assert "edited.onnx" in err


def test_predict_works_on_a_good_model(model, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), np.uint8))
    assert main(["predict", str(model), str(tmp_path / "x.npy")]) == 0


# --- images --------------------------------------------------------------------------------------------

def png_header(width: int, height: int, idat: bytes = b"") -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _deflate_bomb(width: int, rows: int) -> bytes:
    z = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    return b"".join(z.compress(row) for _ in range(rows)) + z.flush()


IMAGES = {
    "huge_header": lambda: png_header(100_000, 100_000),
    "over_limit_header": lambda: png_header(9000, 9000),
    "wide_bomb": lambda: png_header(60_000, 2000, _deflate_bomb(60_000, 2000)),
    "zero_size": lambda: png_header(0, 0),
    "truncated": lambda: png_header(8, 8)[:30],
    "random": lambda: np.random.default_rng(0).bytes(500),
    "empty": lambda: b"",
    "text": lambda: b"not an image\n",
    "gif_header": lambda: b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\0" * 20,
}


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_an_image_that_is_not_a_file(tmp_path, kind):
    import os
    import threading

    path = tmp_path / "image.png"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path = Path("/dev/zero")
    result = []
    reader = threading.Thread(target=lambda: result.append(pytest.raises(UserError, read_image, path, (1, 8, 8), Limits().image_pixels)),
                              daemon=True)
    reader.start()
    reader.join(10)
    assert result, "read_image blocked"


@pytest.mark.parametrize("kind", IMAGES)
@pytest.mark.parametrize("suffix", [".png", ".jpg", ".gif"])
def test_images_are_checked_before_decoding(model, tmp_path, capsys, kind, suffix):
    import resource

    path = tmp_path / f"image{suffix}"
    path.write_bytes(IMAGES[kind]())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, err = predict(capsys, model, path)
    one_line(code, err)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 300_000  # KiB: nothing big was decoded
    with pytest.raises(UserError):
        read_image(path, (1, 8, 8), Limits().image_pixels)


# --- arrays --------------------------------------------------------------------------------------------

def npy_bytes(shape, descr="|u1", data=b"") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


ARRAYS = {
    "huge_claim": lambda: npy_bytes((10**6, 10**6)),
    "truncated": lambda: npy_bytes((100, 1, 8, 8), data=b"\0" * 10),
    "negative_dim": lambda: npy_bytes((-1, 8)),
    "bad_magic": lambda: b"\x93NUMPX" + b"\0" * 100,
    "bad_header": lambda: b"\x93NUMPY\x01\x00" + struct.pack("<H", 20) + b"{'descr': '|u1',    \n",
    "float_bomb": lambda: npy_bytes((3000, 1, 8, 8), data=b"\0" * 192000),
    "objects": lambda: npy_bytes((1,), descr="|O", data=pickle.dumps([1])),
    "empty": lambda: b"",
    "complex": lambda: npy_bytes((1, 1, 8, 8), descr="<c8", data=b"\0" * 512),
    "strings": lambda: npy_bytes((1, 1, 8, 8), descr="<U1", data=b"a\0\0\0" * 64),
    "wrong_shape": lambda: npy_bytes((2, 3), data=b"\0" * 6),
    "nan": lambda: npy_bytes((1, 1, 8, 8), descr="<f4", data=np.full(64, np.nan, np.float32).tobytes()),
}


@pytest.mark.parametrize("kind", ARRAYS)
@pytest.mark.parametrize("container", ["npy", "npz"])
def test_arrays_are_checked_before_loading(model, tmp_path, capsys, kind, container, monkeypatch):
    monkeypatch.setenv("NETSPEC_MAX_DATA_BYTES", "500000")  # float_bomb: 192 kB of pixels become 768 kB of floats
    data = ARRAYS[kind]()
    path = tmp_path / f"x.{container}"
    if container == "npy":
        path.write_bytes(data)
    else:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("x.npy", data)
    code, err = predict(capsys, model, path)
    one_line(code, err)


def test_a_zip_bomb_is_refused_by_its_declared_size(tmp_path):
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, x=np.zeros((1000, 1000), np.uint8))
    with pytest.raises(UserError, match="more than the limit of 100,000"):
        load_arrays(path, 100_000)


# --- IDX and CIFAR ------------------------------------------------------------------------------------

def _idx(dims, data: bytes) -> bytes:
    return b"\0\0\x08" + bytes([len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + data


IDX = {
    "gzip_bomb": (True, lambda: _idx((10, 8, 8), b"\0" * 640) + b"\0" * (64 << 20)),
    "huge_claim": (False, lambda: _idx((2**31, 2**31, 2**31), b"")),
    "huge_claim_gz": (True, lambda: _idx((2**31, 2**31, 2**31), b"\0" * 100)),
    "ratio_bomb": (True, lambda: _idx((1200, 256, 256), bytes(1200 * 256 * 256))),  # honest header, 75 MiB of zeros
    "short": (False, lambda: _idx((10, 8, 8), b"\0" * 600)),
    "short_gz": (True, lambda: _idx((10, 8, 8), b"\0" * 600)),
    "long": (False, lambda: _idx((10, 8, 8), b"\0" * 700)),
    "header_cut": (False, lambda: _idx((10, 8, 8), b"")[:9]),
    "wrong_ndim": (False, lambda: _idx((10, 8), b"\0" * 80)),
    "not_gzip": (True, lambda: None),
}


@pytest.mark.parametrize("kind", IDX)
def test_idx_files_are_bounded_by_their_header(tmp_path, kind):
    import resource

    gz, make = IDX[kind]
    path = tmp_path / "images.gz"
    data = make()
    if data is None:
        path.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    elif gz:
        path.write_bytes(gzip.compress(data, 1))
    else:
        path.write_bytes(data)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(UserError) as info:
        read_idx(path, 3, Limits().data_bytes)
    assert str(path) in str(info.value) and len(str(info.value)) < 500
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 30_000  # KiB: the bomb was not unpacked


BAD_LABELS = {"strings": ["a"] * 6, "floats": [0.5] * 6, "nested": [[0]] * 6, "negative": [-1] * 6,
              "bools": [True] * 6, "huge": [2**70] * 6, "none": None, "dict": {"a": 1}}


@pytest.mark.parametrize("kind", BAD_LABELS)
def test_cifar_labels_must_be_class_indices(tmp_path, kind):
    write_cifar(tmp_path, "cifar10", 2)
    folder = tmp_path / "cifar-10-batches-py"
    x = np.zeros((6, 3072), np.uint8)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": x, b"labels": BAD_LABELS[kind]}))
    with pytest.raises(UserError) as info:
        load_dataset(DataSpec(source="cifar10", path=str(tmp_path)), (3, 32, 32))
    assert "test_batch" in str(info.value)


@pytest.mark.parametrize("names", [5, "abc", [1, 2], [b"\xff"]])
def test_cifar_class_names_must_be_names(tmp_path, names):
    write_cifar(tmp_path, "cifar10", 2)
    (tmp_path / "cifar-10-batches-py" / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    with pytest.raises(UserError, match="batches.meta"):
        load_dataset(DataSpec(source="cifar10", path=str(tmp_path)), (3, 32, 32))


@pytest.mark.parametrize("damage", ["x_float", "y_float", "y_strings", "classes_2d", "x_5d", "huge_claim", "y_huge"])
def test_npz_source_dtypes(tmp_path, damage):
    arrays = {"x_train": np.zeros((4, 8, 8), np.uint8), "y_train": np.zeros(4, np.int64),
              "x_test": np.zeros((2, 8, 8), np.uint8), "y_test": np.zeros(2, np.int64)}
    if damage == "x_float":
        arrays["x_train"] = arrays["x_train"].astype(np.float32)
    elif damage == "y_float":
        arrays["y_train"] = arrays["y_train"].astype(np.float32)
    elif damage == "y_strings":
        arrays["y_train"] = np.array(["a"] * 4)
    elif damage == "classes_2d":
        arrays["classes"] = np.zeros((2, 2))
    elif damage == "y_huge":  # a label of 10**12 must not make a list of 10**12 class names
        arrays["y_train"][0] = 10**12
    elif damage == "x_5d":
        arrays["x_train"] = np.zeros((4, 1, 1, 8, 8), np.uint8)
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    if damage == "huge_claim":
        with zipfile.ZipFile(path, "a") as z:
            z.writestr("extra.npy", npy_bytes((10**6, 10**6)))
    with pytest.raises(UserError, match="data.npz" if damage != "y_huge" else "beyond any class count"):
        load_dataset(DataSpec(source="npz", path=str(path)), (1, 8, 8))


def test_idx_good_files_still_read(tmp_path):
    make_idx_dir(tmp_path)
    data = load_dataset(DataSpec(source="idx", path=str(tmp_path)), (1, 28, 28))
    assert len(data.train_x) == 12
