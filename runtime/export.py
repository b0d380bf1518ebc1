"""Export: checkpoint → training GraphModule → (one exit: pruned) → a deployable file, checked before it is written.

Targets are registered by file suffix (`EXPORT_TARGETS`); ONNX (`.onnx`) goes through torch.onnx's dynamo
exporter with the batch axis dynamic and netspec metadata, then `onnx.checker`, then onnxruntime against
torch on a random batch and on real test images (`verify.py`); the file is written only when every
difference is within the tolerance. Adding a target is one class here.
"""
from __future__ import annotations

import contextlib
import json
import logging
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

import netspec
from netspec.compiler import Compiled
from netspec.errors import UserError
from netspec.project import atomic_write
from netspec.compiler.checkpoint_format import load_checkpoint
from netspec.runtime.checkpoint import check_heads, load_weights
from netspec.runtime.data import load_dataset
from netspec.runtime.predict import META
from netspec.runtime.report import QUIET, Report
from netspec.runtime.verify import check_batches, compare_with_torch

BATCH_AXIS = "batch"
ALL_HEADS = "all"  # the `exit` metadata of an unpruned model


class ExportTarget:
    """One deployable format: `convert` the eval-mode module to bytes, then `check` them against it."""

    suffix: ClassVar[str]

    def convert(self, model, compiled: Compiled, outputs: list[str], meta: dict[str, str], report: Report) -> bytes:
        raise NotImplementedError

    def check(self, model, data: bytes, outputs: list[str], batches, report: Report) -> None:
        raise NotImplementedError


EXPORT_TARGETS: dict[str, type[ExportTarget]] = {}


def target(cls: type[ExportTarget]) -> type[ExportTarget]:
    """Class decorator: register an export target under its file suffix."""
    EXPORT_TARGETS[cls.suffix] = cls
    return cls


@target
class OnnxTarget(ExportTarget):
    """ONNX through the dynamo exporter, checked with `onnx.checker` and against torch in onnxruntime."""

    suffix = ".onnx"

    def convert(self, model, compiled, outputs, meta, report):
        import onnx

        spec = compiled.spec
        proto = to_onnx(model, spec.input.name, spec.input.shape, outputs)
        onnx.helper.set_model_props(proto, meta)
        onnx.checker.check_model(proto, full_check=True)
        report.say(f"onnx.checker: ok — {len(proto.graph.node)} nodes, {_parameter_count(proto):,} parameters, "
                   f"input {spec.input.name} [{BATCH_AXIS}, {', '.join(map(str, spec.input.shape))}], "
                   f"outputs {', '.join(outputs)}")
        return proto.SerializeToString()

    def check(self, model, data, outputs, batches, report):
        compare_with_torch(model, data, outputs, batches, report)


def export(compiled: Compiled, out: Path, *, head: str | None, checkpoint: str | None = None,
           random_init: bool = False, report: Report = QUIET) -> None:
    """Write `compiled` (one exit when `head` is given, else every head) to `out`, checked, in the format its
    suffix names. Raises ExportMismatch when the exported model and torch differ beyond the tolerance (no file
    is written)."""
    if out.suffix not in EXPORT_TARGETS:
        raise UserError(f"cannot export to '{out.name}'", f"give a file ending in {', '.join(EXPORT_TARGETS)}")
    data = checked_bytes(compiled, out.suffix, head, checkpoint, random_init, _test_data(compiled, report), report)
    atomic_write(out, data)
    report.say(f"wrote {out} ({len(data) / 1e6:.1f} MB)")


def checked_bytes(compiled: Compiled, suffix: str, head: str | None, checkpoint: str | None, random_init: bool,
                  dataset, report: Report) -> bytes:
    """The model (one exit when `head` is given, else every head) in the format of `suffix`, checked against
    torch on a random batch and `dataset`'s test images; raises ExportMismatch."""
    exporter = EXPORT_TARGETS[suffix]()
    model = (compiled.exit_module(head) if head else compiled.module).eval()
    weights = apply_checkpoint(compiled, model, checkpoint, random_init, report)
    outputs = [head] if head else list(compiled.heads)
    spec = compiled.spec
    meta = metadata(compiled, head, class_names(spec, dataset), weights)
    exported = f"exit {head}" if head else f"all heads ({', '.join(outputs)})"
    report.say(f"{spec.name}: {exported}, weights {weights}")
    data = exporter.convert(model, compiled, outputs, meta, report)
    exporter.check(model, data, outputs, check_batches(spec, dataset), report)
    return data


