"""Pass 10, draw: the graph as Graphviz DOT, as CNDS Fig. 1 draws it.

The main path is plain; each auxiliary branch sits in a dashed red cluster; loss nodes are
octagons; loss edges carry weight and schedule; synergy pairs are dotted arrows, their β on the synergy
loss node; each box shows its output shape. Deep nets are drawn with their repeated blocks folded
(`fold`, `repeated_blocks`, `default_view`); `deployed` is the graph as exported. `render` calls the
`dot` binary for svg/png.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType

import networkx as nx

from netspec.errors import UserError
from netspec.spec import BlockNode, CrossEntropyLoss, SynergyLoss
from netspec.compiler.ir import Network, Node, loss_id
from netspec.compiler.summary import human, schedule_text

OP_COLOURS = {"conv": "#cfe2f3", "fc": "#d9ead3", "batchnorm": "#fff2cc", "maxpool": "#ead1dc", "avgpool": "#ead1dc",
              "gap": "#ead1dc", "add": "#fce5cd", "concat": "#fce5cd"}
GROUP_COLOUR = "#d9d2e9"  # a fold of several nodes (a run of a repeated block)
EDGE_PAD = "  "  # dot sets an edge's label against the line: keep its first letter off it


def _q(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _shape(shape) -> str:
    return "×".join(map(str, shape))


def to_dot(net: Network, rankdir: str = "TB", losses: bool = True) -> str:
    """DOT source for the training graph (`losses=False`: without loss nodes, as deployed); `rankdir` TB draws
    top to bottom, LR left to right. A node's box shows its name, op, output shape and parameters; a head's box
    is doubled and names its exit; the β of a synergy loss is on its loss node, each pair one dotted arrow."""
    spec = net.spec
    out = [f"digraph {_q(spec.name)} {{", f"  rankdir={rankdir}; ranksep=0.3; nodesep=0.25; fontname=Helvetica; "
           "fontsize=12; node [shape=box, style=\"rounded,filled\", fillcolor=white, fontname=Helvetica, fontsize=10]; "
           "edge [fontname=Helvetica, fontsize=8];"]
    inp = net.input.name
    out.append(f"  {_q(inp)} [label={_q(inp + chr(10) + _shape(net.input.shape))}, shape=parallelogram];")
    by_branch: dict[str | None, list[str]] = {}
    for node in net:
        by_branch.setdefault(node.branch, []).append(node.name)
    head_nodes = net.head_nodes()
    # a gradient-scaling node is drawn as a label on its edge, not as a box
    scaled = {n.name: n for n in net if n.op.op == "grad_scale" and n.name not in head_nodes}
    for branch, names in by_branch.items():
        indent = "  "
        if branch is not None:
            # unlabelled, as in CNDS Fig. 1: a cluster's label is set where edges into the cluster cross it; the
            # branch's name starts each of its nodes' and is on its head
            out.append(f"  subgraph {_q('cluster_' + branch)} {{ style=dashed; color=red;")
            indent = "    "
        for name in names:
            if name in scaled:
                continue
            node = net.nodes[name]
            lines = [f"{name} · {node.op.op}{_geometry(node.op)}",
                     _shape(node.shape) + (f" · {human(node.params)}" if node.params else "")]
            heads = head_nodes.get(name)
            if heads:
                lines.append(f"exit {', '.join(heads)}" + ("" if losses else f" · {spec.classes} logits"))
            extra = ", peripheries=2" if heads else ""
            out.append(f"{indent}{_q(name)} [label={_q(chr(10).join(lines))}, fillcolor={_q(_colour(node.op))}{extra}];")
        if branch is not None:
            out.append("  }")
    for node in net:
        if node.name in scaled:
            continue
        for u in node.inputs:
            label = ""
            if u in scaled:
                label = f", label={_q(f'{EDGE_PAD}∇×{scaled[u].op.scale:.2g}')}"
                u = scaled[u].inputs[0]
            style = ", color=red" if node.branch and (u == inp or not net.nodes[u].branch) else ""
            attributes = (label + style).lstrip(", ")
            out.append(f"  {_q(u)} -> {_q(node.name)}" + (f" [{attributes}];" if attributes else ";"))
    for name, loss in spec.losses.items() if losses else ():
        node = loss_id(name)
        if isinstance(loss, CrossEntropyLoss):
            out.append(f"  {_q(node)} [label={_q(name + chr(10) + loss.type)}, shape=octagon, style=filled, fillcolor=\"#f4cccc\"];")
            label = f"{EDGE_PAD}α={loss.weight} · {schedule_text(loss.schedule)}"
            out.append(f"  {_q(net.heads[loss.head])} -> {_q(node)} [label={_q(label)}, style=bold];")
        elif isinstance(loss, SynergyLoss):
            pairs = net.synergy_pairs(loss)
            text = f"β={loss.beta}" + (f", T={loss.temperature}" if loss.temperature != 1 else "")
            out.append(f"  {_q(node)} [label={_q(f'{name}{chr(10)}synergy · {loss.direction}{chr(10)}{text}')}, "
                       "shape=octagon, style=filled, fillcolor=\"#cfe2f3\", color=blue];")
            for m, n in dict.fromkeys(tuple(sorted(pair)) for pair in pairs):  # one arrow per pair of heads
                both = (m, n) in pairs and (n, m) in pairs
                tail, head = (m, n) if (m, n) in pairs else (n, m)
                out.append(f"  {_q(net.heads[tail])} -> {_q(net.heads[head])} [style=dotted, color=blue, "
                           f"constraint=false{', dir=both' if both else ''}];")
            for head in sorted({h for pair in pairs for h in pair}):
                out.append(f"  {_q(net.heads[head])} -> {_q(node)} [style=dotted, color=blue];")
    out.append("}")
    return "\n".join(out) + "\n"


def _colour(op) -> str:
    return GROUP_COLOUR if isinstance(op, _Group) else OP_COLOURS.get(op.op, "white")


def _geometry(op) -> str:
    """` 3×3/2` for a layer with a kernel (and a stride other than 1); '' else."""
    kernel, stride = getattr(op, "kernel", None), getattr(op, "stride", 1)
    if not isinstance(kernel, (int, tuple, list)):
        return ""
    pair = lambda v: f"{v}×{v}" if isinstance(v, int) else "×".join(map(str, v))  # noqa: E731
    stride_text = "" if stride in (1, None, (1, 1), [1, 1]) else "/" + (str(stride) if isinstance(stride, int) else pair(stride))
    return f" {pair(kernel)}{stride_text}"


@dataclass(frozen=True)
class _Group:
    """A folded group of nodes, standing in for an op in `to_dot` (`op` is what it is: `4× basic`)."""

    op: str = "block"
    weighted: bool = False


@dataclass(frozen=True)
class Fold:
    """Nodes drawn as one: every node named `<prefix>.…` for one of `prefixes`, drawn as the node `name` whose op
    reads `kind` (`stage2` for the 5 copies of `basic` in stage2, `4× basic`). Repeated blocks are folded so; so
    can any nodes that share a name prefix (a block instance, a submodule)."""

    name: str
    kind: str
    prefixes: tuple[str, ...]


def fold(net: Network, folds: list[Fold]) -> Network:
    """The network with each fold's nodes drawn as one node: edges into and out of it kept, those inside it
    dropped; its parameters summed, its shape its last node's. A node under two folds goes to the outer one."""
    owner = {prefix: f for f in folds for prefix in f.prefixes}
    group_of = {}
    for node in net:
        parts = node.name.split(".")
        for k in range(1, len(parts)):
            found = owner.get(".".join(parts[:k]))
            if found is not None:
                group_of[node.name] = found
                break
    rename = lambda n: group_of[n].name if n in group_of else n  # noqa: E731
    nodes: dict[str, Node] = {}
    for node in net:
        name = rename(node.name)
        inputs = tuple(dict.fromkeys(rename(i) for i in node.inputs if rename(i) != name))
        if name in nodes:  # a later member: extend the group's inputs, params, output shape
            group = nodes[name]
            extra = tuple(i for i in inputs if i not in group.inputs)
            nodes[name] = replace(group, inputs=group.inputs + extra, shape=node.shape, params=group.params + node.params)
        elif node.name in group_of:
            nodes[name] = replace(node, name=name, op=_Group(group_of[node.name].kind), inputs=inputs)
        else:
            nodes[name] = replace(node, inputs=inputs)
    return _rebuilt(net, nodes, {head: rename(node) for head, node in net.heads.items()})


