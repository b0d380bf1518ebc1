"""Issue 10, class 2: every numeric field of every schema model × {0, -1, inf, -inf, nan, 2**70}.

The field list is derived from the pydantic models (a field added tomorrow is covered without editing this
file). Each value must compile, or fail with a SpecError pointing at the field's line; what compiles must also
survive the runtime pieces that read it (objective, learning-rate policy, optimizer, augmentation) without
anything but a UserError.
"""
from __future__ import annotations

import copy
import json
import math
import typing
from types import UnionType

import pytest
import torch
from pydantic import BaseModel

from netspec.compiler import analyse
from netspec.data_spec import Augment, DataSpec
from netspec.errors import SpecError, UserError
from netspec.ops import REGISTRY, CopyOf, Custom, NodeInit
from netspec.schedules import SCHEDULES
from netspec.solver import LR_POLICIES, OPTIMIZERS, TrainSpec
from netspec.spec import BlockNode, CrossEntropyLoss, InitDefaults, InputSpec, Spec, SynergyLoss

VALUES = [0, -1, math.inf, -math.inf, math.nan, 2**70]

# One node of every op, in an order where each fits its input: the node named after its op is the one mutated.
NODES = [
    {"name": "conv", "op": "conv", "out": 4, "kernel": 3, "pad": 1},
    {"name": "batchnorm", "op": "batchnorm"},
    {"name": "prelu", "op": "prelu"},
    {"name": "relu", "op": "relu"},
    {"name": "leaky_relu", "op": "leaky_relu"},
    {"name": "maxpool", "op": "maxpool", "kernel": 1},
    {"name": "avgpool", "op": "avgpool", "kernel": 1},
    {"name": "lrn", "op": "lrn"},
    {"name": "dropout", "op": "dropout"},
    {"name": "identity", "op": "identity"},
    {"name": "shortcut", "op": "shortcut", "out": 4},
    {"name": "add", "op": "add", "from": ["shortcut", "identity"]},
    {"name": "concat", "op": "concat", "from": ["add", "identity"]},
    {"name": "softmax", "op": "softmax"},
    {"name": "sigmoid", "op": "sigmoid"},
    {"name": "tanh", "op": "tanh"},
    {"name": "gscale", "op": "grad_scale", "scale": 0.5},
    {"name": "eltwise", "op": "eltwise", "from": ["gscale", "sigmoid"]},
    {"name": "blk", "block": "b", "repeat": 2},
    {"name": "gap", "op": "gap"},
    {"name": "flatten", "op": "flatten"},
    {"name": "fc", "op": "fc", "out": 3},
]
BASE = {
    "name": "numbers", "input": {"shape": [3, 6, 6], "mean": [0.5], "std": [0.25]}, "classes": 3,
    "blocks": {"b": {"nodes": [{"name": "r", "op": "relu"}]}},
    "init": {"weight": {"type": "gaussian"}, "bias": 0.0},
    "nodes": NODES,
    "branches": {"aux": {"from": "relu", "nodes": [{"name": "gap", "op": "gap"}, {"name": "fc", "op": "fc", "out": 3,
                                                                                 "init": {"bias": 0.0}}]}},
    "losses": {"main": {"head": "main"}, "aux": {"head": "aux", "weight": 0.3, "schedule": {"type": "constant"}},
               "syn": {"type": "synergy"}},
    "data": {"augment": {"crop_pad": 1, "flip": True}},
    "train": {"optimizer": {"type": "sgd"}, "lr_schedule": {"type": "cosine"}},
}
REQUIRED = {"zero_after": {"epoch": 1}, "ramp": {"epochs": 2}}  # schedules' required fields


def hosts():
    """(model, label, where in BASE the model's mapping is, the mapping to put there) for every model."""
    out = [(Spec, "spec", (), None), (InputSpec, "input", ("input",), None), (DataSpec, "data", ("data",), None),
           (Augment, "augment", ("data", "augment"), None), (TrainSpec, "train", ("train",), None),
           (InitDefaults, "init", ("init",), None), (NodeInit, "node init", ("branches", "aux", "nodes", 1, "init"), None),
           (BlockNode, "block node", ("nodes", next(i for i, n in enumerate(NODES) if "block" in n)), None), (CrossEntropyLoss, "loss", ("losses", "aux"), None),
           (SynergyLoss, "synergy", ("losses", "syn"), None)]
    for name, cls in REGISTRY.items():
        if cls not in (Custom, CopyOf):  # both need code (custom: a target; copy_of: a `backbone:`)
            index = next(i for i, n in enumerate(NODES) if n.get("op") == name)
            out.append((cls, f"op {name}", ("nodes", index), None))
    for name, cls in SCHEDULES.items():
        out.append((cls, f"schedule {name}", ("losses", "aux", "schedule"), {"type": name, **REQUIRED.get(name, {})}))
    for name, cls in OPTIMIZERS.items():
        out.append((cls, f"optimizer {name}", ("train", "optimizer"), {"type": name}))
    for name, cls in LR_POLICIES.items():
        out.append((cls, f"lr policy {name}", ("train", "lr_schedule"), {"type": name}))
    from netspec.ops import Constant, Gaussian, Kaiming, TorchDefault, Xavier
    for cls in (Gaussian, Kaiming, Xavier, Constant, TorchDefault):
        tag = typing.get_args(cls.model_fields["type"].annotation)[0]
        out.append((cls, f"init {tag}", ("init", "weight"), {"type": tag}))
    return out