def apply_checkpoint(compiled, model, checkpoint: str | None, random_init: bool, report: Report) -> str:
    """Load the checkpoint's weights into the module to export (every tensor it needs must be there, with its
    shape; the weights of pruned branches are not needed); return how the metadata describes them."""
    if random_init:
        if checkpoint:
            raise UserError("--checkpoint and --random-init exclude each other", "give one of them")
        return "random-init"
    if not checkpoint:
        raise UserError(f"no checkpoint of {compiled.spec.name} to export", "train first (`netspec train`), give "
                        "--checkpoint PATH or --run DIR, or pass --random-init to export untrained weights (a smoke test)")
    path = Path(checkpoint)
    state = load_checkpoint(path)
    check_heads(state, compiled, list(model.meta.get("heads") or compiled.heads), path, "export")
    trained_from = f"spec '{state.get('spec_name')}' (hash {state.get('spec_hash')})"
    try:
        load_weights(model, state["model"], path, unused_ok=True)
    except UserError as err:
        raise UserError(f"{path} was trained from {trained_from}, whose weights do not fit {compiled.path} with "
                        f"these overrides (hash {compiled.spec_hash}): {err.what}",
                        "export with the spec and overrides it was trained with, or give this spec's checkpoint") from None
    if state.get("spec_hash") != compiled.spec_hash:
        same = "the graph of what is exported is unchanged" if state.get("structure") else \
            "every weight this model needs is in it, by name and shape"
        report.note(f"note: {path} was trained from {trained_from}; {same}")
    return f"{path} (epoch {state.get('epoch')})"


@contextlib.contextmanager
def _quiet_exporter():
    """Hide the exporter's own chatter (deprecation notices from torch internals, skipped torchvision ops)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def to_onnx(module, input_name: str, input_shape: tuple[int, ...], output_names: list[str]):
    """An eval-mode module as an `onnx.ModelProto` (dynamo exporter), its batch axis dynamic, its nodes and tensors
    named after the spec's nodes."""
    example = torch.zeros(2, *input_shape)  # batch 2: torch.export specialises sizes 0 and 1
    with _quiet_exporter():
        program = torch.onnx.export(module, (example,), dynamo=True, verbose=False, input_names=[input_name],
                                    output_names=output_names, dynamic_shapes=({0: torch.export.Dim(BATCH_AXIS)},))
    proto = program.model_proto
    onnx_passes(proto)
    return proto


def onnx_passes(proto) -> None:
    """The passes every exported graph goes through, in place: `spec_names`, then `fast_average_pools`."""
    spec_names(proto)
    fast_average_pools(proto)


def fast_average_pools(proto) -> None:
    """Give each `AveragePool` with `ceil_mode=1, count_include_pad=1` (what torch exports for Caffe-style ceil
    pooling, e.g. the CNDS aux heads) an equal form that onnxruntime runs on its fast path, in place. Measured (ours,
    onnxruntime CPU, 1 thread, 32×14×14, kernel 5, stride 2): 55 µs a call for that pair of attributes against 6 µs
    for any other, which also runs in the NCHWc layout of the convolutions around it.
    - no padding: `count_include_pad=0`. Both count the window's cells inside the input, as there are no pad cells;
    - stride 1 everywhere: `ceil_mode=0`. Rounding up changes nothing when every window step fits exactly.
    Others are left as they are: padding with a stride above 1, `auto_pad`, dilations, and a stride above the kernel
    (where onnxruntime's and ONNX shape inference's counts of ceil-mode windows differ)."""
    for node in proto.graph.node:
        if node.op_type != "AveragePool":
            continue
        attrs = {a.name: a for a in node.attribute}
        ceil, include_pad, auto_pad = (attrs.get(name) for name in ("ceil_mode", "count_include_pad", "auto_pad"))
        kernel, strides, pads, dilations = (_ints(attrs, name) for name in ("kernel_shape", "strides", "pads",
                                                                              "dilations"))
        if (ceil is None or not ceil.i or include_pad is None or not include_pad.i
                or auto_pad is not None and auto_pad.s not in (b"", b"NOTSET") or any(d != 1 for d in dilations)
                or any(s > k for s, k in zip(strides, kernel))):
            continue
        if not any(pads):
            include_pad.i = 0
        elif all(s == 1 for s in strides):
            ceil.i = 0


