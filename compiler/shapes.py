"""Pass 6, infer shapes: every node's module is built for its input shapes on torch's meta device and run on
a batch of no examples on the CPU, its parameters zero-stride views of one number (no memory, no arithmetic), so
shapes and shape errors come from torch's own CPU kernels. Records shape, params, FLOPs.

Not the meta device for the run: its kernels for conv and linear are Python that imports sympy and torch._dynamo,
1-2 s once per process, more than the whole compile of most specs (ours)."""
from __future__ import annotations

import math
import warnings
from dataclasses import replace
from types import MappingProxyType

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from netspec.errors import SpecError
from netspec.limits import Limits, env_name
from netspec.ops import Call, CopyOf, Custom
from netspec.compiler.backbone import Traced
from netspec.compiler.ir import Network, Node


def _too_large(what: str, count: int, bound: int, field: str, pos) -> SpecError:
    return SpecError(f"{what} {count:,}, more than the limit of {bound:,}", "make the network smaller, or raise the "
                     f"limit: {env_name(field)}={count} (if the machine has the memory)", pos)


def infer_shapes(net: Network, limits: Limits = Limits()) -> Network:
    """The network with each node's input shapes, `shape` (C,H,W or F), `params` and `flops` (for one example),
    within the parameter and activation bounds of `limits` (which also say whether `op: custom` code may run).

    Nodes with the same op parameters and input shapes (the copies of a repeated block) are built and
    run once; the modules built here hold no memory and are dropped (lowering builds real ones).
    """
    shapes = {net.input.name: net.input.shape}
    seen: dict[tuple, tuple] = {}  # (op params, input shapes) -> (shape, params, flops)
    nodes = {}
    total_params = 0
    activations = math.prod(net.input.shape)
    if activations > limits.activations:
        raise _too_large("the input has (per example) elements", activations, limits.activations, "activations",
                         net.input.pos)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notes about meta tensors are no concern of the spec's author
        for node in net:
            in_shapes = tuple(shapes[source] for source in node.inputs)
            key = (type(node.op), node.op.model_dump_json(exclude={"name", "from_", "init"}), in_shapes)
            if isinstance(node.op, Traced):  # a call of a `backbone:` module, measured when it was traced
                seen[key] = node.op.measured
            elif key not in seen:
                module = _build(node, in_shapes, limits.code)
                if isinstance(node.op, CopyOf):  # any module of the user's: FLOPs as torch counts them
                    with FlopCounterMode(display=False) as counter:
                        shape = _run(node, module, in_shapes)
                    flops = counter.get_total_flops()
                else:
                    shape = _run(node, module, in_shapes)
                    flops = node.op.flops(module, shape)
                params = sum(p.numel() for p in module.parameters()) if isinstance(module, nn.Module) else 0
                seen[key] = (shape, params, flops)
            shape, params, flops = seen[key]
            total_params += params
            activations += math.prod(shape)
            if total_params > limits.params:
                raise _too_large(f"node '{node.name}' brings the parameter count to", total_params, limits.params,
                                 "params", node.pos)
            if activations > limits.activations:
                raise _too_large(f"node '{node.name}' {tuple(shape)} brings the activation elements per example to",
                                 activations, limits.activations, "activations", node.pos)
            shapes[node.name] = shape
            nodes[node.name] = replace(node, in_shapes=in_shapes, shape=shape, params=params, flops=flops)
    return replace(net, nodes=MappingProxyType(nodes))


def _fail(node: Node, in_shapes: tuple, problem: str, fix: str) -> SpecError:
    shown = " and ".join(f"{tuple(s)} from '{src}'" for s, src in zip(in_shapes, node.inputs))
    via = f" {node.via}" if node.via else ""
    return SpecError(f"node '{node.name}' ({node.op.op}{via}) cannot take input {shown}: {problem}", fix, node.pos)


def _build(node: Node, in_shapes: tuple, code_allowed: bool):
    op, name = node.op, node.name
    if isinstance(op, Custom) and not code_allowed:  # the first place a spec's code would run
        raise SpecError(f"node '{name}' is a custom op: it imports and runs {op.target}",
                        "run with --allow-custom (or NETSPEC_ALLOW_CUSTOM=1) if you trust this spec", node.pos)
    try:
        if isinstance(op, Custom):
            return op.build(in_shapes)  # user code: built for real, it may not support meta
        with torch.device("meta"):
            return op.build(in_shapes)
    except (ImportError, AttributeError) as err:
        raise SpecError(f"node '{name}': cannot import '{op.target}': {err}", "check the import path", node.pos) from None
    except (ValueError, RuntimeError, TypeError, OverflowError, MemoryError) as err:
        raise _fail(node, in_shapes, _first_line(err), "check the node's parameters against its input") from None


def _run(node: Node, module, in_shapes: tuple) -> tuple[int, ...]:
    op = node.op
    if op.needs_map and any(len(s) != 3 for s in in_shapes):
        raise _fail(node, in_shapes, f"{op.op} needs a (C, H, W) feature map",
                    "move the node before the flatten/fc/gap that made the vector")
    if op.keeps_shape:
        return tuple(in_shapes[0])
    custom = isinstance(op, Custom)
    counted = isinstance(op, CopyOf)  # a copy of the user's module: run on one example on meta, FLOPs counted
    if not (custom or counted) and isinstance(module, nn.Module):
        _hollow(module)
    inputs = [torch.empty((int(custom or counted), *shape), device="meta" if counted else "cpu")
              for shape in in_shapes]  # a custom op runs on one real example
    if op.op == "add" and len({tuple(s) for s in in_shapes}) > 1:
        raise _fail(node, in_shapes, "the shapes differ", "an add needs equal shapes: match channels (conv `out`) "
                    "and size (stride/pooling) of its inputs, or use a shortcut node")
    try:
        out = module.fn(*inputs, **module.kwargs) if isinstance(module, Call) else module(*inputs)
    except (RuntimeError, ValueError, IndexError, TypeError, OverflowError, MemoryError) as err:
        raise _fail(node, in_shapes, _first_line(err), _hint(op.op)) from None
    if not isinstance(out, torch.Tensor):
        raise SpecError(f"node '{node.name}' returns {type(out).__name__}, not a tensor", "a node must return one tensor",
                        node.pos)
    if any(d <= 0 for d in out.shape[1:]):
        raise _fail(node, in_shapes, f"the output would be {tuple(out.shape[1:])}", _hint(op.op))
    return tuple(out.shape[1:])


def _hollow(module: nn.Module) -> None:
    """Swap a meta module's parameters and buffers for CPU tensors of their shapes that hold one number
    (zero strides): enough for the CPU kernels' shape checks on an empty batch, which read no element."""
    for sub in module.modules():
        for table in (sub._parameters, sub._buffers):
            for name, tensor in table.items():
                if tensor is not None:
                    table[name] = torch.zeros((), dtype=tensor.dtype).expand(tensor.shape)


def _first_line(err: Exception) -> str:
    """The first line of a library's message, without C++ frames (torch appends them to some errors)."""
    lines = str(err).strip().splitlines() or [type(err).__name__]
    return lines[0][:300]


def _hint(op: str) -> str:
    return {
        "conv": "the input is smaller than the kernel: lower kernel/stride, add pad, or move the node earlier",
        "maxpool": "the input is smaller than the window: lower kernel/stride or move the node earlier",
        "avgpool": "the input is smaller than the window: lower kernel/stride or move the node earlier",
        "concat": "concat needs equal height and width: match strides/pooling of its inputs",
        "batchnorm": "batchnorm needs a (C,H,W) or (F,) input",
    }.get(op, "check the node's parameters against its input shape")