def numeric_shapes(annotation) -> list[str]:
    """How a field holds numbers: 'scalar', 'list' (a list/tuple of them, any length) or 'pair' — from its type."""
    found = set()

    def walk(tp, inside):
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            walk(typing.get_args(tp)[0], inside)
        elif origin in (typing.Union, UnionType):
            for arg in typing.get_args(tp):
                walk(arg, inside)
        elif origin in (list, tuple):
            args = [a for a in typing.get_args(tp) if a is not Ellipsis]
            for arg in args:
                walk(arg, "pair" if origin is tuple and len(args) == 2 else "list")
        elif tp in (int, float):
            found.add(inside)

    walk(annotation, "scalar")
    return sorted(found)


def cases():
    out = []
    for model, label, where, mapping in hosts():
        for field_name, field in model.model_fields.items():
            if field_name in ("at", "key_at"):
                continue
            for shape in numeric_shapes(field.annotation):
                for value in VALUES:
                    key = field.alias or field_name
                    out.append(pytest.param(where, mapping, key, shape, value, id=f"{label}.{key}[{shape}]={value}"))
    return out


CASES = cases()


def test_every_numeric_field_is_covered():
    """The derivation finds the fields the issue names (a guard against it silently finding nothing)."""
    ids = {c.id.split("=")[0] for c in CASES}
    for field in ["op conv.kernel[scalar]", "op conv.stride[pair]", "op conv.pad[scalar]", "op conv.dilation[scalar]",
                  "block node.repeat[scalar]", "loss.weight[scalar]", "synergy.beta[scalar]",
                  "optimizer sgd.lr[scalar]", "init gaussian.std[scalar]", "augment.crop_pad[scalar]",
                  "optimizer adam.betas[pair]", "input.shape[list]", "input.std[list]", "spec.classes[scalar]"]:
        assert field in ids, field
    assert len(CASES) > 350


def _set(spec: dict, where: tuple, mapping, key: str, value):
    target = spec
    for part in where[:-1]:
        target = target[part]
    if where:
        if mapping is not None:
            target[where[-1]] = copy.deepcopy(mapping)
        target = target[where[-1]]
    target[key] = value


def _value(shape: str, value, current):
    if shape == "scalar":
        return value
    if shape == "pair":
        return [value, 1]
    length = len(current) if isinstance(current, list) else 3
    return [value] + [1] * (length - 1)


def _dump(spec: dict) -> str:
    """JSON is YAML; the non-finite floats in YAML's spelling."""
    text = json.dumps(spec, allow_nan=True)
    return text.replace("-Infinity", "-.inf").replace("Infinity", ".inf").replace("NaN", ".nan")


@pytest.fixture(scope="module")
def tiny_batch():
    torch.manual_seed(0)
    return torch.randint(0, 255, (4, 3, 6, 6), dtype=torch.uint8), torch.tensor([0, 1, 2, 0])


@pytest.mark.parametrize("where,mapping,key,shape,value", CASES)
def test_numeric_field(tmp_path, tiny_batch, where, mapping, key, shape, value):
    spec = copy.deepcopy(BASE)
    holder = spec
    for part in where:
        holder = holder[part] if not (mapping is not None and part == where[-1]) else (mapping or {})
    current = holder.get(key) if isinstance(holder, dict) else None
    _set(spec, where, mapping, key, _value(shape, value, current))
    path = tmp_path / "spec.yaml"
    text = _dump(spec)
    path.write_text(text)
    try:
        compiled_spec, net = analyse(path)
    except SpecError as err:
        assert err.pos is not None and err.pos.file == str(path), str(err)
        assert "Traceback" not in str(err) and len(str(err)) < 600, str(err)
        return
    assert not (isinstance(value, float) and not math.isfinite(value)), f"{value} was accepted"  # refused everywhere
    _runtime_reads(compiled_spec, net, tiny_batch)


def _runtime_reads(spec, net, batch):
    """What train reads of the sections a field may be in: each must work or raise a UserError."""
    from netspec.runtime.data.batches import augment_batch
    from netspec.runtime.objective import Objective
    from netspec.runtime.train import lr_factor

    x, y = batch
    try:
        objective = Objective(net)
        logits = {head: torch.randn(len(y), spec.classes) for head in net.heads}
        for epoch in (0, 0.5, 1, spec.train.epochs - 1):
            objective(logits, y, epoch)
        factor = lr_factor(spec.train.lr_schedule, spec.train.optimizer.lr, spec.train.epochs, 3)
        for step in (0, 1, 2, 3 * spec.train.epochs - 1):
            assert math.isfinite(factor(step))
        spec.train.optimizer.build([torch.nn.Parameter(torch.zeros(2))])
        augment_batch(x, spec.data.augment, torch.Generator().manual_seed(0))
    except UserError:
        pass
