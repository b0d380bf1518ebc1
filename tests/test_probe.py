"""Tests of `netspec probe`: the placement rule on synthetic tables, and the command on a tiny spec and data set."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from netspec.compiler import compile_spec
from netspec.cli import main
from netspec.runtime.placement import attach_points, threshold_ladder
from netspec.runtime.spec_edit import add_entries, set_name

TINY = """\
# a tiny net for the probe tests
name: tiny
input: {shape: [1, 8, 8]}
classes: 3
init: {weight: {type: gaussian, std: 0.01}, bias: 0}

nodes:
  - {name: conv1, op: conv, out: 4, kernel: 3, pad: 1}
  - {name: relu1, op: relu}
  - {name: conv2, op: conv, out: 4, kernel: 3, pad: 1}
  - {name: relu2, op: relu}
  - {name: pool2, op: maxpool, kernel: 2, stride: 2}
  - {name: conv3, op: conv, out: 8, kernel: 3, pad: 1}
  - {name: relu3, op: relu}
  - {name: fc4, op: fc, out: "${classes}"}

branches:
  aux1:   # the template
    from: relu1
    nodes:
      - {name: pool, op: avgpool, kernel: 2, stride: 2}
      - {name: fc, op: fc, out: "${classes}"}
# a comment between the sections

losses:
  main: {type: cross_entropy, head: main}
  aux1: {type: cross_entropy, head: aux1, weight: 0.3, schedule: cnds}

