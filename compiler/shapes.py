"""Pass 6, infer shapes: every node's module is built for its input shapes and run on torch's meta
device (no memory, no arithmetic), so shapes come from torch itself. Records shape, params, FLOPs."""
from __future__ import annotations

import networkx as nx
import torch
from torch import nn

from netspec.errors import SpecError
from netspec.ops import Call, Custom
from compiler.graph import in_order


def infer_shapes(g: nx.DiGraph) -> nx.DiGraph:
    """Annotate each op node with `shape` (C,H,W or F), `params` and `flops` (for one example).

    Nodes with the same op parameters and input shapes (the copies of a repeated block) are built and
    run once; the modules built here stay on the meta device and are dropped (lowering builds real ones).
    """
    g.nodes[g.graph["input"]].update(params=0, flops=0)
    seen: dict[tuple, tuple] = {}  # (op params, input shapes) -> (shape, params, flops)
    with torch.no_grad():
        for name in in_order(g):
            attrs = g.nodes[name]
            if attrs["kind"] != "op":
                continue
            in_shapes = [g.nodes[source]["shape"] for source in attrs["inputs"]]
            key = (type(attrs["op"]), attrs["op"].model_dump_json(exclude={"name", "from_", "init"}), tuple(in_shapes))
            if key not in seen:
                module = _build(name, attrs, in_shapes)
                shape = _run(name, attrs, module, in_shapes)
                params = sum(p.numel() for p in module.parameters()) if isinstance(module, nn.Module) else 0
                seen[key] = (shape, params, attrs["op"].flops(module, shape))
            shape, params, flops = seen[key]
            attrs.update(in_shapes=in_shapes, shape=shape, params=params, flops=flops)
    return g


def _fail(name: str, attrs: dict, in_shapes: list, problem: str, fix: str) -> SpecError:
    shown = " and ".join(f"{tuple(s)} from '{src}'" for s, src in zip(in_shapes, attrs["inputs"]))
    via = f" {attrs['via']}" if attrs.get("via") else ""
    return SpecError(f"node '{name}' ({attrs['op'].op}{via}) cannot take input {shown}: {problem}", fix, attrs["pos"])


def _build(name: str, attrs: dict, in_shapes: list):
    op = attrs["op"]
    try:
        if isinstance(op, Custom):
            return op.build(in_shapes)  # user code: built for real, it may not support meta
        with torch.device("meta"):
            return op.build(in_shapes)
    except PermissionError as err:
        raise SpecError(f"node '{name}': {err}", "only allow custom ops from specs you trust", attrs["pos"]) from None
    except (ImportError, AttributeError) as err:
        raise SpecError(f"node '{name}': cannot import '{op.target}': {err}", "check the import path", attrs["pos"]) from None
    except (ValueError, RuntimeError, TypeError) as err:
        raise _fail(name, attrs, in_shapes, str(err), "check the node's parameters against its input") from None


def _run(name: str, attrs: dict, module, in_shapes: list) -> tuple[int, ...]:
    if attrs["op"].needs_map and any(len(s) != 3 for s in in_shapes):
        raise _fail(name, attrs, in_shapes, f"{attrs['op'].op} needs a (C, H, W) feature map",
                    "move the node before the flatten/fc/gap that made the vector")
    if attrs["op"].keeps_shape:
        return tuple(in_shapes[0])
    device = "cpu" if isinstance(attrs["op"], Custom) else "meta"
    inputs = [torch.empty((1, *shape), device=device) for shape in in_shapes]
    if attrs["op"].op == "add" and len({tuple(s) for s in in_shapes}) > 1:
        raise _fail(name, attrs, in_shapes, "the shapes differ", "an add needs equal shapes: match channels (conv `out`) "
                    "and size (stride/pooling) of its inputs, or use a shortcut node")
    try:
        out = module.fn(*inputs, **module.kwargs) if isinstance(module, Call) else module(*inputs)
    except (RuntimeError, ValueError, IndexError) as err:
        problem = str(err).splitlines()[0]
        raise _fail(name, attrs, in_shapes, problem, _hint(attrs["op"].op)) from None
    if not isinstance(out, torch.Tensor):
        raise SpecError(f"node '{name}' returns {type(out).__name__}, not a tensor", "a node must return one tensor", attrs["pos"])
    if any(d <= 0 for d in out.shape):
        raise _fail(name, attrs, in_shapes, f"the output would be {tuple(out.shape[1:])}", _hint(attrs["op"].op))
    return tuple(out.shape[1:])


def _hint(op: str) -> str:
    return {
        "conv": "the input is smaller than the kernel: lower kernel/stride, add pad, or move the node earlier",
        "maxpool": "the input is smaller than the window: lower kernel/stride or move the node earlier",
        "avgpool": "the input is smaller than the window: lower kernel/stride or move the node earlier",
        "concat": "concat needs equal height and width: match strides/pooling of its inputs",
        "batchnorm": "batchnorm needs a (C,H,W) or (F,) input",
    }.get(op, "check the node's parameters against its input shape")
