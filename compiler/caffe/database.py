"""Caffe's databases: LMDB environments of `Datum` records, and `.binaryproto` mean images.

A Datum (caffe.proto) is one example: `channels`, `height`, `width`, the pixels in `data` — raw uint8 in
channel-planar order (C, H, W), BGR as Caffe's OpenCV reads images — or an encoded image file (`encoded: true`,
JPEG/PNG, decoded here to BGR as Caffe's `DecodeDatumToCVMat` does), or `float_data`; and its `label`.
`convert_imageset` writes them under keys like `00000012_path/to/image.jpg`; Caffe reads them in key order.

The importer reads the first record and the entry count from here (the input shape, the epoch's length); the
streaming reader (`netspec.runtime.data.lmdb`) decodes every record with `datum_pixels`.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from netspec.errors import Pos
from netspec.limits import Limits, env_name
from netspec.compiler.caffe.textformat import CaffeError
from netspec.compiler.caffe.weights import blob_array, message_class

LMDB_FILE = "data.mdb"
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")  # Pillow modes OpenCV's IMREAD_ANYCOLOR reads as one channel


class DatabaseError(CaffeError):
    """A Caffe database netspec cannot read."""


def backend_of(path: Path) -> str | None:
    """'lmdb' or 'leveldb' by the files of the directory (an LMDB file itself also counts), None if neither."""
    if (path / LMDB_FILE).is_file() or (path.is_file() and path.name.endswith(".mdb")):
        return "lmdb"
    if (path / "CURRENT").is_file() and (path / "LOCK").exists():
        return "leveldb"
    return None


def leveldb_error(path: Path, pos: Pos | None) -> DatabaseError:
    return DatabaseError(f"{path} is a LevelDB database (Caffe's backend LEVELDB), which netspec does not read: "
                         "LevelDB allows one process at a time, and netspec's data loader reads from several",
                         "convert it to LMDB (Caffe: convert_imageset --backend lmdb, or the data set's own convert "
                         "tool with backend lmdb), then use data.source: lmdb", pos)


def open_lmdb(path: str | Path, pos: Pos | None = None):
    """A read-only lmdb Environment of a Caffe database directory (no lock file written: the data loader's
    worker processes each open their own)."""
    import lmdb

    path = Path(path)
    if backend_of(path) == "leveldb":
        raise leveldb_error(path, pos)
    if not path.exists():
        raise DatabaseError(f"no LMDB database at {path}", "set data.path (and data.test_path) to the directories "
                            "Caffe's Data layers read (their data_param.source)", pos)
    try:
        return lmdb.open(str(path), readonly=True, lock=False, readahead=False, subdir=path.is_dir(),
                         max_readers=1024)
    except lmdb.Error as err:
        raise DatabaseError(f"cannot open {path} as an LMDB database: {str(err)[:160]}",
                            "give the directory holding data.mdb (Caffe's data_param.source)", pos) from None


def entries(env) -> int:
    return int(env.stat()["entries"])


def first_record(env, path: Path, pos: Pos | None = None) -> bytes:
    with env.begin(buffers=False) as txn:
        cursor = txn.cursor()
        if not cursor.first():
            raise DatabaseError(f"the LMDB database {path} is empty", "give the database of the training set", pos)
        return bytes(cursor.value())


def parse_datum(value: bytes, where: str):
    try:
        return message_class("Datum").FromString(value)
    except Exception as err:  # protobuf's DecodeError, or a message of another type
        raise DatabaseError(f"{where} is not a Caffe Datum record: {str(err)[:120]}",
                            "give a database written by Caffe's convert_imageset (or one of Datum records)") from None


def datum_pixels(datum, channels: int | None = None, max_pixels: int = Limits().image_pixels) -> np.ndarray:
    """A Datum's pixels as a (C, H, W) array: uint8 for raw and encoded records (encoded ones decoded to BGR, or
    gray for 1 channel, as Caffe's OpenCV does), float32 for float_data. `channels` (1 or 3) converts an encoded
    image to that many channels; None keeps the image's own (gray stays 1, colour becomes 3). An encoded image of
    more than `max_pixels` is refused from its header, before decoding."""
    if datum.encoded:
        from PIL import Image

        with Image.open(io.BytesIO(datum.data)) as im:
            if im.width * im.height > max_pixels:
                raise ValueError(f"an encoded image of {im.width}×{im.height} pixels, more than the limit of "
                                 f"{max_pixels:,} (raise {env_name('image_pixels')} for really large images)")
            if channels == 1 or (channels is None and im.mode in GRAY_MODES):
                return np.asarray(im.convert("L"), np.uint8)[None]
            rgb = np.asarray(im.convert("RGB"), np.uint8)
        return np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1))  # RGB (H, W, C) → BGR (C, H, W)
    c, h, w = datum.channels, datum.height, datum.width
    if min(c, h, w) < 1:
        raise ValueError(f"the record says {c}×{h}×{w} (channels × height × width)")
    if datum.data:
        if len(datum.data) != c * h * w:
            raise ValueError(f"the record holds {len(datum.data)} bytes for {c}×{h}×{w} = {c * h * w} pixels")
        return np.frombuffer(datum.data, np.uint8).reshape(c, h, w)
    if len(datum.float_data) != c * h * w:
        raise ValueError(f"the record holds {len(datum.float_data)} float values for {c}×{h}×{w} = {c * h * w}")
    return np.asarray(datum.float_data, np.float32).reshape(c, h, w)


def first_datum(path: str | Path, pos: Pos | None = None) -> tuple[tuple[int, int, int], int, bool]:
    """((C, H, W) of the first record's pixels, the number of records, whether the records hold floats)."""
    path = Path(path)
    env = open_lmdb(path, pos)
    try:
        value = first_record(env, path, pos)
        count = entries(env)
    finally:
        env.close()
    where = f"the first record of {path}"
    try:
        pixels = datum_pixels(parse_datum(value, where))
    except DatabaseError:
        raise
    except Exception as err:  # a record that does not decode (a bad image, sizes that disagree)
        raise DatabaseError(f"{where}: {str(err)[:160]}", "rewrite the database with convert_imageset", pos) from None
    return tuple(pixels.shape), count, pixels.dtype != np.uint8


def read_mean(path: str | Path, pos: Pos | None = None) -> np.ndarray:
    """A Caffe mean image (`compute_image_mean`'s .binaryproto, a BlobProto of 1×C×H×W) as float32 (C, H, W)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DatabaseError(f"cannot read the mean file {path}: {err.strerror or err}",
                            "give the .binaryproto written by Caffe's compute_image_mean", pos) from None
    try:
        blob = message_class("BlobProto").FromString(data)
    except Exception as err:
        raise DatabaseError(f"{path} is not a Caffe mean image (BlobProto): {str(err)[:120]}",
                            "give the .binaryproto written by Caffe's compute_image_mean", pos) from None
    mean = blob_array(blob)
    if mean.ndim == 4 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.ndim != 3 or mean.size == 0:
        raise DatabaseError(f"{path} holds a blob of shape {mean.shape}, not a 1×C×H×W mean image",
                            "give the .binaryproto written by Caffe's compute_image_mean", pos)
    return np.ascontiguousarray(mean, np.float32)
