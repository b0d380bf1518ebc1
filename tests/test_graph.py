"""Passes 4 and 5: the network (typed nodes, heads, data edges, losses on heads) and its checks."""
from __future__ import annotations

import networkx as nx
import pytest

from netspec.compiler.expand import expand
from netspec.compiler.graph import build_graph, check_graph, head_depths
from netspec.compiler.ir import Node, loss_id
from netspec.compiler.parse import parse
from netspec.compiler.validate import validate
from conftest import MINI, WITH_BRANCH, error_of, marked_line

# Heads at three depths: a1 after conv1, a2 after conv2, main at the end.
THREE_HEADS = """\
name: heads
input: {shape: [1, 8, 8]}
classes: 3
nodes:
  - {name: conv1, op: conv, out: 4, kernel: 3, pad: 1}
  - {name: conv2, op: conv, out: 4, kernel: 3, pad: 1}
  - {name: conv3, op: conv, out: 4, kernel: 3, pad: 1}
  - {name: fc, op: fc, out: 3}
branches:
  a1: {from: conv1, nodes: [{name: fc, op: fc, out: 3}]}
  a2: {from: conv2, nodes: [{name: fc, op: fc, out: 3}]}
losses:
  main: {head: main}
  a1: {head: a1}
  a2: {head: a2}
  syn: {type: synergy, direction: DIRECTION, beta: 0.5}
"""


def graph(write_spec, text, check=True):
    raw, context = parse(write_spec(text))
    spec = validate(raw)
    g = build_graph(spec, expand(spec, context))
    return check_graph(g) if check else g


def test_nodes_edges_and_loss_nodes(write_spec):
    g = graph(write_spec, WITH_BRANCH)
    assert g.input.name == "data" and isinstance(g.nodes["aux.fc"], Node) and g.nodes["aux.fc"].branch == "aux"
    assert g.nodes["aux.pool"].inputs == ("relu1",) and g.data.has_edge("relu1", "aux.pool")
    losses = g.loss_graph()
    assert losses.has_edge("fc", loss_id("main")) and losses.has_edge("aux.fc", loss_id("aux"))
    assert g.heads == {"main": "fc", "aux": "aux.fc"}
    assert loss_id("main") not in g.data
    with pytest.raises(Exception):  # the IR is frozen: passes return new records
        g.nodes["fc"].inputs = ()


def test_nodes_are_in_topological_order_following_the_spec(write_spec):
    g = graph(write_spec, WITH_BRANCH)
    order = [g.input.name, *g.nodes]
    assert order == ["data", "conv1", "relu1", "fc", "aux.pool", "aux.fc"]
    for u, v in g.data.edges:
        assert order.index(u) < order.index(v)


def test_a_forward_from_is_sorted_topologically(write_spec):
    text = MINI.replace("  - {name: fc, op: fc, out: 3}", "  - {name: fc, op: fc, out: 3, from: relu2}\n"
                        "  - {name: relu2, op: relu, from: relu1}").replace("nodes:", "output: fc\nnodes:")
    g = graph(write_spec, text)
    assert list(g.nodes) == ["conv1", "relu1", "relu2", "fc"]


def test_head_depths_count_weight_layers(write_spec):
    g = graph(write_spec, THREE_HEADS.replace("DIRECTION", "bidirectional"))
    weighted = lambda head: sum(g.nodes[n].op.weighted for n in g.ancestry(head))  # noqa: E731
    assert head_depths(g) == g.depth == {h: weighted(h) for h in ("main", "a1", "a2")}
    assert g.depth["a1"] < g.depth["a2"] < g.depth["main"]


@pytest.mark.parametrize("direction, expected", [
    ("top_down", [("a2", "a1"), ("main", "a1"), ("main", "a2")]),
    ("bottom_up", [("a1", "a2"), ("a1", "main"), ("a2", "main")]),
])
def test_synergy_pairs(write_spec, direction, expected):
    g = graph(write_spec, THREE_HEADS.replace("DIRECTION", direction))
    assert sorted(g.synergy_pairs(g.spec.losses["syn"])) == expected
    # the synergy loss node is fed by every head
    assert {v for v, _ in g.loss_graph().in_edges(loss_id("syn"))} == {"fc", "a1.fc", "a2.fc"}


def test_bidirectional_is_both(write_spec):
    g = graph(write_spec, THREE_HEADS.replace("DIRECTION", "bidirectional"))
    pairs = g.synergy_pairs(g.spec.losses["syn"])
    assert len(pairs) == 6 and {(n, m) for m, n in pairs} == set(pairs)


def test_exit_ancestry_is_what_an_exit_needs(write_spec):
    g = graph(write_spec, WITH_BRANCH)
    assert g.ancestry("aux") == {"conv1", "relu1", "aux.pool", "aux.fc"}
    assert g.ancestry("main") == {"conv1", "relu1", "fc"}
    assert "did you mean 'aux'?" in error_of(g.ancestry, "axu").fix


def test_cycle_is_shown_as_its_path(write_spec):
    text = MINI.replace("{name: conv1, op: conv, out: 4, kernel: 3, pad: 1}",
                        "{name: conv1, op: conv, out: 4, kernel: 3, pad: 1, from: relu1}  # <-")
    err = error_of(graph, write_spec, text)
    assert err.what.startswith("the graph has a cycle: ")
    path = err.what.removeprefix("the graph has a cycle: ").split(" → ")
    assert path[0] == path[-1] and set(path) == {"conv1", "relu1"}
    assert err.pos.line in (marked_line(text), marked_line(text) + 1)


def test_arity(write_spec):
    text = MINI.replace("{name: relu1, op: relu}", "{name: relu1, op: add}  # <-")
    err = error_of(graph, write_spec, text)
    assert err.what == "node 'relu1' (add) has 1 input(s), needs at least 2" and err.pos.line == marked_line(text)
    assert "from: [a, b]" in err.fix


def test_unused_node(write_spec):
    text = MINI.replace("  - {name: fc, op: fc, out: 3}",
                        "  - {name: x, op: relu, from: conv1}  # <-\n  - {name: fc, op: fc, out: 3, from: relu1}")
    err = error_of(graph, write_spec, text)
    assert err.what == "the output of node 'x' is used by no head" and err.pos.line == marked_line(text)


def test_loss_graph_is_a_dag_with_losses_as_sinks(write_spec):
    g = graph(write_spec, THREE_HEADS.replace("DIRECTION", "bidirectional"))
    losses = g.loss_graph()
    assert nx.is_directed_acyclic_graph(losses)
    assert all(losses.out_degree(loss_id(name)) == 0 for name in g.spec.losses)