def _ints(attrs: dict, name: str) -> list[int]:
    """An INTS attribute's values ([] when absent)."""
    return list(attrs[name].ints) if name in attrs else []


def spec_names(proto) -> None:
    """Name the graph's nodes and tensors after the spec's nodes (`conv4_1`, not `node_conv2d_4`), so Netron shows
    the user's graph. The dynamo exporter records each node's module path (`pkg.torch.onnx.name_scopes`; submodules
    are named after spec nodes); a spec node lowered to several ONNX nodes names its last one (and its output
    tensor) plainly and the others `<node>/<OpType>`. Graph inputs, outputs and initialisers keep their names."""
    import ast

    nodes = list(proto.graph.node)
    scope_of = {}
    for index, node in enumerate(nodes):
        props = {p.key: p.value for p in node.metadata_props}
        try:
            scopes = ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))
        except (ValueError, SyntaxError):
            scopes = []
        if len(scopes) >= 2 and scopes[1]:
            scope_of[index] = scopes[1]
    last = {scope: index for index, scope in scope_of.items()}
    fixed = {v.name for v in proto.graph.input} | {v.name for v in proto.graph.output} | \
        {t.name for t in proto.graph.initializer}
    node_names, tensor_names, tensors = set(), set(fixed), {}  # ONNX keeps node and tensor names apart
    for index, node in enumerate(nodes):
        scope = scope_of.get(index)
        if scope is None:
            continue
        plain = last[scope] == index
        name = _unique(scope if plain else f"{scope}/{node.op_type}", node_names)
        node.name = name
        for i, out in enumerate(node.output):
            if out and out not in fixed:
                tensors[out] = _unique(name if plain and i == 0 else f"{name}:{i}", tensor_names)
    for node in proto.graph.node:
        node.input[:] = [tensors.get(t, t) for t in node.input]
        node.output[:] = [tensors.get(t, t) for t in node.output]
    for info in proto.graph.value_info:
        info.name = tensors.get(info.name, info.name)


def _unique(name: str, taken: set[str]) -> str:
    out, k = name, 1
    while out in taken:
        k += 1
        out = f"{name}_{k}"
    taken.add(out)
    return out


def metadata(compiled, head: str | None, classes: list[str], weights: str) -> dict[str, str]:
    """The `metadata_props` of an exported model: what `predict` (or anyone) needs to use it."""
    spec = compiled.spec
    values = {
        "version": netspec.__version__, "spec_name": spec.name, "spec_hash": compiled.spec_hash,
        "exit": head or ALL_HEADS, "weights": weights,
        "input_shape": list(spec.input.shape), "mean": spec.input.mean, "std": spec.input.std,
        "normalisation": "(pixel / 255 - mean) / std, per channel", "classes": classes,
    }
    return {META + key: value if isinstance(value, str) else json.dumps(value) for key, value in values.items()}


def _parameter_count(proto) -> int:
    return sum(int(np.prod(t.dims)) for t in proto.graph.initializer)


def _test_data(compiled: Compiled, report: Report):
    """The spec's data set, or None (saying why) when it is not available."""
    spec = compiled.spec
    try:
        return load_dataset(spec.data, spec.input.shape, compiled.limits)
    except UserError as err:
        report.note(f"no test data ({err.what}): comparing on a random batch only")
        return None


def class_names(spec, dataset) -> list[str]:
    """The data set's class names when they fit the spec's class count, else `data.classes`, else 0, 1, ..."""
    if dataset is not None and len(dataset.classes) == spec.classes:
        return list(dataset.classes)
    if spec.data.classes and len(spec.data.classes) == spec.classes:
        return list(spec.data.classes)
    return [str(i) for i in range(spec.classes)]