def repeated_blocks(net: Network) -> list[Fold]:
    """A fold for each run of copies of a repeated block (`stage2` with `repeat: 5`): the whole block, or, where
    something outside the block reads a copy in the middle (a branch's `from: stage2.3`), the runs up to and after
    that copy (`stage2[0-3]`, `stage2[4]`), so every branch still leaves the backbone where it does."""
    blocks = {}
    for branch, nodes in [(None, net.spec.nodes)] + [(b, br.nodes) for b, br in net.spec.branches.items()]:
        for node in nodes:
            if isinstance(node, BlockNode) and node.repeat > 1:
                blocks[f"{branch}.{node.name}" if branch else node.name] = node
    if not blocks:
        return []
    cuts = {name: {node.repeat - 1} for name, node in blocks.items()}
    for node in net:
        for source in node.inputs:
            parts = source.split(".")
            for k in range(1, len(parts) - 1):
                block = ".".join(parts[:k])
                if block in blocks and parts[k].isdigit() and not node.name.startswith(block + "."):
                    cuts[block].add(int(parts[k]))
    folds = []
    for name, node in blocks.items():
        start = 0
        for end in sorted(cuts[name]):
            whole = start == 0 and end == node.repeat - 1
            label = name if whole else f"{name}[{start}]" if start == end else f"{name}[{start}-{end}]"
            folds.append(Fold(label, f"{end - start + 1}× {node.block}",
                              tuple(f"{name}.{i}" for i in range(start, end + 1))))
            start = end + 1
    return folds


