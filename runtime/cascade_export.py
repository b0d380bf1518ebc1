"""`netspec export --cascade DIR`: the trained model as an early-exit cascade of ONNX segments (`compiler/cascade.py`
cuts the graph; `runtime/cascade.py` runs it), checked in onnxruntime before anything is written.

The check, on a random batch and on real test images (`verify.check_batches`): every segment's outputs equal the
torch activations they stand for, and the cascade run with every threshold at 1.0 (never exit early) equals the
full model's main output, within `verify.TOLERANCE` × max(1, max |logit|). The pruned main exit alone is
written too, as `full.onnx` (exported and checked as `netspec export --prune-aux` does): the reference that
calibration and the benchmark time the cascade against.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

import netspec
from netspec.compiler import Compiled
from netspec.compiler.cascade import CONFIDENCE, Segment, split
from netspec.project import atomic_write
from netspec.spec import MAIN_HEAD
from netspec.runtime.cascade import ANYTIME, FORMAT, FULL, MANIFEST, Cascade, check_thresholds, session, write_anytime, write_manifest
from netspec.runtime.export import (BATCH_AXIS, _quiet_exporter, _test_data, apply_checkpoint, checked_bytes,
                                    class_names, onnx_passes)
from netspec.runtime.report import QUIET, Report
from netspec.runtime.verify import TOLERANCE, ExportMismatch, check_batches


def segment_onnx(segment: Segment, examples: list[torch.Tensor]):
    """One segment as an `onnx.ModelProto`: inputs and outputs named as in the manifest, the batch axis dynamic."""
    import onnx

    batch = torch.export.Dim(BATCH_AXIS)
    with _quiet_exporter():
        program = torch.onnx.export(segment.module, tuple(examples), dynamo=True, verbose=False,
                                    input_names=list(segment.inputs), output_names=list(segment.outputs),
                                    dynamic_shapes=tuple({0: batch} for _ in examples))
    proto = program.model_proto
    onnx_passes(proto)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def torch_values(segments: list[Segment], input_name: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every segment's outputs in torch, chained (inputs looked up by name)."""
    values = {input_name: x}
    with torch.no_grad():
        for seg in segments:
            outs = seg.module(*(values[name] for name in seg.inputs))
            values.update(zip(seg.outputs, outs))
    return values


def export_cascade(compiled: Compiled, out: Path, *, checkpoint: str | None = None, random_init: bool = False,
                   thresholds: list[float] | None = None, criterion: str = "max", report: Report = QUIET) -> dict:
    """Write the cascade directory `out` (segment files, full.onnx, manifest.json); return the manifest. Every
    segment but the last computes its exit's confidence by `criterion` (a `compiler.cascade.CONFIDENCE` name)."""
    spec, net = compiled.spec, compiled.network
    model = compiled.module.eval()
    weights = apply_checkpoint(compiled, model, checkpoint, random_init, report)
    segments = split(model, net, criterion=criterion)
    for seg in segments:
        seg.module.eval()
    dataset = _test_data(compiled, report)
    order = " → ".join(s.exit for s in segments)
    report.say(f"{spec.name}: cascade of {len(segments)} segments ({order}), weights {weights}")
    example = torch.zeros(2, *spec.input.shape)  # batch 2: torch.export specialises sizes 0 and 1
    values = torch_values(segments, spec.input.name, example)
    exits = [seg.exit for seg in segments]
    thresholds = [1.0] * len(segments) if thresholds is None else check_thresholds(thresholds, exits)
    total, entries, protos = 0, [], []
    for k, seg in enumerate(segments):
        protos.append(segment_onnx(seg, [values[name] for name in seg.inputs]))
        total += seg.flops
        entries.append({"exit": seg.exit, "file": f"{k:02d}_{seg.exit}.onnx", "inputs": list(seg.inputs),
                        "outputs": list(seg.outputs), "nodes": len(seg.nodes), "flops": seg.flops,
                        "head_flops": seg.head_flops, "cumulative_flops": total,
                        "threshold": thresholds[k]})
    manifest = {"netspec_version": netspec.__version__, "spec_name": spec.name, "spec_hash": compiled.spec_hash,
                "weights": weights, "format": FORMAT, "criterion": criterion,
                "criterion_text": f"leave at exit k when its confidence '{criterion}' > threshold_k "
                                  f"({CONFIDENCE[criterion].__doc__}); the last exit takes the rest",
                "input": {"name": spec.input.name, "shape": list(spec.input.shape), "mean": spec.input.mean,
                          "std": spec.input.std},
                "classes": class_names(spec, dataset), "full_flops": sum(net.nodes[n].flops for n in net.ancestry(MAIN_HEAD)),
                "full": FULL, "segments": entries}
    full = checked_bytes(compiled, ".onnx", MAIN_HEAD, checkpoint, random_init, dataset, report)
    with tempfile.TemporaryDirectory(prefix="cascade-") as tmp:
        tmp = Path(tmp)
        for entry, proto in zip(entries, protos):
            (tmp / entry["file"]).write_bytes(proto.SerializeToString())
        (tmp / FULL).write_bytes(full)
        write_manifest(tmp, manifest)
        cascade = Cascade.load(tmp)
        write_anytime(cascade, tmp / ANYTIME, every_exit=True)
        check_cascade(model, segments, cascade, spec.input.name, check_batches(spec, dataset), report)
        out.mkdir(parents=True, exist_ok=True)
        for name in [e["file"] for e in entries] + [FULL, ANYTIME]:
            shutil.copyfile(tmp / name, out / name)
        atomic_write(out / MANIFEST, (tmp / MANIFEST).read_text())
    for entry in entries:
        report.say(f"  {entry['file']:<24} inputs {', '.join(entry['inputs']):<28} "
                   f"outputs {', '.join(entry['outputs']):<36} cumulative {entry['cumulative_flops'] / 1e6:.2f} MFLOPs")
    report.say(f"wrote {out}/ ({len(entries)} segments, {FULL} (the main exit alone, {manifest['full_flops'] / 1e6:.2f} "
               f"MFLOPs), {ANYTIME} (the cascade as one model with If nodes) and {MANIFEST})")
    return manifest


