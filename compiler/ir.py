"""The typed IR the passes hand each other: one frozen record per node, and the network that holds them.

`expand` makes `Node`s (name, op, inputs, branch, position); `build_graph` makes the `Network`; `check_graph`
returns it in topological order with each head's depth; `infer_shapes` returns it with each node's
shapes, parameter count and FLOPs. No pass changes a record in place: each returns new ones
(`dataclasses.replace`). `lower` reads the network and builds fresh modules; the network never holds any.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterator, Mapping

import networkx as nx

from netspec.errors import Pos, SpecError, did_you_mean
from netspec.ops import OpNode, Shape
from netspec.spec import MAIN_HEAD, CrossEntropyLoss, Spec, SynergyLoss


@dataclass(frozen=True)
class Node:
    """One op of the expanded network (a block's nodes are qualified: `stage1.0.conv1`, a branch's `aux1.fc`)."""

    name: str
    op: OpNode
    inputs: tuple[str, ...]
    branch: str | None
    pos: Pos | None
    via: str = ""  # "in stage1.3 (spec.yaml:40)" for nodes that come from a block
    in_shapes: tuple[Shape, ...] = ()
    shape: Shape = ()  # (C, H, W) or (F,), batch excluded; set by infer_shapes
    params: int = 0
    flops: int = 0  # forward FLOPs for one example


@dataclass(frozen=True)
class Input:
    """The network's input placeholder."""

    name: str
    shape: Shape
    pos: Pos | None


@dataclass(frozen=True)
class Network:
    """The checked network: input, op nodes, heads (head name → node giving its logits), the spec's losses.

    `nodes` keeps insertion order: spec order from `build_graph`, topological order (ties in spec order)
    from `check_graph` on. `depth` (weight layers on the longest path to each head) is set by `check_graph`.
    `data` is the data-flow graph (input and op nodes, edges source → consumer), read-only."""

    spec: Spec
    input: Input
    nodes: Mapping[str, Node]
    heads: Mapping[str, str]
    data: nx.DiGraph = field(repr=False)
    depth: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())

    def __contains__(self, name: object) -> bool:
        return name in self.nodes

    def shape(self, name: str) -> Shape:
        """The output shape of an op node or of the input."""
        return self.input.shape if name == self.input.name else self.nodes[name].shape

    def head_nodes(self) -> dict[str, list[str]]:
        """Node → the heads it gives the logits of."""
        out: dict[str, list[str]] = {}
        for head, node in self.heads.items():
            out.setdefault(node, []).append(head)
        return out

    def ancestry(self, head: str) -> set[str]:
        """Every op node an exit needs: the head's node and all it depends on."""
        if head not in self.heads:
            raise SpecError(f"there is no exit named '{head}'", did_you_mean(head, self.heads))
        node = self.heads[head]
        return (nx.ancestors(self.data, node) | {node}) - {self.input.name}

    def loss_heads(self, name: str) -> list[str]:
        """The heads a loss of the spec reads."""
        loss = self.spec.losses[name]
        if isinstance(loss, CrossEntropyLoss):
            return [loss.head]
        return list(self.heads) if loss.heads == "all" else list(loss.heads)

    def attach_point(self, head: str) -> str | None:
        """The backbone node an exit leaves the backbone at: the head's own node for the main head, else the
        latest (topologically) backbone node its branch reads; None for a branch straight off the input."""
        keep = self.ancestry(head)
        backbone = [name for name in self.nodes if name in keep and self.nodes[name].branch is None]
        return backbone[-1] if backbone else None

    def head_order(self, heads) -> list[str]:
        """Heads from shallow to deep by where they attach along the backbone (DKS's "deeper classifier"): the
        attach point's weight-layer depth, then its position in the backbone; the main head deepest; two
        heads on one attach point by their own depth. Not the longest path to the head: a long head on a
        shallow attach point is still a shallow classifier."""
        depth = {self.input.name: 0}
        for node in self:
            depth[node.name] = max(depth[p] for p in node.inputs) + int(node.op.weighted)
        position = {name: i for i, name in enumerate(self.nodes)}

        def key(head: str):
            at = self.attach_point(head)
            return (head == MAIN_HEAD, depth[at] if at else 0, position[at] if at else -1, self.depth[head])
        return sorted(heads, key=key)

    def synergy_pairs(self, loss: SynergyLoss) -> list[tuple[str, str]]:
        """DKS's set B: ordered (teacher m, student n) pairs; top_down = a deeper head teaches a shallower one,
        depth being where the head attaches along the backbone (`head_order`)."""
        heads = self.head_order(list(self.heads) if loss.heads == "all" else list(loss.heads))
        pairs = []
        for i, shallow in enumerate(heads):
            for deep in heads[i + 1:]:
                if loss.direction in ("top_down", "bidirectional"):
                    pairs.append((deep, shallow))
                if loss.direction in ("bottom_up", "bidirectional"):
                    pairs.append((shallow, deep))
        return pairs

    def loss_graph(self) -> nx.DiGraph:
        """The data-flow graph plus one node per loss (`loss:<name>`) fed by the heads it reads."""
        g = nx.DiGraph(self.data)
        for name in self.spec.losses:
            g.add_node(loss_id(name))
            for head in self.loss_heads(name):
                g.add_edge(self.heads[head], loss_id(name))
        return g


def loss_id(name: str) -> str:
    """Graph id of a loss node (kept apart from op names)."""
    return f"loss:{name}"
