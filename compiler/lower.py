"""Pass 7, lower: the checked, shaped graph becomes a `torch.fx.GraphModule`.

Submodules are named after the spec's nodes (`conv1`, `stage1.0.conv1`, `aux1.fc`), so parameter
names are stable when a branch moves. The training module returns `{head: logits}`; a module lowered
for one head returns that head's logits alone.
"""
from __future__ import annotations

import networkx as nx
import torch
from torch import fx

from netspec.errors import SpecError
from netspec.ops import Call, NodeInit
from compiler.graph import exit_ancestry, in_order


def materialise(g: nx.DiGraph, seed: int | None = None) -> None:
    """Build each node's real module on the CPU for its inferred input shapes, initialised by the
    spec (`init:` of the node over the spec's; PyTorch's default where neither says)."""
    spec = g.graph["spec"]
    if seed is not None:
        torch.manual_seed(seed)
    for name in in_order(g):
        attrs = g.nodes[name]
        if attrs["kind"] != "op" or "module" in attrs:
            continue
        module = attrs["op"].build(attrs["in_shapes"])
        apply_init(module, *node_init(attrs["op"], spec.init))
        attrs["module"] = module


def node_init(op, default: NodeInit):
    """(weight filler, bias constant) of a weight layer: the node's `init:` over the spec's; (None, None) else."""
    if not op.weighted:
        return None, None
    override = op.init
    weight_init = (override and override.weight) or default.weight
    bias = override.bias if override and override.bias is not None else default.bias
    return weight_init, bias


def apply_init(module, weight_init, bias: float | None) -> None:
    """Apply a weight filler and a bias constant (either may be None: leave as built)."""
    with torch.no_grad():
        if weight_init is not None:
            weight_init.apply(module.weight)
        if bias is not None and module.bias is not None:
            module.bias.fill_(bias)


def lower(g: nx.DiGraph, heads: list[str] | None = None, single: bool = False) -> fx.GraphModule:
    """Build the GraphModule computing `heads` (default: all). `single` returns one tensor, not a dict."""
    heads = list(g.graph["heads"]) if heads is None else heads
    for head in heads:
        if head not in g.graph["heads"]:
            raise SpecError(f"there is no head named '{head}'", f"heads: {', '.join(g.graph['heads'])}")
    if single and len(heads) != 1:
        raise ValueError("single=True needs exactly one head")
    materialise(g, g.graph["spec"].train.seed)
    wanted = set().union(*(exit_ancestry(g, head) for head in heads))
    graph, modules, values = fx.Graph(), {}, {}
    values[g.graph["input"]] = graph.placeholder(g.graph["input"])
    for name in in_order(g):
        attrs = g.nodes[name]
        if attrs["kind"] != "op" or name not in wanted:
            continue
        args = tuple(values[source] for source in attrs["inputs"])
        module = attrs["module"]
        if isinstance(module, Call):
            values[name] = graph.call_function(module.fn, args, dict(module.kwargs))
            values[name].name = _fx_name(name)
        else:
            modules[name] = module
            values[name] = graph.call_module(name, args)
    outputs = {head: values[g.graph["heads"][head]] for head in heads}
    graph.output(outputs[heads[0]] if single else outputs)
    gm = fx.GraphModule(modules, graph, class_name=_class_name(g.graph["spec"].name))
    gm.meta["heads"] = heads
    return gm


def _fx_name(name: str) -> str:
    return name.replace(".", "_")


def _class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("-", "_").replace(".", "_").split("_")) or "Net"
