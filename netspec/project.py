"""Where things live: the spec a command works on, the build directory, the current build.

`netspec compile SPEC` writes `build/<name>/` and marks it current (`build/CURRENT`), so later
commands need no argument: they reuse the current build's spec file and overrides.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from netspec.errors import UserError

DEFAULT_SPEC = Path("specs/cnds8.yaml")


def build_root() -> Path:
    return Path(os.environ.get("NETSPEC_BUILD", "build"))


def split_args(words: list[str]) -> tuple[str | None, list[str]]:
    """`[SPEC] [key=value ...]`: the word without '=' is the spec, the rest are overrides."""
    specs = [w for w in words if "=" not in w]
    if len(specs) > 1:
        raise UserError(f"more than one spec given: {', '.join(specs)}", "give one spec, then key=value overrides")
    return (specs[0] if specs else None), [w for w in words if "=" in w]


def current_build() -> Path | None:
    marker = build_root() / "CURRENT"
    if marker.is_file():
        build = build_root() / marker.read_text().strip()
        if (build / "build.json").is_file():
            return build
    return None


def resolve_spec(words: list[str]) -> tuple[Path, list[str]]:
    """The spec file and overrides a command should use: given, else the current build's, else the default."""
    spec, overrides = split_args(words)
    if spec is not None:
        return Path(spec), overrides
    build = current_build()
    if build is not None:
        info = json.loads((build / "build.json").read_text())
        return Path(info["spec"]), info["overrides"] + overrides
    if DEFAULT_SPEC.exists():
        return DEFAULT_SPEC, overrides
    raise UserError("no spec given and no current build", "run `netspec compile specs/NAME.yaml` first, or name a spec")


@contextlib.contextmanager
def atomic_file(path: Path, binary: bool = False) -> Iterator[IO]:
    """A file to write `path` through: readers see the old or the new content, never half of it (temp file beside
    it, fsync, rename). An exception inside the block leaves `path` as it was and no temp file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode a plain open() would
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write a whole file atomically (see `atomic_file`)."""
    with atomic_file(path, binary=isinstance(data, bytes)) as f:
        f.write(data)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
