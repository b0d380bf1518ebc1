"""Pass 10, cascade: cut the training GraphModule into one segment per exit, for early-exit deployment.

`split(gm, net)` orders the exits from shallow to deep (`Network.head_order`; main last). Segment k holds the
nodes exit k needs that no earlier segment computes, so no layer is computed twice. Its inputs are the values it
reads from outside itself (the network's input, features of earlier segments), its outputs are exit k's logits
(named after the head) followed by the features of its own that later segments read. As in `prune`,
training-only identities (grad_scale) are dropped. Each segment is an `fx.GraphModule` taking its inputs
positionally and returning a tuple in `outputs` order; the layers are shared with `gm`, not copied.

With a `criterion` (a name in `CONFIDENCE`), every segment but the last also outputs its exit's confidence, one
number per row on 0..1 (higher = more confident), right after the logits and named `<exit>:confidence`: the
deployed graph computes it, so a runner compares one scalar per row to a threshold. An input leaves at exit k
when confidence_k > threshold_k (strictly): threshold 1 never exits early, 0 always does unless the confidence is
exactly 0 (ours).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
import math
from operator import attrgetter

import torch
from torch import fx

from netspec.errors import UserError
from netspec.ops import scale_grad
from netspec.compiler.ir import Network
from netspec.compiler.prune import head_outputs


def max_probability(logits: torch.Tensor) -> torch.Tensor:
    """The largest softmax probability (BranchyNet/SDN-style confidence), 1/C .. 1."""
    return torch.softmax(logits, 1).amax(1)


def margin(logits: torch.Tensor) -> torch.Tensor:
    """The largest softmax probability minus the second largest, 0 .. 1."""
    top = torch.topk(torch.softmax(logits, 1), 2, dim=1).values
    return top[:, 0] - top[:, 1]


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """1 − entropy(softmax) / ln C: 0 for the uniform distribution, 1 for a one-hot one."""
    logp = torch.log_softmax(logits, 1)
    return 1 - (-(logp.exp() * logp).sum(1)) / math.log(logits.shape[1])


def _confidence(fn):
    def on_0_to_1(logits: torch.Tensor) -> torch.Tensor:  # float rounding never leaves 0..1
        return fn(logits).clamp(0.0, 1.0)
    on_0_to_1.__name__, on_0_to_1.__doc__ = f"confidence_{fn.__name__}", fn.__doc__
    return on_0_to_1


# The exit criteria a cascade can be exported with (`export --cascade --confidence NAME`); each maps logits N×C
# to N numbers on 0..1. The registry of criteria: a runner only compares the graph's output to a threshold.
CONFIDENCE = {"max": _confidence(max_probability), "margin": _confidence(margin), "entropy": _confidence(entropy)}
CONFIDENCE_SUFFIX = ":confidence"


@dataclass(frozen=True)
class Segment:
    """One stage of a cascade: `module(*inputs) -> (logits, [confidence,] *features)`, `outputs[0]` being the exit's
    name (the confidence, `<exit>:confidence`, with a criterion, on every segment but the last)."""

    exit: str
    module: fx.GraphModule
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    nodes: tuple[str, ...]  # the spec's nodes it computes (for FLOPs)
    flops: int  # per example
    head_flops: int  # the part of `flops` only the exit needs (not the features later segments read)


def split(gm: fx.GraphModule, net: Network, order: list[str] | None = None,
          criterion: str | None = None) -> list[Segment]:
    """The segments of the training module `gm` of `net`, one per exit in `order` (default: shallow to deep); with
    a `criterion` (a `CONFIDENCE` name), every segment but the last also outputs its exit's confidence."""
    if criterion is not None and criterion not in CONFIDENCE:
        raise UserError(f"unknown confidence '{criterion}'", f"use one of {', '.join(CONFIDENCE)}")
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
        scored = criterion if k < len(parts) - 1 else None
        segments.append(_segment(gm, head, nodes, inputs_of[k], heads[head], features, spec_name, net, scored))
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


def _segment(gm, head, nodes, reads, logits, features, spec_name, net, criterion) -> Segment:
    graph, values = fx.Graph(), {}
    for arg in reads:
        values[arg] = graph.placeholder(arg.name)
    for n in nodes:
        values[n] = graph.node_copy(n, lambda a: values[a])
    scores = [graph.call_function(CONFIDENCE[criterion], (values[logits],))] if criterion else []
    graph.output((values[logits], *scores, *(values[f] for f in features)))
    attributes = {n.target: attrgetter(n.target)(gm) for n in graph.nodes if n.op in ("call_module", "get_attr")}
    module = fx.GraphModule(attributes, graph, class_name=f"{type(gm).__name__}Segment")
    module.meta["heads"] = [head]

    def spec_nodes(part) -> tuple[str, ...]:
        return tuple(n.target if n.op == "call_module" else spec_name.get(n.name, n.name) for n in part)

    def flops(part) -> int:
        return sum(net.nodes[name].flops for name in spec_nodes(part) if name in net.nodes)
    trunk = set().union(*(_ancestry(f) for f in features))  # what later segments need
    outputs = (head, *[head + CONFIDENCE_SUFFIX] * len(scores), *(f.name for f in features))
    return Segment(head, module, tuple(a.name for a in reads), outputs, spec_nodes(nodes), flops(nodes),
                   flops([n for n in nodes if n not in trunk]))
