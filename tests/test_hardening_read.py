"""Issue 10, class 1: reading a spec file. Whatever the bytes (other encodings, binary, NUL, control
characters), whatever the path names (a directory, a device, a pipe, a huge file) and however deep the
nesting, the answer is `file:line: what — fix` (exit 2), reached without reading more than the limit."""
from __future__ import annotations

import os
import random

import pytest

from netspec.cli import main
from netspec.compiler import analyse
from netspec.compiler.parse import MAX_NESTING, MAX_SPEC_BYTES
from netspec.errors import SpecError
from conftest import MINI, error_of

CONTROL = [c for c in range(0x20) if chr(c) not in "\t\n\r"] + [0x7F]


def _line_of(data: bytes, index: int) -> int:
    return data.count(b"\n", 0, index) + 1


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "shift_jis"])
def test_other_encodings(tmp_path, encoding):
    words = "日本語" if encoding == "shift_jis" else "café ü ß"
    text = MINI.replace("name: mini", f"name: mini\ndescription: {words}")
    path = tmp_path / "spec.yaml"
    path.write_bytes(text.encode(encoding))
    err = error_of(analyse, path)
    assert "UTF" in str(err), str(err)


@pytest.mark.parametrize("seed", range(12))
def test_random_binary_files(tmp_path, seed):
    data = random.Random(seed).randbytes(2000)
    path = tmp_path / "spec.yaml"
    path.write_bytes(data)
    err = error_of(analyse, path)
    assert err.pos is not None and err.pos.file == str(path)


@pytest.mark.parametrize("code", CONTROL, ids=hex)
def test_control_characters_at_their_line(tmp_path, code):
    lines = MINI.splitlines(keepends=True)
    lines[5] = lines[5].replace("relu1", f"relu{chr(code)}1")
    data = "".join(lines).encode()
    path = tmp_path / "spec.yaml"
    path.write_bytes(data)
    err = error_of(analyse, path)
    assert err.pos.line == 6, str(err)
    assert ("NUL" if code == 0 else "control character") in err.what


def test_a_latin1_byte_is_reported_at_its_line(tmp_path):
    data = MINI.encode() + b"description: caf\xe9\n"
    path = tmp_path / "spec.yaml"
    path.write_bytes(data)
    err = error_of(analyse, path)
    assert err.pos.line == _line_of(data, data.index(b"\xe9")) and "0xe9" in err.what


def test_utf8_with_a_bom_is_read(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + MINI.encode())
    assert analyse(path)[0].name == "mini"


@pytest.mark.parametrize("kind", ["directory", "dev_null", "dev_zero", "fifo", "missing", "huge", "exact_limit"])
@pytest.mark.parametrize("how", ["spec", "extends"])
def test_things_that_are_not_spec_files(tmp_path, kind, how):
    target = {"dev_null": "/dev/null", "dev_zero": "/dev/zero"}.get(kind, str(tmp_path / "target.yaml"))
    if kind == "directory":
        os.mkdir(target)
    elif kind == "fifo":
        os.mkfifo(target)  # opening it would block: it must be refused from its stat alone
    elif kind in ("huge", "exact_limit"):
        with open(target, "wb") as f:
            f.truncate(MAX_SPEC_BYTES + (1 if kind == "huge" else 0))  # sparse: no disk used
    path = target
    if how == "extends":
        path = tmp_path / "spec.yaml"
        path.write_text(f"extends: {target}\n" + MINI)
    if kind == "exact_limit":  # NUL bytes, within the limit: read, then refused for what they are
        err = error_of(analyse, path)
        assert "NUL" in err.what
        return
    err = error_of(analyse, path)
    words = {"directory": "a directory", "dev_null": "not a regular file", "dev_zero": "not a regular file",
             "fifo": "not a regular file", "missing": "does not exist", "huge": "limited to"}[kind]
    assert words in str(err), str(err)
    if how == "extends":
        assert err.pos is not None and err.pos.line == 1, str(err)


def _deep_flow(depth: int) -> str:
    return MINI + "vars:\n  deep: " + "[" * depth + "]" * depth + "\n"


def _deep_block(depth: int) -> str:
    return MINI + "vars:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(depth)) + "  " * (depth + 1) + "v: 1\n"


def _deep_alias(depth: int) -> str:
    return MINI + "vars:\n  a0: &a0 [1]\n" + "".join(f"  a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, depth))


@pytest.mark.parametrize("depth", [MAX_NESTING - 5, MAX_NESTING + 1, 1_000, 100_000])
@pytest.mark.parametrize("make", [_deep_flow, _deep_block, _deep_alias], ids=["flow", "block", "alias"])
def test_deep_nesting_is_an_error_not_a_recursion_error(tmp_path, make, depth):
    if make is _deep_block and depth > 1000:
        depth = 1000  # indentation grows quadratically
    path = tmp_path / "spec.yaml"
    path.write_text(make(depth))
    if depth < MAX_NESTING - 2:
        analyse(path)
        return
    err = error_of(analyse, path)
    assert "nested more than" in err.what and err.pos.line >= 1


@pytest.mark.parametrize("value", ["[" * 5000, "[" * 100 + "]" * 100, "{a: " * 3000, "a\0b", "x" * (MAX_SPEC_BYTES + 1)])
def test_bad_override_values(tmp_path, value, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text(MINI)
    assert main(["compile", str(path), f"vars.x={value}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("override '") and len(err) < 600 and len(err.splitlines()) == 1, err[:300]


def test_cli_exit_2_one_line(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_bytes(b"\x00\x01\x02" * 100)
    assert main(["compile", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
