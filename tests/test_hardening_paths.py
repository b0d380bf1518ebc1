"""Issue 10, classes 0 and 8: names that become paths, and every path netspec writes to.

Nothing netspec writes may land outside the directory it owns; a path that cannot be written is an error
before any work is done. Each case runs the CLI in-process in an empty working directory holding one
"victim" file, and checks the exit status, the message and that nothing outside build/ (or the output
the case names) changed.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from netspec.cli import main
from conftest import MINI

BAD_NAMES = ["..", ".", "a/b", "/tmp/x", "../x", "../../etc", ".hidden", "-rf", "a\\b", "x" * 101, "a..b",
             "name with space", "ü", "a:b", "a*", "~", ""]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root (except build/), with a hash of its content."""
    out = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and rel.parts[0] != "build":
            out[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def run(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NETSPEC_BUILD", raising=False)
    (tmp_path / "spec.yaml").write_text(MINI)
    (tmp_path / "model.py").write_text("the user's own file\n")
    (tmp_path / "build.json").write_text("{}\n")
    return tmp_path


@pytest.mark.parametrize("name", BAD_NAMES, ids=lambda n: repr(n)[:20])
@pytest.mark.parametrize("how", ["override", "spec"])
def test_a_name_that_is_not_one_path_component_is_refused(cwd, capsys, name, how):
    before = snapshot(cwd)
    if how == "override":
        argv = ["compile", "spec.yaml", f"name={name}"]
    else:
        (cwd / "spec.yaml").write_text(MINI.replace("name: mini", f"name: {name!r}".replace("'", '"')
                                                    if "\\" not in name else f"name: '{name}'"))
        before = snapshot(cwd)
        argv = ["compile", "spec.yaml"]
    code, err = run(argv, capsys)
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "name" in err
    assert snapshot(cwd) == before
    assert not (cwd / "build").exists() or all(p.is_dir() or p.parent.parent == cwd / "build" or p.name == "CURRENT"
                                              for p in (cwd / "build").rglob("*"))


@pytest.mark.parametrize("name", ["mini", "a.b", "A_1-x", "x" * 100])
def test_good_names_compile_into_build(cwd, capsys, name):
    code, err = run(["compile", "spec.yaml", f"name={name}"], capsys)
    assert code == 0, err
    assert (cwd / "build" / name / "build.json").is_file()
    assert (cwd / "model.py").read_text() == "the user's own file\n"


def test_a_foreign_directory_under_build_is_not_overwritten(cwd, capsys):
    (cwd / "build" / "mini").mkdir(parents=True)
    (cwd / "build" / "mini" / "model.py").write_text("mine")
    code, err = run(["compile", "spec.yaml"], capsys)
    assert code == 2 and "did not write" in err
    assert (cwd / "build" / "mini" / "model.py").read_text() == "mine"
    # a build netspec wrote is rewritten as before
    (cwd / "build" / "mini" / "model.py").unlink()
    assert run(["compile", "spec.yaml"], capsys)[0] == 0
    assert run(["compile", "spec.yaml"], capsys)[0] == 0


def test_an_empty_netspec_build_is_the_default_not_the_working_directory(cwd, capsys, monkeypatch):
    monkeypatch.setenv("NETSPEC_BUILD", "")
    before = snapshot(cwd)
    assert run(["compile", "spec.yaml"], capsys)[0] == 0
    assert (cwd / "build" / "mini" / "build.json").is_file() and snapshot(cwd) == before


def test_a_file_named_build_is_an_error(cwd, capsys):
    (cwd / "build").write_text("not a directory")
    code, err = run(["compile", "spec.yaml"], capsys)
    assert code == 2 and "'build' is a file" in err
    assert (cwd / "build").read_text() == "not a directory"


@pytest.mark.parametrize("content", ["../../etc", "/abs", "", "\x00\x01", "a/b"])
def test_a_damaged_current_marker_is_an_error(cwd, capsys, content):
    (cwd / "build").mkdir()
    (cwd / "build" / "CURRENT").write_text(content)
    code, err = run(["draw", "-o", "g.dot"], capsys)
    assert code == 2 and "CURRENT" in err and "Traceback" not in err


@pytest.mark.parametrize("content", ["", "[]", "{", '{"spec": 3, "overrides": []}', '{"spec": "s.yaml", "overrides": "x"}',
                                     '{"spec": "s.yaml"}', "\xff\xfe"])
def test_a_damaged_build_json_is_an_error_naming_it(cwd, capsys, content):
    assert run(["compile", "spec.yaml"], capsys)[0] == 0
    (cwd / "build" / "mini" / "build.json").write_bytes(content.encode("latin-1"))
    code, err = run(["draw", "-o", "g.dot"], capsys)
    assert code == 2 and "build.json" in err and "Traceback" not in err, err


@pytest.mark.parametrize("command", ["draw", "export"])
@pytest.mark.parametrize("where", ["parent_is_file", "is_directory"])
def test_output_files_that_cannot_be_written_fail_before_any_work(cwd, capsys, command, where):
    suffix = ".dot" if command == "draw" else ".onnx"
    if where == "parent_is_file":
        target = f"model.py/out{suffix}"
    else:
        (cwd / f"dir{suffix}").mkdir()
        target = f"dir{suffix}"
    argv = ["draw", "spec.yaml", "-o", target] if command == "draw" else ["export", "spec.yaml", "--random-init", target]
    code, err = run(argv, capsys)
    assert code == 2 and "Traceback" not in err, err
    assert ("is a file" in err) if where == "parent_is_file" else ("existing directory" in err)
    assert "onnx.checker" not in capsys.readouterr().out


@pytest.mark.parametrize("out", ["model.py", ".", "victim"])
def test_train_out_must_be_a_run_directory(cwd, capsys, out):
    (cwd / "victim").mkdir()
    (cwd / "victim" / "notes.txt").write_text("mine")
    before = snapshot(cwd)
    code, err = run(["train", "spec.yaml", f"train.out={out}"], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert "run directory" in err
    assert snapshot(cwd) == before


def test_probe_out_and_apply_target_are_checked_before_probing(cwd, capsys):
    code, err = run(["probe", "spec.yaml", "--out", "model.py"], capsys)
    assert code == 2 and "is a file" in err
    code, err = run(["probe", "spec.yaml", "--apply", "-o", "model.py/new.yaml"], capsys)
    assert code == 2 and "is a file" in err
    assert not (cwd / "build").exists() or not any((cwd / "build").rglob("probe.json"))


def test_no_path_is_built_from_a_name_with_a_nul(cwd, capsys):
    code, err = run(["draw", "spec.yaml", "-o", "a\0b.dot"], capsys)
    assert code == 2 and "NUL" in err


def test_a_spec_whose_file_name_is_not_utf8_compiles_and_is_found_again(cwd, capsys):
    name = os.fsdecode(b"sp\xffec.yaml")
    (cwd / name).write_text(MINI)
    assert run(["compile", name], capsys)[0] == 0
    code, err = run(["draw", "-o", "g.dot"], capsys)  # build.json names it: the same file is read back
    assert code == 0, err


@pytest.mark.parametrize("argv", [["train", "spec.yaml", "train.device=mps"], ["train", "spec.yaml", "train.device=cuda:7"],
                                  ["train", "spec.yaml", "train.device=cuda:99999999999999999999"],
                                  ["probe", "spec.yaml", "--device", "mps"], ["probe", "spec.yaml", "--device", "cuda:7"],
                                  ["probe", "spec.yaml", "--device", "cuda:99999999999999999999"],
                                  ["probe", "spec.yaml", "--device", "tpu"]])
def test_a_device_this_machine_lacks_is_a_clear_error(cwd, capsys, argv):
    import torch

    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has an accelerator")
    code, err = run(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "device" in err


@pytest.mark.parametrize("out", ["../x", "a/../../x", "..", ""])
def test_train_out_may_not_climb_out(cwd, capsys, out):
    code, err = run(["train", "spec.yaml", f"train.out={out}"], capsys)
    assert code == 2 and "train.out" in err, err
    assert not (cwd.parent / "x").exists()
