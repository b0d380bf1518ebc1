"""Issue 10, class 5: what train and predict rely on of the heads, checked at compile time at the offending line.
Generated: every head (main, a branch) × every way of ending wrong (width ≠ classes, a feature map, a vector of the
wrong width feeding a synergy loss), and backbone/branch nodes reading other branches."""
from __future__ import annotations

import pytest

from netspec.compiler import analyse
from conftest import error_of, marked_line, write

HEAD = """\
name: heads
input: {shape: [1, 8, 8]}
classes: 3
nodes:
  - {name: conv1, op: conv, out: 4, kernel: 3, pad: 1}
  - {name: relu1, op: relu}
  - {name: gap, op: gap}
  - MAIN
branches:
  aux:
    from: relu1
    nodes:
      - {name: pool, op: maxpool, kernel: 2}
      - AUX
losses:
  main: {head: main}
  aux: {head: aux, weight: 0.3}
SYNERGY"""
GOOD = "{name: fc, op: fc, out: 3}"
BAD_ENDS = {
    "too_wide": ("{name: fc, op: fc, out: 4}", "gives 4 scores but the spec has classes: 3"),
    "too_narrow": ("{name: fc, op: fc, out: 2}", "gives 2 scores but the spec has classes: 3"),
    "feature_map": ("{name: conv, op: conv, out: 3, kernel: 1}", "not a vector of 3 class scores"),
    "flattened_map": ("{name: flat, op: flatten}", "scores but the spec has classes: 3"),
}


@pytest.mark.parametrize("synergy", ["", "  syn: {type: synergy}\n"], ids=["plain", "synergy"])
@pytest.mark.parametrize("end", BAD_ENDS)
@pytest.mark.parametrize("head", ["main", "aux"])
def test_every_head_ends_in_class_scores(tmp_path, head, end, synergy):
    bad, words = BAD_ENDS[end]
    if head == "main" and end == "feature_map":
        bad = "{name: conv, op: identity}"  # after the gap: a (4,) vector
        words = "gives 4 scores"
    text = HEAD.replace("MAIN", (bad + "  # <-") if head == "main" else GOOD)
    text = text.replace("AUX", (bad + "  # <-") if head == "aux" else GOOD).replace("SYNERGY", synergy)
    path = write(tmp_path, text)
    err = error_of(analyse, path)
    assert words in err.what, str(err)
    assert err.pos.line == marked_line(text), str(err)
    assert ("synergy" in err.what) == (bool(synergy) and "scores but" in err.what)


def test_good_heads_compile(tmp_path):
    text = HEAD.replace("MAIN", GOOD).replace("AUX", GOOD).replace("SYNERGY", "  syn: {type: synergy}\n")
    assert set(analyse(write(tmp_path, text))[1].heads) == {"main", "aux"}


@pytest.mark.parametrize("reader", ["backbone", "branch"])
def test_nothing_reads_a_branch_but_the_branch(tmp_path, reader):
    text = HEAD.replace("AUX", GOOD).replace("SYNERGY", "")
    if reader == "backbone":
        text = text.replace("  - MAIN", "  - {name: fc, op: fc, out: 3, from: aux.pool}  # <-")
    else:
        text = text.replace("MAIN", GOOD)
        text += "  b2: {head: b2, weight: 0.3}\n"
        text = text.replace("losses:", "  b2:\n    from: relu1\n    nodes:\n"
                            "      - {name: fc, op: fc, out: 3, from: aux.pool}  # <-\nlosses:")
    path = write(tmp_path, text)
    err = error_of(analyse, path)
    assert "branch 'aux'" in err.what, str(err)
    assert err.pos.line == marked_line(text), str(err)
