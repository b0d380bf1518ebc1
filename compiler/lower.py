"""Pass 7, lower: the checked, shaped network becomes a `torch.fx.GraphModule`.

Submodules are named after the spec's nodes (`conv1`, `stage1.0.conv1`, `aux1.fc`), so parameter
names are stable when a branch moves. The training module returns `{head: logits}`; a module lowered
for one head returns that head's logits alone and, being a deployed model, leaves out training-only
identities (grad_scale). Every call builds fresh modules; the network is not changed. `lower_graph` is the
same graph without modules or weights, for commands that only read its code.
`param_groups` gives the optimizer its parameter groups from the spec's lr_mult / decay_mult.
"""
from __future__ import annotations

import torch
from torch import fx, nn

from netspec.errors import SpecError
from netspec.ops import Call, Custom, NodeInit, OpNode, multipliers
from netspec.compiler.ir import Network


def build_modules(net: Network, seed: int | None = None) -> dict[str, nn.Module | Call]:
    """Each node's real module on the CPU for its inferred input shapes, initialised by the spec (`init:` of the
    node over the spec's; PyTorch's default where neither says). Built for every node in network order from
    `seed`, so a node's initial weights do not depend on which heads are lowered."""
    if seed is not None:
        torch.manual_seed(seed)
    modules = {}
    for node in net:
        module = node.op.build(list(node.in_shapes))
        apply_init(module, *node_init(node.op, net.spec.init))
        modules[node.name] = module
    return modules


def node_init(op: OpNode, default: NodeInit):
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


def lower(net: Network, heads: list[str] | None = None, single: bool = False) -> fx.GraphModule:
    """Build the GraphModule computing `heads` (default: all). `single` returns one tensor, not a dict."""
    heads = _check_heads(net, heads, single)
    built = build_modules(net, net.spec.train.seed)
    graph = _graph(net, heads, single, lambda name: built[name] if isinstance(built[name], Call) else None)
    modules = {n.target: built[n.target] for n in graph.nodes if n.op == "call_module"}  # in network order
    gm = fx.GraphModule(modules, graph, class_name=_class_name(net.spec.name))
    gm.meta["heads"] = heads
    return gm


def lower_graph(net: Network, heads: list[str] | None = None, single: bool = False) -> fx.Graph:
    """The graph `lower` builds, without modules or weights (the global RNG is not touched): for its code
    (`model.py`) when no weights are needed. Each distinct op is built once on the meta device to tell a
    module (`call_module`) from a function (`call_function`); a custom op is a module, never built here."""
    heads = _check_heads(net, heads, single)
    calls: dict[tuple, Call | None] = {}

    def call_of(name: str) -> Call | None:
        node = net.nodes[name]
        if isinstance(node.op, Custom):
            return None
        key = (type(node.op), node.op.model_dump_json(exclude={"name", "from_", "init"}), node.in_shapes)
        if key not in calls:
            with torch.device("meta"):
                built = node.op.build(list(node.in_shapes))
            calls[key] = built if isinstance(built, Call) else None
        return calls[key]
    return _graph(net, heads, single, call_of)


def _check_heads(net: Network, heads: list[str] | None, single: bool) -> list[str]:
    heads = list(net.heads) if heads is None else heads
    for head in heads:
        if head not in net.heads:
            raise SpecError(f"there is no head named '{head}'", f"heads: {', '.join(net.heads)}")
    if single and len(heads) != 1:
        raise ValueError("single=True needs exactly one head")
    return heads


def _graph(net: Network, heads: list[str], single: bool, call_of) -> fx.Graph:
    """The fx graph of `heads`: a `call_function` for each node whose op is a function (`call_of(name)` gives
    its `Call`), a `call_module` named after the node for every other."""
    wanted = set().union(*(net.ancestry(head) for head in heads))
    graph, values = fx.Graph(), {}
    values[net.input.name] = graph.placeholder(net.input.name)
    for node in net:
        if node.name not in wanted:
            continue
        args = tuple(values[source] for source in node.inputs)
        if single and node.op.deploy_identity:
            values[node.name] = args[0]
            continue
        call = call_of(node.name)
        if call is not None:
            values[node.name] = graph.call_function(call.fn, args, dict(call.kwargs))
            values[node.name].name = _fx_name(node.name)
        else:
            values[node.name] = graph.call_module(node.name, args)
    outputs = {head: values[net.heads[head]] for head in heads}
    graph.output(outputs[heads[0]] if single else outputs)
    return graph


def param_groups(net: Network, module: nn.Module) -> list[dict]:
    """The optimizer's parameter groups: `{"params", "names", "lr_mult", "decay_mult"}`, one per distinct pair
    of multipliers, in order of first appearance in `module.named_parameters()` (so the layout is the same on
    every rank and on every resume of the same spec). A tensor named `bias` takes the `bias` multipliers, any
    other the `weight` ones (ops.multipliers); tensors outside the spec's nodes take 1 and 1."""
    train = net.spec.train
    groups: dict[tuple[float, float], dict] = {}
    for name, param in module.named_parameters():
        node = _owner(net, name)
        tensor = "bias" if name.rsplit(".", 1)[-1] == "bias" else "weight"
        key = multipliers(node.op, train.lr_mult, train.decay_mult, tensor) if node else (1.0, 1.0)
        group = groups.setdefault(key, {"params": [], "names": [], "lr_mult": key[0], "decay_mult": key[1]})
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def _owner(net: Network, parameter: str):
    """The node a parameter belongs to: the longest dotted prefix of its name that is a node."""
    parts = parameter.split(".")
    for k in range(len(parts) - 1, 0, -1):
        node = net.nodes.get(".".join(parts[:k]))
        if node is not None:
            return node
    return None


def _fx_name(name: str) -> str:
    return name.replace(".", "_")


def _class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("-", "_").replace(".", "_").split("_")) or "Net"
