"""Pass 10, cascade: cut the training GraphModule into one segment per exit, for early-exit deployment.

`split(gm, net)` orders the exits from shallow to deep (`Network.head_order`; main last). Segment k holds the
nodes exit k needs that no earlier segment computes, so no layer is computed twice. Its inputs are the values it
reads from outside itself (the network's input, features of earlier segments), its outputs are exit k's logits
(named after the head) followed by the features of its own that later segments read. As in `prune`,
training-only identities (grad_scale) are dropped. Each segment is an `fx.GraphModule` taking its inputs
positionally and returning a tuple in `outputs` order; the layers are shared with `gm`, not copied.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from operator import attrgetter

from torch import fx

from netspec.errors import UserError
from netspec.ops import scale_grad
from netspec.compiler.ir import Network
from netspec.compiler.prune import head_outputs


@dataclass(frozen=True)
class Segment:
    """One stage of a cascade: `module(*inputs) -> (logits, *features)`, `outputs[0]` being the exit's name."""

    exit: str
    module: fx.GraphModule
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    nodes: tuple[str, ...]  # the spec's nodes it computes (for FLOPs)
    flops: int  # per example


def split(gm: fx.GraphModule, net: Network, order: list[str] | None = None) -> list[Segment]:
    """The segments of the training module `gm` of `net`, one per exit in `order` (default: shallow to deep)."""
    order = order or net.head_order(list(net.heads))
    graph = copy.deepcopy(gm.graph)
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is scale_grad:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    heads = head_outputs(fx.GraphModule(gm, graph))
    spec_name = {name.replace(".", "_"): name for name in net.nodes}
    computed: set[fx.Node] = set()
    parts: list[tuple[str, list[fx.Node]]] = []
    for head in order:
        needed = _ancestry(heads[head]) - computed
        if heads[head] in computed:
            raise UserError(f"exit '{head}' needs no layer beyond the exits before it, so it cannot be a cascade stage",
                            f"export the other exits (order: {', '.join(order)}) or give it a layer of its own")
        nodes = [n for n in graph.nodes if n in needed]  # graph (topological) order
        parts.append((head, nodes))
        computed |= needed
    inputs_of = []
    for _, nodes in parts:
        inside = set(nodes)
        reads = []
        for n in nodes:
            for arg in n.all_input_nodes:
                if arg not in inside and arg not in reads:
                    reads.append(arg)
        inputs_of.append(reads)
    segments = []
    for k, (head, nodes) in enumerate(parts):
        later = {arg for reads in inputs_of[k + 1:] for arg in reads}
        features = [n for n in nodes if n in later]
        segments.append(_segment(gm, head, nodes, inputs_of[k], heads[head], features, spec_name, net))
    return segments


def _ancestry(node: fx.Node) -> set[fx.Node]:
    out, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n in out or n.op == "placeholder":
            continue
        out.add(n)
        todo.extend(n.all_input_nodes)
    return out


def _segment(gm, head, nodes, reads, logits, features, spec_name, net) -> Segment:
    graph, values = fx.Graph(), {}
    for arg in reads:
        values[arg] = graph.placeholder(arg.name)
    for n in nodes:
        values[n] = graph.node_copy(n, lambda a: values[a])
    graph.output((values[logits], *(values[f] for f in features)))
    attributes = {n.target: attrgetter(n.target)(gm) for n in graph.nodes if n.op in ("call_module", "get_attr")}
    module = fx.GraphModule(attributes, graph, class_name=f"{type(gm).__name__}Segment")
    module.meta["heads"] = [head]
    names = tuple(n.target if n.op == "call_module" else spec_name.get(n.name, n.name) for n in nodes)
    flops = sum(net.nodes[name].flops for name in names if name in net.nodes)
    return Segment(head, module, tuple(a.name for a in reads), (head, *(f.name for f in features)), names, flops)
