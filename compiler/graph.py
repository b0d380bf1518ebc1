"""Passes 4 and 5: build the network (ops, heads, data edges, the losses on heads) and check it."""
from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import networkx as nx

from netspec.errors import SpecError, did_you_mean
from netspec.spec import SynergyLoss, Spec
from netspec.compiler.expand import Expanded
from netspec.compiler.ir import Input, Network


def build_graph(spec: Spec, expanded: Expanded) -> Network:
    """The network of the expanded nodes, in spec order, with its data-flow graph. Losses must name heads."""
    data = nx.DiGraph()
    data.add_node(expanded.input_name)
    data.add_nodes_from(node.name for node in expanded.nodes)
    data.add_edges_from((source, node.name) for node in expanded.nodes for source in node.inputs)
    for name, loss in spec.losses.items():
        if isinstance(loss, SynergyLoss) and loss.heads == "all" and len(expanded.heads) < 2:
            raise SpecError(f"synergy loss '{name}' needs two or more heads; this spec has only 'main'",
                            "add a branch, or delete the synergy loss", loss.at)
        heads = [loss.head] if not isinstance(loss, SynergyLoss) else [] if loss.heads == "all" else loss.heads
        for head in heads:
            if head not in expanded.heads:
                raise SpecError(f"loss '{name}' is on head '{head}', which does not exist",
                                did_you_mean(head, expanded.heads) + f" (heads: {', '.join(expanded.heads)})", loss.at)
    return Network(spec, Input(expanded.input_name, tuple(spec.input.shape), spec.input.at),
                   MappingProxyType({node.name: node for node in expanded.nodes}),
                   MappingProxyType(dict(expanded.heads)), nx.freeze(data))


def check_graph(net: Network) -> Network:
    """Cycles, arity, unreachable and unused nodes, heads without a loss (inputs across branches are checked by
    expand, which knows where each was named). Returns the network in topological order (ties in spec order) with
    each head's depth."""
    data = net.data
    order = {name: i for i, name in enumerate([net.input.name, *net.nodes])}
    if not all(order[u] < order[v] for u, v in data.edges):  # only a forward `from:` can make a cycle
        if not nx.is_directed_acyclic_graph(data):
            cycle = nx.find_cycle(data)
            path = " → ".join([u for u, _ in cycle] + [cycle[0][0]])
            raise SpecError(f"the graph has a cycle: {path}", "a node cannot take input from a node that depends on "
                            "it; fix one `from:` on this path", net.nodes[cycle[0][1]].pos)
        ordered = [n for n in nx.lexicographical_topological_sort(data, key=order.__getitem__) if n != net.input.name]
        net = replace(net, nodes=MappingProxyType({name: net.nodes[name] for name in ordered}))
    for node in net:
        low, high = node.op.arity
        count = len(node.inputs)
        if count < low or (high is not None and count > high):
            want = f"{low}" if low == high else f"at least {low}" if high is None else f"{low} to {high}"
            raise SpecError(f"node '{node.name}' ({node.op.op}) has {count} input(s), needs {want}",
                            "list its inputs with from: [a, b]" if low > 1 else "give it one `from:`", node.pos)
    reachable = nx.descendants(data, net.input.name)
    for node in net:
        if node.name not in reachable:
            raise SpecError(f"node '{node.name}' cannot be reached from the input", "connect it with `from:`", node.pos)
    useful = set(net.heads.values())
    for head_node in set(net.heads.values()):
        useful |= nx.ancestors(data, head_node)
    for node in net:
        if node.name not in useful:
            raise SpecError(f"the output of node '{node.name}' is used by no head",
                            "feed it into the network or delete it", node.pos)
    supervised = {head for name in net.spec.losses for head in net.loss_heads(name)}
    for head, node in net.heads.items():
        if head not in supervised:
            at = net.spec.branches[head].at if head in net.spec.branches else net.nodes[node].pos
            raise SpecError(f"head '{head}' has no loss", f"add under losses: {head}: {{type: cross_entropy, head: {head}, "
                            "weight: 0.3}, or delete the branch", at)
    return replace(net, depth=MappingProxyType(head_depths(net)))


def head_depths(net: Network) -> dict[str, int]:
    """Weight layers (conv, fc) on the longest path from the input to each head (MW-BP's L_k).
    `net.nodes` must be in topological order (as `check_graph` returns it)."""
    depth = {net.input.name: 0}
    for node in net:
        depth[node.name] = max(depth[p] for p in node.inputs) + int(node.op.weighted)
    return {head: depth[node] for head, node in net.heads.items()}
