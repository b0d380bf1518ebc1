"""The build directory after a compile that changes the graph: what draw, export and probe wrote there for the
previous graph is removed and named; nothing is removed when the graph is the same."""
from __future__ import annotations

import json

import pytest

from netspec.cli import main
from netspec.compiler import compile_spec
from netspec.compiler.artifacts import BUILD_FILES, DERIVED_SUFFIXES, write_build
from netspec.compiler.summary import summarise
from conftest import WITH_BRANCH, write

DERIVED = [f"graph{s}" for s in DERIVED_SUFFIXES if f"graph{s}" not in BUILD_FILES] + ["old.dot"] + ["model.onnx", "exit_aux.onnx", "model.onnx.data"]
KEPT = ["notes.txt", "weights.pt", "probe_old"]  # not made from the graph by netspec, or not known as such


def _build(tmp_path, text: str) -> list[str]:
    spec = write(tmp_path, text)
    compiled = compile_spec(spec)
    return write_build(compiled, [], summarise(compiled.network), tmp_path / "build" / "mini")


def _fill(out, names) -> None:
    for name in names:
        (out / name).write_text("x")
    (out / "probe").mkdir()
    (out / "probe" / "probe.json").write_text("{}")
    (out / "probe_old").mkdir()


CHANGES = {  # edits that change the graph
    "branch_moved": ("from: relu1", "from: conv1"),
    "width": ("out: 4", "out: 5"),
    "loss_weight": ("weight: 0.3", "weight: 0.5"),
    "node_added": ("  - {name: fc, op: fc, out: 3}\nbranches", "  - {name: r2, op: relu}\n  - {name: fc, op: fc, out: 3}\nbranches"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_files_of_the_previous_graph_are_removed(tmp_path, change):
    assert _build(tmp_path, WITH_BRANCH) == []
    out = tmp_path / "build" / "mini"
    _fill(out, DERIVED + KEPT[:2])
    old, new = CHANGES[change]
    assert old in WITH_BRANCH
    removed = _build(tmp_path, WITH_BRANCH.replace(old, new, 1))
    assert sorted(removed) == sorted(DERIVED + ["probe/"])
    assert sorted(p.name for p in out.iterdir()) == sorted([*BUILD_FILES, *KEPT])


@pytest.mark.parametrize("change", ["train.epochs", "data", "description", "same"])
def test_nothing_is_removed_when_the_graph_is_the_same(tmp_path, change):
    _build(tmp_path, WITH_BRANCH)
    out = tmp_path / "build" / "mini"
    _fill(out, DERIVED)
    extra = {"train.epochs": "train: {epochs: 3}\n", "data": "data: {train_limit: 10}\n",
             "description": "description: changed\n", "same": ""}[change]
    assert _build(tmp_path, WITH_BRANCH + extra) == []
    assert all((out / name).exists() for name in DERIVED)


def test_a_directory_without_a_previous_build_is_left_alone(tmp_path):
    out = tmp_path / "build" / "mini"
    out.mkdir(parents=True)
    (out / "graph.svg").write_text("x")  # drawn before any compile: which graph it shows is unknown
    assert _build(tmp_path, WITH_BRANCH) == [] and (out / "graph.svg").exists()


def test_a_damaged_graph_json_counts_as_another_graph(tmp_path):
    _build(tmp_path, WITH_BRANCH)
    out = tmp_path / "build" / "mini"
    (out / "graph.svg").write_text("x")
    (out / "graph.json").write_bytes(b"\xff\xfe")
    assert _build(tmp_path, WITH_BRANCH) == ["graph.svg"]
    assert json.loads((out / "graph.json").read_text())["heads"]


def test_compile_names_what_it_removed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = write(tmp_path, WITH_BRANCH)
    assert main(["compile", str(spec)]) == 0
    assert main(["draw"]) == 0
    assert main(["compile", str(spec), "branches.aux.from=conv1"]) == 0
    out = capsys.readouterr().out
    assert "removed graph.svg from build/mini/: made from the previous graph" in out
    assert main(["draw"]) == 0
    assert main(["compile", str(spec), "branches.aux.from=relu1", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out[captured.out.index("{"):]) and "removed graph.svg" in captured.err