DEFAULT_NODES = 60  # ours: above this many nodes the default drawing folds repeated blocks


def default_view(net: Network, mode: str = "auto") -> tuple[Network, str | None]:
    """The network to draw and a note for the user: `mode` "expand" draws every node, "collapse" folds repeated
    blocks, "auto" folds them when the network has more than DEFAULT_NODES nodes."""
    if mode == "expand":
        return net, None
    folds = repeated_blocks(net)
    if not folds:
        return net, f"nothing to collapse: {net.spec.name} has no repeated blocks" if mode == "collapse" else None
    if mode == "auto" and len(net.nodes) <= DEFAULT_NODES:
        return net, None
    auto = f"{len(net.nodes)} nodes: repeated blocks drawn as one node each (--expand draws every node)"
    return fold(net, folds), auto if mode == "auto" else None


def deployed(net: Network) -> Network:
    """The graph as exported for inference: dropouts and training-only identities (grad_scale) bypassed (each
    reader takes the skipped node's input); draw it with `to_dot(..., losses=False)`."""
    skip = {n.name: n.inputs[0] for n in net if n.op.op == "dropout" or n.op.deploy_identity}
    through = lambda name: through(skip[name]) if name in skip else name  # noqa: E731
    nodes = {n.name: replace(n, inputs=tuple(through(i) for i in n.inputs)) for n in net if n.name not in skip}
    return _rebuilt(net, nodes, {head: through(node) for head, node in net.heads.items()})


def _rebuilt(net: Network, nodes: dict[str, Node], heads: dict[str, str]) -> Network:
    """`net` with other nodes and heads, and the data-flow graph of those nodes."""
    data = nx.DiGraph()
    data.add_node(net.input.name)
    for node in nodes.values():
        data.add_node(node.name)
        data.add_edges_from((i, node.name) for i in node.inputs)
    return replace(net, nodes=MappingProxyType(nodes), heads=MappingProxyType(heads), data=nx.freeze(data))


def render(dot_source: str, path: str | Path) -> Path:
    """Write DOT, or run graphviz's `dot` for .svg/.png/.pdf."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in ("dot", "gv", "svg", "png", "pdf"):
        raise UserError(f"cannot draw to '{path.name}'", "use a file ending in .svg, .png, .pdf or .dot")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt in ("dot", "gv"):
        path.write_text(dot_source)
        return path
    if shutil.which("dot") is None:
        raise UserError("the graphviz `dot` program is not installed",
                        "install it (Debian/Ubuntu: apt-get install graphviz; macOS: brew install graphviz), "
                        "or write -o graph.dot")
    result = subprocess.run(["dot", f"-T{fmt}", "-o", str(path)], input=dot_source, text=True, capture_output=True)
    if result.returncode != 0:
        raise UserError(f"graphviz failed: {result.stderr.strip()}", "write -o graph.dot and check it")
    return path
