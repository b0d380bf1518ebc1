"""What netspec prints: counts with their noun in the right number; the TensorBoard writer (an extra), one line
when it is asked for and missing, and no curve of a counter against itself."""
from __future__ import annotations

import io
import sys

import pytest

from netspec.compiler import analyse
from netspec.compiler.summary import format_summary, summarise
from netspec.errors import plural
from netspec.runtime.metrics import TensorBoard
from conftest import MINI, write


@pytest.mark.parametrize("count,noun,nouns,text", [
    (0, "epoch", "", "0 epochs"), (1, "epoch", "", "1 epoch"), (2, "step", "", "2 steps"), (64, "step", "", "64 steps"),
    (1000, "file", "", "1000 files"), (1, "class", "classes", "1 class"), (3, "class", "classes", "3 classes"),
])
def test_plural(count, noun, nouns, text):
    assert plural(count, noun, nouns) == text


SYNERGY = MINI + """\
branches:
  aux:
    from: relu1
    nodes: [{name: fc, op: fc, out: 3}]
losses:
  main: {head: main}
  aux: {head: aux, weight: 0.3}
  s: {type: synergy, direction: %s}
"""


@pytest.mark.parametrize("direction,pairs", [("top_down", "1 pair "), ("bottom_up", "1 pair "), ("bidirectional", "2 pairs")])
def test_the_summary_counts_in_words(tmp_path, direction, pairs):
    text = format_summary(summarise(analyse(write(tmp_path, SYNERGY % direction))[1]))
    assert pairs in text and " 1 pairs" not in text


@pytest.mark.parametrize("nodes", [1, 2])
def test_the_summary_says_1_node(tmp_path, nodes):
    text = MINI.replace("  - {name: conv1, op: conv, out: 4, kernel: 3, pad: 1}\n  - {name: relu1, op: relu}\n",
                        "  - {name: relu1, op: relu}\n" if nodes == 2 else "")
    lines = format_summary(summarise(analyse(write(tmp_path, text))[1])).splitlines()
    graph = [line for line in lines if line.startswith("training graph")][0]
    assert plural(nodes, "node") in graph and "1 nodes" not in graph


class _Writer:
    def __init__(self):
        self.tags = []

    def add_scalar(self, tag, value, step):
        self.tags.append(tag)


@pytest.mark.parametrize("group", ["epoch", "step"])
def test_no_counter_is_drawn_against_itself(tmp_path, group):
    board = TensorBoard(tmp_path, wanted=False)
    board.writer = _Writer()
    board.scalars({"epoch": 1.5, "step": 64, "loss": 0.5, "lr": 0.1, "name": "x"}, 64, group)
    assert f"{group}/{group}" not in board.writer.tags and f"{group}/step" not in board.writer.tags
    assert f"{group}/loss" in board.writer.tags and f"{group}/lr" in board.writer.tags
    assert ("step/epoch" in board.writer.tags) is (group == "step")  # the fractional epoch is a curve of its own


@pytest.mark.parametrize("wanted,says", [(True, True), (None, False), (False, False)])
def test_a_missing_tensorboard_is_one_line_when_asked_for(tmp_path, monkeypatch, wanted, says):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were not installed
    stream = io.StringIO()
    board = TensorBoard(tmp_path, wanted=wanted, stream=stream)
    assert board.writer is None
    text = stream.getvalue()
    assert (text.count("\n") == 1 and "pip install 'netspec[tensorboard]'" in text) if says else text == ""
    board.scalars({"loss": 1.0}, 1, "epoch")
    board.close()


def test_the_extra_is_declared():
    import tomllib

    from conftest import ROOT

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("tensorboard") for req in extras["tensorboard"])
