"""Pass 3, expand: blocks, repeat and branches unrolled to flat, qualified nodes; `from:` resolved."""
from __future__ import annotations

from netspec.compiler.expand import expand
from netspec.compiler.parse import parse
from netspec.compiler.validate import validate
from conftest import MINI, WITH_BRANCH, error_of

RESNETISH = """\
name: res
vars: {w: 4}
input: {shape: [1, 8, 8]}
classes: 3
blocks:
  basic:
    params: {out: null, stride: 1}
    nodes:
      - {name: conv1, op: conv, out: '${out}', kernel: 3, pad: 1, stride: '${stride}'}
      - {name: relu1, op: relu}
      - {name: conv2, op: conv, out: '${out}', kernel: 3, pad: 1}
      - {name: short, op: shortcut, out: '${out}', stride: '${stride}', from: input}
      - {name: sum, op: add, from: [conv2, short]}
nodes:
  - {name: stem, op: conv, out: '${w}', kernel: 3, pad: 1}
  - {name: stage1, block: basic, out: '${w}', repeat: 2}
  - {name: stage2, block: basic, out: '${2 * w}', repeat: 2, first: {stride: 2}}
  - {name: gap, op: gap}
  - {name: fc, op: fc, out: '${classes}'}
branches:
  aux:
    from: stage1
    nodes:
      - {name: conv, op: conv, out: 4, kernel: 1}
      - {name: fc, op: fc, out: 3, from: [conv]}
"""


def flat(write_spec, text, overrides=()):
    raw, context = parse(write_spec(text), overrides)
    return expand(validate(raw), context)


def test_plain_chain_defaults_from_to_previous(write_spec):
    ex = flat(write_spec, MINI)
    assert [(n.name, n.inputs) for n in ex.nodes] == [("conv1", ("data",)), ("relu1", ("conv1",)), ("fc", ("relu1",))]
    assert ex.heads == {"main": "fc"} and ex.input_name == "data"


def test_blocks_repeat_first_and_qualified_names(write_spec):
    ex = flat(write_spec, RESNETISH)
    nodes = {n.name: n for n in ex.nodes}
    assert [n for n in nodes if n.startswith("stage2.")] == [
        f"stage2.{i}.{part}" for i in range(2) for part in ("conv1", "relu1", "conv2", "short", "sum")]
    # `from: input` is the block's input: the previous copy's output, or the node before the block
    assert nodes["stage1.0.short"].inputs == ("stem",) and nodes["stage1.1.short"].inputs == ("stage1.0.sum",)
    assert nodes["stage1.0.sum"].inputs == ("stage1.0.conv2", "stage1.0.short")
    # params: `first:` only for copy 0, expressions with vars
    assert nodes["stage2.0.conv1"].op.stride == 2 and nodes["stage2.1.conv1"].op.stride == 1
    assert nodes["stage2.1.conv1"].op.out == 8 and nodes["stage1.0.conv1"].op.out == 4
    assert "in stage2.1" in nodes["stage2.1.conv1"].via


def test_branch_names_are_prefixed_and_local_names_shadow(write_spec):
    ex = flat(write_spec, RESNETISH)
    nodes = {n.name: n for n in ex.nodes}
    # a branch attaches after a block instance = the block's output
    assert nodes["aux.conv"].inputs == ("stage1.1.sum",) and nodes["aux.conv"].branch == "aux"
    # `fc` inside the branch is the branch's own, not the backbone's fc
    assert nodes["aux.fc"].inputs == ("aux.conv",)
    assert ex.heads == {"main": "fc", "aux": "aux.fc"}
    assert all(n.branch is None for n in ex.nodes if not n.name.startswith("aux."))


def test_moving_a_branch_changes_only_its_attachment(write_spec):
    before = flat(write_spec, WITH_BRANCH)
    after = flat(write_spec, WITH_BRANCH, ["branches.aux.from=conv1"])
    assert [n.name for n in before.nodes] == [n.name for n in after.nodes]
    changed = {n.name for n, m in zip(before.nodes, after.nodes) if n.inputs != m.inputs}
    assert changed == {"aux.pool"} and after.nodes[3].inputs == ("conv1",)


def test_output_picks_the_main_head(write_spec):
    ex = flat(write_spec, MINI.replace("  - {name: fc", "  - {name: gap, op: gap}\n  - {name: fc") + "output: gap\n")
    assert ex.heads["main"] == "gap"


def test_block_reference_to_a_backbone_node_and_index(write_spec):
    text = MINI.replace("nodes:\n", "blocks:\n  tap:\n    nodes:\n      - {name: c, op: conv, out: '${index + 1}', "
                                      "kernel: 1, from: conv1}\nnodes:\n", 1)
    text = text.replace("  - {name: fc", "  - {name: t, block: tap, repeat: 2}\n  - {name: fc")
    ex = flat(write_spec, text)
    nodes = {n.name: n for n in ex.nodes}
    assert nodes["t.0.c"].inputs == ("conv1",) and nodes["t.1.c"].op.out == 2


def test_expand_errors_name_the_line(write_spec):
    text = MINI.replace("{name: relu1, op: relu}", "{name: relu1, op: relu, from: conv_1}")
    err = error_of(flat, write_spec, text)
    assert "node 'relu1' takes input from 'conv_1', which does not exist" in err.what
    assert err.fix == "did you mean 'conv1'?" and err.pos.line == 6