def export_anytime(compiled: Compiled, out: Path, *, thresholds: list[float] | None = None, report: Report = QUIET,
                   **options) -> None:
    """`netspec export --anytime OUT.onnx`: the cascade (exported and checked as `export_cascade` does) as one
    model with `If` nodes. Without thresholds it keeps every exit (thresholds 1.0, to be fed at run time); with
    them, only the exits they let rows out at (`cascade_graph.deciding`), those thresholds its default."""
    with tempfile.TemporaryDirectory(prefix="anytime-") as tmp:
        export_cascade(compiled, Path(tmp) / "cascade", thresholds=thresholds, report=report, **options)
        cascade = Cascade.load(Path(tmp) / "cascade")
        write_anytime(cascade, out, every_exit=thresholds is None)
    report.say(f"wrote {out} (exits {', '.join(cascade.exits)}; inputs {cascade.input_name} and thresholds, outputs "
               "logits and exit)")


def check_cascade(model, segments: list[Segment], cascade: Cascade, input_name: str, batches, report: Report) -> None:
    """Segments in onnxruntime vs torch activations, and thresholds 1.0 vs the full model's main output."""
    failures = []
    report.say(f"onnxruntime cascade vs torch, max |difference| (tolerance {TOLERANCE:g} × max(1, max |value|)):")

    def compare(what, got, reference, description):
        diff = float(np.abs(got - reference).max())
        limit = TOLERANCE * max(1.0, float(np.abs(reference).max()))
        if not diff <= limit:
            failures.append(f"{what} on the {description}: {diff:.2e} > {limit:.2e}")
        return diff

    for description, x, _ in batches:
        expected = torch_values(segments, input_name, x)
        got = cascade.values(x.numpy())
        worst = max(compare(name, got[name], expected[name].numpy(), description)
                    for name in expected if name != input_name)
        with torch.no_grad():
            main = model(x)[MAIN_HEAD].numpy()
        logits, where, _ = cascade.run(x.numpy(), [1.0] * len(segments))
        main_diff = compare("cascade at thresholds 1.0 vs main", logits, main, description)
        anytime = session(cascade.folder / ANYTIME)
        one_model = anytime.run(None, {input_name: x.numpy(), "thresholds": np.ones(len(segments) - 1, np.float32)})
        compare(f"{ANYTIME} at thresholds 1.0 vs main", one_model[0], main, description)
        if not (where == len(segments) - 1).all() or int(one_model[1]) != len(segments) - 1:
            failures.append(f"an input left early at thresholds 1.0 on the {description}")
        report.say(f"  {description:<18} segments {worst:.1e}; cascade (thresholds 1.0) vs main {main_diff:.1e}")
    if failures:
        raise ExportMismatch("the cascade differs from torch beyond the tolerance: " + "; ".join(failures),
                             "no files written; report this with the spec — an op may export wrongly")

