"""Downloading a published data set file: checksummed, atomic, no partial file left; safe tar extraction."""
from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tarfile
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

from netspec.errors import UserError
from netspec.project import atomic_file

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
CORRUPT = "the file is damaged or not what its name says: delete it and fetch it again"

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


def extract_tar(archive: Path, root: Path) -> None:
    """Unpack a .tar.gz into root, refusing absolute paths, `..` and anything but files and dirs."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                p = PurePosixPath(m.name)
                if p.is_absolute() or ".." in p.parts or not (m.isfile() or m.isdir()):
                    raise UserError(f"{archive}: refusing unsafe archive member '{m.name}'", CORRUPT)
            tar.extractall(root, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise UserError(f"{archive} is not a readable .tar.gz archive: {e}", CORRUPT) from e
