"""Passes 4 and 5: build the networkx graph (ops, heads, loss nodes, weighted loss edges) and check it."""
from __future__ import annotations

import networkx as nx

from netspec.errors import SpecError, did_you_mean
from netspec.spec import MAIN_HEAD, CrossEntropyLoss, Spec, SynergyLoss
from compiler.expand import Expanded


def loss_id(name: str) -> str:
    """Graph id of a loss node (kept apart from op names)."""
    return f"loss:{name}"


def build_graph(spec: Spec, expanded: Expanded) -> nx.DiGraph:
    """One node per op (plus the input and each loss); data edges carry the input index."""
    g = nx.DiGraph(spec=spec, input=expanded.input_name, heads=dict(expanded.heads))
    g.add_node(expanded.input_name, kind="input", branch=None, pos=spec.input.at, shape=tuple(spec.input.shape), order=0)
    for order, node in enumerate(expanded.nodes, start=1):
        g.add_node(node.name, kind="op", op=node.op, inputs=node.inputs, branch=node.branch, pos=node.pos, via=node.via,
                   order=order)
    for node in expanded.nodes:
        for index, source in enumerate(node.inputs):
            g.add_edge(source, node.name, kind="data", index=index)
    for head, node in expanded.heads.items():
        g.nodes[node].setdefault("heads", []).append(head)
    for name, loss in spec.losses.items():
        if isinstance(loss, SynergyLoss) and loss.heads == "all" and len(expanded.heads) < 2:
            raise SpecError(f"synergy loss '{name}' needs two or more heads; this spec has only 'main'",
                            "add a branch, or delete the synergy loss", loss.at)
        g.add_node(loss_id(name), kind="loss", loss=loss, name=name, branch=None, pos=loss.at)
        for head in _loss_heads(loss, expanded.heads):
            if head not in expanded.heads:
                raise SpecError(f"loss '{name}' is on head '{head}', which does not exist",
                                did_you_mean(head, expanded.heads) + f" (heads: {', '.join(expanded.heads)})", loss.at)
            g.add_edge(expanded.heads[head], loss_id(name), kind="loss", head=head)
    return g


def _loss_heads(loss, heads: dict[str, str]) -> list[str]:
    if isinstance(loss, CrossEntropyLoss):
        return [loss.head]
    return list(heads) if loss.heads == "all" else list(loss.heads)


def in_order(g: nx.DiGraph) -> list[str]:
    """Input and op nodes in topological order, ties broken by the order they are written in the spec
    (computed once per graph; passes do not change the set of op nodes)."""
    if "in_order" not in g.graph:
        data = data_graph(g)
        order = {n: g.nodes[n]["order"] for n in data}
        if all(order[u] < order[v] for u, v in data.edges):  # the usual case: written in order, no forward `from:`
            g.graph["in_order"] = sorted(data, key=order.__getitem__)
        else:
            g.graph["in_order"] = list(nx.lexicographical_topological_sort(data, key=order.__getitem__))
    return g.graph["in_order"]


def data_graph(g: nx.DiGraph) -> nx.DiGraph:
    """The graph without loss nodes: a plain copy of its structure, made once (traversals on a
    filtered view are several times slower)."""
    if "data_graph" not in g.graph:
        data = nx.DiGraph()
        data.add_nodes_from(n for n, kind in g.nodes(data="kind") if kind != "loss")
        data.add_edges_from((u, v) for u, v, kind in g.edges(data="kind") if kind == "data")
        g.graph["data_graph"] = data
    return g.graph["data_graph"]


def check_graph(g: nx.DiGraph) -> nx.DiGraph:
    """Cycles, arity, unreachable and unused nodes, heads without a loss. Records each head's depth."""
    data = data_graph(g)
    cycle = None if nx.is_directed_acyclic_graph(data) else nx.find_cycle(data)
    if cycle:
        path = " → ".join([u for u, _ in cycle] + [cycle[0][0]])
        first = cycle[0][1]
        raise SpecError(f"the graph has a cycle: {path}", "a node cannot take input from a node that depends on it; "
                        "fix one `from:` on this path", g.nodes[first]["pos"])
    for name in data.nodes:
        attrs = g.nodes[name]
        if attrs["kind"] != "op":
            continue
        low, high = attrs["op"].arity
        count = len(attrs["inputs"])
        if count < low or (high is not None and count > high):
            want = f"{low}" if low == high else f"at least {low}" if high is None else f"{low} to {high}"
            raise SpecError(f"node '{name}' ({attrs['op'].op}) has {count} input(s), needs {want}",
                            "list its inputs with from: [a, b]" if low > 1 else "give it one `from:`", attrs["pos"])
    reachable = nx.descendants(data, g.graph["input"]) | {g.graph["input"]}
    for name in data.nodes:
        if name not in reachable:
            raise SpecError(f"node '{name}' cannot be reached from the input", "connect it with `from:`", g.nodes[name]["pos"])
    head_nodes = set(g.graph["heads"].values())
    useful = set(head_nodes)
    for node in head_nodes:
        useful |= nx.ancestors(data, node)
    for name in data.nodes:
        if name not in useful:
            raise SpecError(f"the output of node '{name}' is used by no head",
                            "feed it into the network or delete it", g.nodes[name]["pos"])
    spec = g.graph["spec"]
    for head, node in g.graph["heads"].items():
        if not any(attrs["kind"] == "loss" for _, attrs in g.adj[node].items()):
            at = spec.branches[head].at if head in spec.branches else g.nodes[node]["pos"]
            raise SpecError(f"head '{head}' has no loss", f"add under losses: {head}: {{type: cross_entropy, head: {head}, "
                            "weight: 0.3}, or delete the branch", at)
    g.graph["depth"] = head_depths(g)
    return g


def head_depths(g: nx.DiGraph) -> dict[str, int]:
    """Weight layers (conv, fc) on the longest path from the input to each head (MW-BP's L_k)."""
    data = data_graph(g)
    depth: dict[str, int] = {}
    for name in in_order(g):
        attrs = g.nodes[name]
        before = max((depth[p] for p in data.predecessors(name)), default=0)
        depth[name] = before + int(attrs["kind"] == "op" and attrs["op"].weighted)
    return {head: depth[node] for head, node in g.graph["heads"].items()}


def exit_ancestry(g: nx.DiGraph, head: str) -> set[str]:
    """Every op node an exit needs: the head's node and all it depends on."""
    if head not in g.graph["heads"]:
        raise SpecError(f"there is no exit named '{head}'", did_you_mean(head, g.graph["heads"]))
    node = g.graph["heads"][head]
    return (nx.ancestors(data_graph(g), node) | {node}) - {g.graph["input"]}


def synergy_pairs(loss: SynergyLoss, g: nx.DiGraph) -> list[tuple[str, str]]:
    """DKS's set B: ordered (teacher m, student n) pairs, heads ordered shallow to deep."""
    heads = list(g.graph["heads"]) if loss.heads == "all" else list(loss.heads)
    depth = g.graph["depth"]
    heads.sort(key=lambda h: (depth[h], h == MAIN_HEAD))
    pairs = []
    for i, shallow in enumerate(heads):
        for deep in heads[i + 1:]:
            if loss.direction in ("top_down", "bidirectional"):
                pairs.append((deep, shallow))
            if loss.direction in ("bottom_up", "bidirectional"):
                pairs.append((shallow, deep))
    return pairs
