"""Reading .npy/.npz arrays (numpy only, no torch: `netspec predict` uses it) with their size checked first.

An array file says its shape and dtype in a header; that claim is checked against a limit and against the
file (or zip member) size before numpy allocates anything, so a header claiming a huge shape, a zip bomb or
a truncated file is one error naming the file, not a MemoryError or a hang. Object arrays (pickles) are
never loaded.
"""
from __future__ import annotations

import math
import os
import zipfile
import zlib
from pathlib import Path
from typing import IO

import numpy as np

from netspec.errors import UserError
from netspec.limits import env_name

MAX_RATIO = 100  # image and label data never compresses better than this; a larger claim is a decompression bomb
RATIO_FLOOR = 64 << 20  # ... when it claims more than this (small files are cheap whatever they claim)


def bomb(path: Path | str, claimed: int, compressed: int) -> UserError | None:
    """The error for a compressed file whose claimed size is out of proportion to its size on disk, else None."""
    if claimed > RATIO_FLOOR and claimed > MAX_RATIO * max(compressed, 1):
        return UserError(f"{path}: {compressed:,} compressed bytes claim to unpack to {claimed:,} "
                         f"(more than {MAX_RATIO}×): a decompression bomb?", "replace the file with the real data")
    return None


def too_large(path: Path | str, what: str, size: int, limit: int) -> UserError:
    return UserError(f"{path}: {what} {size:,} bytes, more than the limit of {limit:,}",
                     f"is the file damaged? if the data really is that large, raise {env_name('data_bytes')}={size}")


def _header(fp: IO[bytes], where: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, bytes of data) an .npy header claims; refuses object arrays and unknown versions."""
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except Exception as err:  # numpy parses the header with ast/tokenize: a damaged one can raise nearly anything
        raise UserError(f"{where} is not a readable .npy array ({(str(err).splitlines() or [type(err).__name__])[0][:120]})",
                        "save it with numpy.save / numpy.savez of a plain array") from None
    if dtype.hasobject:
        raise UserError(f"{where} holds Python objects (a pickle), which netspec never loads",
                        "save a plain numeric array (uint8 pixels 0..255 or floats 0..1)")
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise UserError(f"{where} has a damaged header (shape {shape})", "save it again with numpy.save")
    return tuple(shape), dtype, math.prod(shape) * dtype.itemsize


def load_arrays(path: Path, max_bytes: int, scale: int = 1) -> dict[str, np.ndarray]:
    """Every array of an .npy (under the name '') or .npz file, each checked before it is read against `max_bytes`
    (Limits.data_bytes). `scale`: how many times the bytes read the caller will need (predict converts uint8
    pixels to float32: 4)."""
    limit = max_bytes // scale
    try:
        if path.suffix.lower() == ".npy":
            with open(path, "rb") as f:
                _, _, nbytes = _header(f, str(path))
                if nbytes > limit:
                    raise too_large(path, "its header claims", nbytes, limit)
                have = os.fstat(f.fileno()).st_size - f.tell()
                if have < nbytes:
                    raise UserError(f"{path}: its header claims {nbytes:,} bytes of data but the file holds {have:,}",
                                    "the file is truncated or damaged: save it again")
            return {"": np.load(path, allow_pickle=False)}
        with zipfile.ZipFile(path) as z:
            members = [info for info in z.infolist() if not info.is_dir()]
            declared = sum(info.file_size for info in members)
            if declared > limit:
                raise too_large(path, "its arrays unpack to", declared, limit)
            for info in members:
                if info.compress_type != zipfile.ZIP_STORED and (err := bomb(f"{path}[{info.filename[:80]}]",
                                                                            info.file_size, info.compress_size)):
                    raise err
            claimed = 0
            for info in members:
                where = f"{path}[{info.filename[:80]}]"
                if not info.filename.endswith(".npy"):
                    raise UserError(f"{where} is not an array", "save the file with numpy.savez")
                with z.open(info) as member:
                    _, _, nbytes = _header(member, where)
                    claimed += nbytes
                if nbytes > info.file_size:
                    raise UserError(f"{where}: its header claims {nbytes:,} bytes of data but it holds "
                                    f"{info.file_size:,}", "the file is damaged: save it again")
            if claimed > limit:
                raise too_large(path, "its arrays claim", claimed, limit)
        with np.load(path, allow_pickle=False) as z:
            return {name: z[name] for name in z.files}
    except UserError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error,
            NotImplementedError, RuntimeError) as err:
        raise UserError(f"cannot read {path}: {str(err).splitlines()[0][:160] if str(err) else type(err).__name__}",
                        "save it with numpy.save / numpy.savez of plain (non-object) arrays") from None
