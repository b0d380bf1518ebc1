"""Passes 4 and 5: the networkx graph (ops, heads, loss nodes, loss edges) and its checks."""
from __future__ import annotations

import networkx as nx
import pytest

from compiler.expand import expand
from compiler.graph import (build_graph, check_graph, data_graph, exit_ancestry, head_depths, in_order, loss_id,
                            synergy_pairs)
from compiler.parse import parse
from compiler.validate import validate
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
    kinds = {n: k for n, k in g.nodes(data="kind")}
    assert kinds["data"] == "input" and kinds["aux.fc"] == "op"
    assert {n for n, k in kinds.items() if k == "loss"} == {loss_id("main"), loss_id("aux")}
    assert g.edges["fc", loss_id("main")] == {"kind": "loss", "head": "main"}
    assert g.edges["aux.fc", loss_id("aux")]["head"] == "aux"
    assert g.edges["relu1", "aux.pool"] == {"kind": "data", "index": 0}
    assert g.graph["heads"] == {"main": "fc", "aux": "aux.fc"}
    assert loss_id("main") not in data_graph(g)


def test_in_order_is_topological_and_follows_the_spec(write_spec):
    g = graph(write_spec, WITH_BRANCH)
    order = in_order(g)
    assert order[0] == "data" and order.index("relu1") < order.index("aux.pool")
    assert order == ["data", "conv1", "relu1", "fc", "aux.pool", "aux.fc"]
    for u, v in data_graph(g).edges:
        assert order.index(u) < order.index(v)


def test_head_depths_count_weight_layers(write_spec):
    g = graph(write_spec, THREE_HEADS.replace("DIRECTION", "bidirectional"))
    weighted = lambda head: sum(g.nodes[n]["op"].weighted for n in exit_ancestry(g, head))  # noqa: E731
    assert head_depths(g) == g.graph["depth"] == {h: weighted(h) for h in ("main", "a1", "a2")}
    assert g.graph["depth"]["a1"] < g.graph["depth"]["a2"] < g.graph["depth"]["main"]


@pytest.mark.parametrize("direction, expected", [
    ("top_down", [("a2", "a1"), ("main", "a1"), ("main", "a2")]),
    ("bottom_up", [("a1", "a2"), ("a1", "main"), ("a2", "main")]),
])
def test_synergy_pairs(write_spec, direction, expected):
    g = graph(write_spec, THREE_HEADS.replace("DIRECTION", direction))
    assert sorted(synergy_pairs(g.graph["spec"].losses["syn"], g)) == expected
    # the synergy loss node is fed by every head
    assert {v for v, _ in g.in_edges(loss_id("syn"))} == {"fc", "a1.fc", "a2.fc"}


def test_bidirectional_is_both(write_spec):
    g = graph(write_spec, THREE_HEADS.replace("DIRECTION", "bidirectional"))
    pairs = synergy_pairs(g.graph["spec"].losses["syn"], g)
    assert len(pairs) == 6 and {(n, m) for m, n in pairs} == set(pairs)


def test_exit_ancestry_is_what_an_exit_needs(write_spec):
    g = graph(write_spec, WITH_BRANCH)
    assert exit_ancestry(g, "aux") == {"conv1", "relu1", "aux.pool", "aux.fc"}
    assert exit_ancestry(g, "main") == {"conv1", "relu1", "fc"}
    assert "did you mean 'aux'?" in error_of(exit_ancestry, g, "axu").fix


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
    assert nx.is_directed_acyclic_graph(g)
    assert all(g.out_degree(n) == 0 for n, k in g.nodes(data="kind") if k == "loss")
