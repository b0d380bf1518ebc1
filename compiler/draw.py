"""Pass 10, draw: the graph as Graphviz DOT, as CNDS Fig. 1 draws it.

The main path is plain; each auxiliary branch sits in a dashed red cluster; loss nodes are
octagons; loss edges carry weight and schedule; synergy pairs are dotted arrows labelled β;
data edges carry tensor shapes. `render` calls the `dot` binary for svg/png.
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


def _q(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _shape(shape) -> str:
    return "×".join(map(str, shape))


def to_dot(net: Network) -> str:
    """DOT source for the whole training graph."""
    spec = net.spec
    out = [f"digraph {_q(spec.name)} {{", "  rankdir=TB; node [shape=box, style=\"rounded,filled\", fillcolor=white, "
           "fontname=Helvetica, fontsize=10]; edge [fontname=Helvetica, fontsize=8];"]
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
            out.append(f"  subgraph {_q('cluster_' + branch)} {{ label={_q('branch ' + branch)}; style=dashed; "
                       "color=red; fontcolor=red;")
            indent = "    "
        for name in names:
            if name in scaled:
                continue
            node = net.nodes[name]
            op = node.op.op
            label = f"{name}\\n{op}{_geometry(node.op)}" + (f" · {human(node.params)}" if node.params else "")
            heads = head_nodes.get(name)
            extra = f", peripheries=2, xlabel={_q('head ' + ', '.join(heads))}" if heads else ""
            out.append(f"{indent}{_q(name)} [label=\"{label}\", fillcolor={_q(OP_COLOURS.get(op, 'white'))}{extra}];")
        if branch is not None:
            out.append("  }")
    for node in net:
        if node.name in scaled:
            continue
        for u in node.inputs:
            label = _shape(net.shape(u))
            if u in scaled:
                label += f"\n∇×{scaled[u].op.scale:.2g}"
                u = scaled[u].inputs[0]
            style = ", color=red" if node.branch and (u == inp or not net.nodes[u].branch) else ""
            out.append(f"  {_q(u)} -> {_q(node.name)} [label={_q(label)}{style}];")
    for name, loss in spec.losses.items():
        node = loss_id(name)
        out.append(f"  {_q(node)} [label={_q(name + chr(10) + loss.type)}, shape=octagon, style=filled, fillcolor=\"#f4cccc\"];")
        if isinstance(loss, CrossEntropyLoss):
            label = f"α={loss.weight} · {schedule_text(loss.schedule)}"
            out.append(f"  {_q(net.heads[loss.head])} -> {_q(node)} [label={_q(label)}, style=bold];")
        elif isinstance(loss, SynergyLoss):
            for m, n in net.synergy_pairs(loss):
                label = f"β={loss.beta}" + (f", T={loss.temperature}" if loss.temperature != 1 else "")
                out.append(f"  {_q(net.heads[m])} -> {_q(net.heads[n])} [label={_q(label)}, style=dotted, "
                           "color=blue, fontcolor=blue, constraint=false];")
            for head in sorted({h for pair in net.synergy_pairs(loss) for h in pair}):
                out.append(f"  {_q(net.heads[head])} -> {_q(node)} [style=dotted, color=blue];")
    out.append("}")
    return "\n".join(out) + "\n"


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
    """A collapsed run of repeated blocks, standing in for an op in `to_dot`."""

    op: str = "block"
    weighted: bool = False


def collapse(net: Network) -> Network:
    """The network with each repeated block instance (`stage2` with `repeat: 5`) drawn as one node
    `stage2[5× basic]`: edges into and out of the run are kept, those inside it dropped."""
    instances = {}
    for branch, nodes in [(None, net.spec.nodes)] + [(b, br.nodes) for b, br in net.spec.branches.items()]:
        for node in nodes:
            if isinstance(node, BlockNode) and node.repeat > 1:
                qualified = f"{branch}.{node.name}" if branch else node.name
                instances[qualified] = f"{qualified}[{node.repeat}× {node.block}]"
    group_of = {}
    for node in net:
        for inst, label in instances.items():
            if node.name.startswith(inst + ".") and node.name[len(inst) + 1:].split(".")[0].isdigit():
                group_of[node.name] = label
    by_submodule = submodule_groups(net)
    group_of.update(by_submodule)
    rename = lambda n: group_of.get(n, n)  # noqa: E731
    nodes: dict[str, Node] = {}
    for node in net:
        name = rename(node.name)
        inputs = tuple(dict.fromkeys(rename(i) for i in node.inputs if rename(i) != name))
        if name in nodes:  # a later member: extend the group's inputs, params, output shape
            group = nodes[name]
            extra = tuple(i for i in inputs if i not in group.inputs)
            nodes[name] = replace(group, inputs=group.inputs + extra, shape=node.shape, params=group.params + node.params)
        elif node.name in group_of:
            nodes[name] = replace(node, name=name, op=_Group("submodule" if node.name in by_submodule else "block"),
                                  inputs=inputs)
        else:
            nodes[name] = replace(node, inputs=inputs)
    data = nx.DiGraph()
    data.add_node(net.input.name)
    for node in nodes.values():
        data.add_node(node.name)
        data.add_edges_from((i, node.name) for i in node.inputs)
    heads = {head: rename(node) for head, node in net.heads.items()}
    return replace(net, nodes=MappingProxyType(nodes), heads=MappingProxyType(heads), data=nx.freeze(data))


def submodule_groups(net: Network) -> dict[str, str]:
    """For a `backbone:` module: each call inside a top-level submodule (`layer1.0.conv1`) → that submodule
    (`layer1`); calls of the module's own forward (`flatten`) stay nodes."""
    if net.spec.backbone is None:
        return {}
    return {node.name: node.name.split(".")[0] for node in net if node.branch is None and "." in node.name}


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
