"""Pass 6, infer shapes: every node's module is built for its input shapes and run on torch's meta
device (no memory, no arithmetic), so shapes come from torch itself. Records shape, params, FLOPs."""
from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import torch
from torch import nn

from netspec.errors import SpecError
from netspec.ops import Call, Custom
from netspec.compiler.ir import Network, Node


def infer_shapes(net: Network) -> Network:
    """The network with each node's input shapes, `shape` (C,H,W or F), `params` and `flops` (for one example).

    Nodes with the same op parameters and input shapes (the copies of a repeated block) are built and
    run once; the modules built here stay on the meta device and are dropped (lowering builds real ones).
    """
    shapes = {net.input.name: net.input.shape}
    seen: dict[tuple, tuple] = {}  # (op params, input shapes) -> (shape, params, flops)
    nodes = {}
    with torch.no_grad():
        for node in net:
            in_shapes = tuple(shapes[source] for source in node.inputs)
            key = (type(node.op), node.op.model_dump_json(exclude={"name", "from_", "init"}), in_shapes)
            if key not in seen:
                module = _build(node, in_shapes)
                shape = _run(node, module, in_shapes)
                params = sum(p.numel() for p in module.parameters()) if isinstance(module, nn.Module) else 0
                seen[key] = (shape, params, node.op.flops(module, shape))
            shape, params, flops = seen[key]
            shapes[node.name] = shape
            nodes[node.name] = replace(node, in_shapes=in_shapes, shape=shape, params=params, flops=flops)
    return replace(net, nodes=MappingProxyType(nodes))


def _fail(node: Node, in_shapes: tuple, problem: str, fix: str) -> SpecError:
    shown = " and ".join(f"{tuple(s)} from '{src}'" for s, src in zip(in_shapes, node.inputs))
    via = f" {node.via}" if node.via else ""
    return SpecError(f"node '{node.name}' ({node.op.op}{via}) cannot take input {shown}: {problem}", fix, node.pos)


def _build(node: Node, in_shapes: tuple):
    op, name = node.op, node.name
    try:
        if isinstance(op, Custom):
            return op.build(in_shapes)  # user code: built for real, it may not support meta
        with torch.device("meta"):
            return op.build(in_shapes)
    except PermissionError as err:
        raise SpecError(f"node '{name}': {err}", "only allow custom ops from specs you trust", node.pos) from None
    except (ImportError, AttributeError) as err:
        raise SpecError(f"node '{name}': cannot import '{op.target}': {err}", "check the import path", node.pos) from None
    except (ValueError, RuntimeError, TypeError) as err:
        raise _fail(node, in_shapes, str(err), "check the node's parameters against its input") from None


def _run(node: Node, module, in_shapes: tuple) -> tuple[int, ...]:
    op = node.op
    if op.needs_map and any(len(s) != 3 for s in in_shapes):
        raise _fail(node, in_shapes, f"{op.op} needs a (C, H, W) feature map",
                    "move the node before the flatten/fc/gap that made the vector")
    if op.keeps_shape:
        return tuple(in_shapes[0])
    device = "cpu" if isinstance(op, Custom) else "meta"
    inputs = [torch.empty((1, *shape), device=device) for shape in in_shapes]
    if op.op == "add" and len({tuple(s) for s in in_shapes}) > 1:
        raise _fail(node, in_shapes, "the shapes differ", "an add needs equal shapes: match channels (conv `out`) "
                    "and size (stride/pooling) of its inputs, or use a shortcut node")
    try:
        out = module.fn(*inputs, **module.kwargs) if isinstance(module, Call) else module(*inputs)
    except (RuntimeError, ValueError, IndexError) as err:
        problem = str(err).splitlines()[0]
        raise _fail(node, in_shapes, problem, _hint(op.op)) from None
    if not isinstance(out, torch.Tensor):
        raise SpecError(f"node '{node.name}' returns {type(out).__name__}, not a tensor", "a node must return one tensor",
                        node.pos)
    if any(d <= 0 for d in out.shape):
        raise _fail(node, in_shapes, f"the output would be {tuple(out.shape[1:])}", _hint(op.op))
    return tuple(out.shape[1:])


def _hint(op: str) -> str:
    return {
        "conv": "the input is smaller than the kernel: lower kernel/stride, add pad, or move the node earlier",
        "maxpool": "the input is smaller than the window: lower kernel/stride or move the node earlier",
        "avgpool": "the input is smaller than the window: lower kernel/stride or move the node earlier",
        "concat": "concat needs equal height and width: match strides/pooling of its inputs",
        "batchnorm": "batchnorm needs a (C,H,W) or (F,) input",
    }.get(op, "check the node's parameters against its input shape")
