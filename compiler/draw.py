"""Pass 10, draw: the graph as Graphviz DOT, as CNDS Fig. 1 draws it.

The main path is plain; each auxiliary branch sits in a dashed red cluster; loss nodes are
octagons; loss edges carry weight and schedule; synergy pairs are dotted arrows labelled β;
data edges carry tensor shapes. `render` calls the `dot` binary for svg/png.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from netspec.errors import UserError
from netspec.spec import CrossEntropyLoss, SynergyLoss
from netspec.compiler.ir import Network, loss_id
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
            label = f"{name}\\n{op}" + (f" · {human(node.params)}" if node.params else "")
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