data: {source: npz, path: DATA}
train: {batch_size: 16, optimizer: {type: sgd, lr: 0.1}}
"""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The nets here are tiny: more threads only add synchronisation (badly so on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "data.npz"
    np.savez(path, x_train=rng.integers(0, 256, (64, 8, 8), dtype=np.uint8), y_train=rng.integers(0, 3, 64, dtype=np.uint8),
             x_test=rng.integers(0, 256, (8, 8, 8), dtype=np.uint8), y_test=rng.integers(0, 3, 8, dtype=np.uint8))
    return path


@pytest.fixture
def spec(tmp_path: Path, data: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.replace("DATA", str(data)))
    return path


@pytest.fixture(scope="module")
def first_rung(data: Path, tmp_path_factory) -> tuple[str, str]:
    """A --threshold that puts the first attach point at the top rung of the ladder, and that layer."""
    path = tmp_path_factory.mktemp("rung") / "tiny.yaml"
    path.write_text(TINY.replace("DATA", str(data)))
    assert probe(path) == 0
    table = {name: sum(v) / len(v) for name, v in report(path)["gradients"].items()}
    name, low, high = threshold_ladder(table)[0]
    return str(math.sqrt(low * high)), name


def probe(spec: Path, *args: str) -> int:
    return main(["probe", str(spec), "--iters", "4", "--out", str(spec.parent / "out"), *args])


def report(spec: Path) -> dict:
    return json.loads((spec.parent / "out" / "probe.json").read_text())


# --- the rule --------------------------------------------------------------------------------

def test_first_point_is_the_highest_layer_below_the_threshold():
    table = {"conv1": 1e-9, "conv2": 5e-9, "conv3": 5e-8, "conv4": 2e-7, "fc": 1e-3}
    assert attach_points(table, 1e-7) == ["conv3"]
    assert attach_points(table, 1e-7, max_points=1) == ["conv3"]
    assert attach_points(table, 1e-10) == []


def test_further_points_where_the_gradient_vanishes_again():
    # a decade per layer, 3e-4 at conv10, 1e-3 at the top: with threshold 2e-5 the default decay is 50
    table = {f"conv{i}": 3 * 10.0 ** -(14 - i) for i in range(1, 11)} | {"fc": 1e-3}
    assert attach_points(table, 2e-5) == ["conv8", "conv6", "conv4", "conv2"]  # 3e-6, then < 6e-8, < 6e-10, < 6e-12
    assert attach_points(table, 2e-5, decay=1e4) == ["conv8", "conv3"]
    assert attach_points(table, 2e-5, max_points=2) == ["conv8", "conv6"]


def test_nothing_when_the_top_itself_vanished():
    assert attach_points({"conv1": 1e-12, "fc": 1e-8}, 1e-7) == []


def test_threshold_ladder_gives_the_threshold_range_of_each_first_point():
    table = {"conv1": 1e-4, "conv2": 2e-5, "conv3": 3e-5, "conv4": 1e-4, "fc": 1e-2}
    ladder = threshold_ladder(table)
    assert ladder == [("conv4", 1e-4, 1e-2), ("conv3", 3e-5, 1e-4), ("conv2", 2e-5, 3e-5)]
    for name, low, high in ladder:
        assert attach_points(table, math.sqrt(low * high), max_points=1) == [name]


# --- editing the spec text -------------------------------------------------------------------

BRANCH = {"aux9": {"from": "relu2", "nodes": [{"name": "fc", "op": "fc", "out": 3}]}}


def test_add_entries_keeps_comments_and_layout():
    text = "a: 1  # one\nbranches:\n  x:\n    from: r\n    nodes:\n      - {op: relu}  # end\n\n# note\nlosses: {}\n"
    out = add_entries(text, "branches", BRANCH, {})
    assert out.startswith(text[:text.index("\n\n")])
    assert "  aux9:\n    from: relu2\n    nodes:\n      - {name: fc, op: fc, out: 3}\n\n# note\n" in out
    out = add_entries(out, "losses", {"aux9": {"weight": 0.3}}, {})
    assert out.endswith("losses: {aux9: {weight: 0.3}}\n")
    assert add_entries("a: 1", "branches", BRANCH, {}).startswith("a: 1\n\nbranches:\n  aux9:\n")


def test_add_entries_to_a_null_that_deletes_the_base_keeps_deleting():
    out = add_entries("extends: base.yaml\nbranches: null  # none\nx: 1\n", "branches", BRANCH, {"branches": {"aux1": {}}})
    assert out == ("extends: base.yaml\nbranches:\n  aux1: null\n  aux9:\n    from: relu2\n    nodes:\n"
                   "      - {name: fc, op: fc, out: 3}  # none\nx: 1\n")
    assert add_entries("branches:\n", "branches", BRANCH, {}).startswith("branches:\n  aux9:\n")


def test_set_name():
    assert set_name("# c\nname: a  # n\nx: 1\n", "b") == "# c\nname: b  # n\nx: 1\n"
    assert set_name("# c\nextends: a.yaml\n", "b") == "# c\nname: b\nextends: a.yaml\n"


# --- the command -----------------------------------------------------------------------------

def test_probe_prints_the_table_writes_plots_and_is_deterministic(spec: Path, capsys):
    assert probe(spec, "--with-branches") == 0
    first, text = report(spec), capsys.readouterr().out
    assert "conv1" in text and "with branches" in text and "ratio" in text
    for stem in ("probe_gradients", "probe_branches"):
        for suffix in (".png", ".svg"):
            assert (spec.parent / "out" / (stem + suffix)).stat().st_size > 0
    assert first["layers"] == ["conv1", "conv2", "conv3", "fc4"]
    assert all(len(v) == 4 for v in first["gradients"].values())
    assert first["with_branches"]["conv1"] != first["gradients"]["conv1"]  # aux1 after relu1 lifts conv1
    assert first["with_branches"]["conv3"][0] == first["gradients"]["conv3"][0]  # not below a branch: same start
    assert probe(spec) == 0  # again, without the branch run: the same numbers, the same table
    assert report(spec)["gradients"] == first["gradients"]
    rows = capsys.readouterr().out.splitlines()[2:7]
    assert all(line.startswith(row) for line, row in zip(text.splitlines()[2:7], rows))


def test_apply_writes_a_spec_that_compiles_with_the_branch_where_suggested(spec: Path, first_rung, capsys):
    threshold, layer = first_rung
    original = spec.read_text()
    assert probe(spec, "--threshold", threshold, "--max-points", "1", "--apply") == 0
    point = report(spec)["points"][0]
    assert point["layer"] == layer and point["from"] == {"conv1": "relu1", "conv2": "relu2", "conv3": "relu3"}[layer]
    new = spec.with_name("tiny_probed.yaml")
    assert spec.read_text() == original and "# a comment between the sections" in new.read_text()
    compiled = compile_spec(new)
    assert compiled.spec.name == "tiny_probed"  # its own build directory
    if point["from"] == "relu1":  # aux1 is there already
        assert "nothing to do" in capsys.readouterr().out
        return
    assert set(compiled.heads) == {"main", "aux1", "aux2"}
    assert compiled.network.nodes["aux2.pool"].inputs == (point["from"],)
    loss = compiled.spec.losses["aux2"]
    assert (loss.head, loss.weight, loss.schedule.type) == ("aux2", 0.3, "cnds")
    # never overwrites; --in-place keeps a backup
    assert probe(spec, "--threshold", threshold, "--apply") == 2
    assert "never overwrites" in capsys.readouterr().err
    assert probe(spec, "--threshold", threshold, "--max-points", "1", "--apply", "--in-place") == 0
    assert spec.with_name("tiny.yaml.bak").read_text() == original
    compiled = compile_spec(spec)
    assert set(compiled.heads) == {"main", "aux1", "aux2"} and compiled.spec.name == "tiny"


def test_apply_to_a_spec_whose_branches_are_deleted_uses_the_default_head(spec: Path, first_rung, capsys):
    threshold, _ = first_rung
    plain = spec.with_name("plain.yaml")
    plain.write_text("extends: tiny.yaml\nname: plain\nbranches: null\nlosses: {aux1: null}\n")
    assert probe(plain, "--with-branches") == 2
    assert "has no branches" in capsys.readouterr().err
    assert probe(plain, "--threshold", threshold, "--max-points", "1", "--apply") == 0
    compiled = compile_spec(plain.with_name("plain_probed.yaml"))
    assert compiled.spec.name == "plain_probed"
    assert set(compiled.heads) == {"main", "aux2"}  # aux1 stays deleted; the new one is named apart from it
    assert "aux2.conv" in compiled.network  # the CNDS head: pool, 1x1 conv, fc ...
    assert "default CNDS head" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--iters", "0"], "--iters must be positive"),
    (["--threshold", "0"], "--threshold must be positive"),
    (["--decay", "0.5"], "--decay must be greater than 1"),
    (["--init", "gausian"], "did you mean 'gaussian'"),
    (["--init", "gaussian:-1"], "the std must be positive"),
    (["--init", "kaiming:2"], "takes no value"),
    (["--in-place"], "only make sense with --apply"),
    (["--batch-size", "1000"], "fewer than one batch"),
    (["--threshold", "1e-30", "--apply"], "no attach point"),
    (["--apply", "--branch-template", "aux"], "did you mean 'aux1'"),
])
def test_bad_arguments_are_clear_errors(spec: Path, capsys, args, message):
    assert probe(spec, *args) == 2
    assert message in capsys.readouterr().err


def test_the_output_names_the_probed_init_and_warns_when_it_is_not_the_specs(spec, capsys):
    assert probe(spec) == 0  # the spec's init is the probe's default, gaussian 0.01: no warning
    out = capsys.readouterr().out
    assert "init gaussian:0.01," in out and "warning" not in out
    assert probe(spec, "init.weight=kaiming") == 0
    out = capsys.readouterr().out
    assert "warning: probed with init gaussian:0.01, but the spec initialises its weight layers with kaiming" in out
    assert probe(spec, "init.weight=kaiming", "--init", "spec") == 0
    out = capsys.readouterr().out
    assert "init kaiming," in out and "warning" not in out
