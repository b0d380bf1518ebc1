"""Where things live: the spec a command works on, the build directory, the current build.

`netspec compile SPEC` writes `build/<name>/` and marks it current (`build/CURRENT`), so later
commands need no argument: they reuse the current build's spec file and overrides.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from netspec.errors import UserError

DEFAULT_SPEC = Path("specs/cnds8.yaml")

# A name that becomes one path component (build/<name>/, runs/<name>/): no separators, no `.`/`..`, no
# leading dot or dash, a length any file system takes.
PATH_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
MAX_RUN_FILE_BYTES = 64 << 20  # build.json, checkpoints.json, CURRENT: netspec writes them small


def check_path_name(name: str) -> str:
    """A spec name used as a directory name: one path component of letters, digits, `_`, `-` and `.`."""
    if not PATH_NAME.match(name) or ".." in name:
        raise ValueError(f"'{_short(name)}' cannot name a directory: use 1 to 100 letters, digits, _, - and . "
                         "(not starting with . or -, no '..', no '/')")
    return name


def check_run_path(text: str) -> str:
    """`train.out`: a directory path that does not climb out through `..` (absolute paths are an explicit choice)."""
    if not text or ".." in Path(text).parts:
        raise ValueError(f"'{_short(text)}' may not be empty or contain '..' (netspec would write outside the "
                         "directories it owns): give a path below the working directory, or an absolute one")
    return text


def build_root() -> Path:
    root = Path(os.environ.get("NETSPEC_BUILD") or "build")  # set but empty: the default, not the working directory
    if root.exists() and not root.is_dir():
        raise UserError(f"'{root}' is a file, but netspec keeps its builds in a directory of that name",
                        "rename or move the file, or set NETSPEC_BUILD to another directory")
    return root


def _short(text: str, limit: int = 60) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_output_file(path: str | Path, what: str = "output") -> Path:
    """A file netspec is asked to write: not a directory, and every existing parent a directory (checked
    before any work is done, so a long export does not fail at its last step)."""
    path = Path(path)
    _check_length(path, what)
    if "\0" in str(path):
        raise UserError(f"the {what} path contains a NUL character", "give a plain file name")
    if path.is_dir():
        raise UserError(f"the {what} '{_short(path)}' is an existing directory", "give a file name, e.g. "
                        f"{_short(path / ('model' + (path.suffix or '.onnx')))}")
    _check_parents(path, what)
    return path


def claim_dir(path: str | Path, markers: tuple[str, ...], what: str) -> Path:
    """A directory netspec owns and may overwrite files in: absent, empty, or holding one of `markers` (a file
    netspec writes there). Anything else is someone's directory: refused before anything is written."""
    path = Path(path)
    _check_length(path, what)
    if "\0" in str(path):
        raise UserError(f"the {what} path contains a NUL character", "give a plain directory name")
    if path.exists() and not path.is_dir():
        raise UserError(f"the {what} '{_short(path)}' is a file, not a directory", "rename or move the file, or "
                        "choose another directory")
    _check_parents(path, what)
    if path.is_dir():
        try:
            entries = {p.name for p in path.iterdir()}
        except OSError as err:
            raise UserError(f"cannot list the {what} '{_short(path)}': {err.strerror}", "check its permissions") from None
        if entries and not entries & set(markers):
            raise UserError(f"the {what} '{_short(path)}' already holds files netspec did not write "
                            f"(e.g. {_short(sorted(entries)[0])})", "choose another directory (netspec would "
                            "overwrite files there), or empty it")
    return path


def _check_length(path: Path, what: str) -> None:
    if len(str(path)) > 4000 or any(len(part.encode()) > 255 for part in path.parts):
        raise UserError(f"the {what} path '{_short(path)}' is too long for a file system",
                        "use names of at most 255 bytes")


def _check_parents(path: Path, what: str) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"cannot write the {what} '{_short(path)}': '{_short(parent)}' is a file, "
                                "not a directory", "choose another path")
            return


def split_args(words: list[str]) -> tuple[str | None, list[str]]:
    """`[SPEC] [key=value ...]`: the word without '=' is the spec, the rest are overrides."""
    specs = [w for w in words if "=" not in w]
    if len(specs) > 1:
        raise UserError(f"more than one spec given: {', '.join(specs)}", "give one spec, then key=value overrides")
    return (specs[0] if specs else None), [w for w in words if "=" in w]


def current_build() -> Path | None:
    """The build `build/CURRENT` names, if it is there (a damaged marker is an error naming it)."""
    marker = build_root() / "CURRENT"
    if not marker.is_file():
        return None
    name = read_small_text(marker).strip()
    try:
        check_path_name(name)
    except ValueError as err:
        raise UserError(f"{marker} is damaged: {err}", f"delete {marker} and compile again "
                        "(`netspec compile SPEC`)") from None
    build = build_root() / name
    return build if (build / "build.json").is_file() else None


def read_small_text(path: Path) -> str:
    """A run or build file netspec wrote (small, UTF-8 text); anything else is an error naming the file."""
    try:
        if not path.is_file():
            raise UserError(f"{path} is not a regular file", f"delete it; netspec writes {path.name} itself")
        if path.stat().st_size > MAX_RUN_FILE_BYTES:
            raise UserError(f"{path} is larger than netspec ever writes it ({path.stat().st_size} bytes)",
                            f"delete it; netspec writes {path.name} itself")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is damaged: not UTF-8 text", f"delete it; netspec writes {path.name} itself") from None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}", "check its permissions") from None


def read_json(path: Path, shape: dict[str, Any], fix: str) -> dict:
    """A JSON object netspec wrote, checked key by key against `shape` (key -> type or tuple of types;
    a key ending in `?` may be absent). A damaged file is one UserError naming it."""
    text = read_small_text(path)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise UserError(f"{path} is damaged: not JSON ({_short(err, 80)})", fix) from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is damaged: it holds a {type(data).__name__}, not a JSON object", fix)
    for key, kind in shape.items():
        optional = key.endswith("?")
        key = key.rstrip("?")
        if key not in data:
            if optional:
                continue
            raise UserError(f"{path} is damaged: it has no '{key}'", fix)
        value = data[key]
        item_kind = None
        if isinstance(kind, list):  # [type]: a list of that type
            kind, item_kind = list, kind[0]
        if not isinstance(value, kind) or isinstance(value, bool) and kind in (int, float, (int, float)) or (
                item_kind is not None and not all(isinstance(v, item_kind) for v in value)):
            raise UserError(f"{path} is damaged: '{key}' is {_short(json.dumps(value), 60)}", fix)
    return data


BUILD_JSON = {"spec": str, "overrides": [str], "spec_hash?": str, "heads?": [str]}


def resolve_spec(words: list[str]) -> tuple[Path, list[str]]:
    """The spec file and overrides a command should use: given, else the current build's, else the default."""
    spec, overrides = split_args(words)
    if spec is not None:
        return Path(spec), overrides
    build = current_build()
    if build is not None:
        info = read_json(build / "build.json", BUILD_JSON, f"compile the spec again (`netspec compile SPEC`), "
                         f"or delete {build}")
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
        # text as UTF-8; a file name that is not (undecodable bytes, kept by Python as surrogates) is written back
        # as the bytes it was, so a spec named so still compiles and its build.json still names it
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape")) as f:
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
