"""Running an early-exit cascade (a directory written by `netspec export --cascade`): onnxruntime and numpy only,
never torch, like `predict`.

The directory holds one ONNX model per segment, the pruned main exit alone (`full.onnx`) and `manifest.json`:
the segments in order (shallow exit first, main last), each with its file, inputs, outputs (its exit's logits
first, then — on every segment but the last — the exit's confidence `<exit>:confidence`, then the features later
segments read), its FLOPs, the part of them only its exit needs (`head_flops`), the cumulative FLOPs of leaving at
its exit with every exit run, and a threshold per exit. What a row costs depends on the thresholds: the heads of
exits whose threshold is 1 are not run (`exit_costs`).

The confidence is computed inside each segment's graph (`compiler/cascade.py`, `CONFIDENCE`: max softmax
probability, margin p1 − p2, or 1 − entropy / ln C), one number per row on 0..1. An input leaves at exit k when
confidence_k > threshold_k (strictly): threshold 1 never exits early, threshold 0 always does (unless the
confidence is exactly 0). The main (last) exit takes every input that reaches it; its threshold is not used.

The runner (`Cascade`) creates every session once per plan with one set of options (`session_options`). A batch
of one runs in one onnxruntime call of the plan's `If` model (`Plan.single`: the decisions inside the graph, no
Python between stages). A larger batch is the batched early exit: each stage runs only on the rows still in the
cascade, the hand-off tensors stay onnxruntime `OrtValue`s from one stage to the next (no numpy round trip), one
float per row decides, and results come back in input order with the exit and the cost of every row.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from netspec.errors import UserError
from netspec.runtime.cascade_graph import compose_anytime, deciding, float32_thresholds, plan

MANIFEST = "manifest.json"
FULL = "full.onnx"  # the pruned main exit alone, beside the segments
EXPORT_COMMAND = "`netspec export SPEC --cascade DIR`"  # what writes a cascade directory, for the errors
FORMAT = 3  # manifest format: 3 = `head_flops`; 2 = the confidence a graph output; 1 = the confidence in numpy


class CascadeResult(NamedTuple):
    """What `Cascade.run` returns, one row per input row, in input order."""

    logits: np.ndarray  # N×C float32: the logits of the exit each row left at
    exit: np.ndarray  # N int64: the index of that exit (0 = the shallowest, len(exits) − 1 = main)
    flops: np.ndarray  # N int64: the cost of the row, the FLOPs run to its exit (`exit_costs`)


def read_manifest(folder: Path) -> dict:
    """The manifest of a cascade directory, every field the runner uses checked: a bad one is one error naming it."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        what = f"no {MANIFEST} in {folder}" if Path(folder).is_dir() else f"{folder} does not exist"
        raise UserError(what, f"give a directory written by {EXPORT_COMMAND}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise UserError(f"{path} is not JSON: {err}", "export the cascade again") from None
    check_manifest(manifest, path)
    return manifest


def check_manifest(manifest, path: Path) -> None:
    again = f"export the cascade again ({EXPORT_COMMAND})"

    def bad(what: str):
        raise UserError(f"{path}: {what}", again)

    if not isinstance(manifest, dict) or "segments" not in manifest:
        bad("is not a netspec cascade manifest")
    if manifest.get("format") != FORMAT:
        bad(f"has format {manifest.get('format', 1)!r}, this netspec reads format {FORMAT} (the confidence inside "
            "the segments, the FLOPs of each exit's head)")
    if not isinstance(manifest.get("criterion"), str):
        bad("'criterion' must name the exit confidence")
    entry = manifest.get("input")
    if not (isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("shape"), list)
            and len(entry["shape"]) == 3 and all(type(d) is int and d > 0 for d in entry["shape"])):
        bad("'input' must give the input's name and shape [C, H, W]")
    if not (_number(manifest.get("full_flops")) and isinstance(manifest.get("full"), str)
            and _plain_file(manifest["full"])):
        bad("'full' must name the full model's file beside the manifest and 'full_flops' its FLOPs")
    segments = manifest["segments"]
    if not (isinstance(segments, list) and segments):
        bad("'segments' must be a non-empty list")
    known = {entry["name"]}
    for k, seg in enumerate(segments):
        where = f"segment {k}"
        if not isinstance(seg, dict) or not isinstance(seg.get("exit"), str):
            bad(f"{where} must be an object naming its 'exit'")
        where = f"segment {k} ({seg['exit']})"
        if not (isinstance(seg.get("file"), str) and _plain_file(seg["file"])):
            bad(f"{where}: 'file' must be a file name beside the manifest")
        for key in ("inputs", "outputs"):
            if not (isinstance(seg.get(key), list) and seg[key] and all(isinstance(v, str) for v in seg[key])):
                bad(f"{where}: '{key}' must be a non-empty list of names")
        missing = [name for name in seg["inputs"] if name not in known]
        if missing:
            bad(f"{where} reads {', '.join(missing)}, which no earlier segment outputs")
        if seg["outputs"][0] != seg["exit"]:
            bad(f"{where}: the first output must be the exit's logits '{seg['exit']}'")
        if k < len(segments) - 1 and len(seg["outputs"]) < 2:
            bad(f"{where}: the second output must be the exit's confidence")
        if not all(_number(seg.get(key)) for key in ("flops", "head_flops", "cumulative_flops")):
            bad(f"{where}: 'flops', 'head_flops' and 'cumulative_flops' must be numbers")
        if seg["head_flops"] > seg["flops"]:
            bad(f"{where}: 'head_flops' ({seg['head_flops']}) is more than the segment's 'flops' ({seg['flops']})")
        threshold = seg.get("threshold")
        if not (_number(threshold) and 0 <= threshold <= 1):
            bad(f"{where}: 'threshold' must be a number from 0 (always leave) to 1 (never), not {threshold!r}")
        known.update(seg["outputs"])


def _number(value) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and value >= 0


def _plain_file(name: str) -> bool:
    return bool(name) and Path(name).name == name and name not in (".", "..")


def check_thresholds(thresholds, exits: list[str]) -> list[float]:
    """Thresholds as given by a user: one per exit (the last one unused) or one per early exit; each 0..1."""
    if isinstance(thresholds, (str, bytes)) or not hasattr(thresholds, "__len__"):
        raise UserError(f"thresholds must be a list of numbers, not {thresholds!r}",
                        f"give one per early exit ({', '.join(exits[:-1])}), each from 0 (always leave) to 1 (never)")
    values = list(thresholds)
    if len(values) not in (len(exits) - 1, len(exits)):
        raise UserError(f"{len(values)} threshold(s) for a cascade of {len(exits)} exits ({', '.join(exits)})",
                        f"give {len(exits) - 1} (one per early exit; the last exit takes the rest)")
    for exit_name, value in zip(exits, values):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
                or not 0 <= float(value) <= 1:
            raise UserError(f"the threshold of exit {exit_name} is {value!r}",
                            "give a number from 0 (always leave there) to 1 (never leave there)")
    return [float(v) for v in values[:len(exits) - 1]] + [1.0]


def exit_costs(segments: list[dict], thresholds: list[float]) -> np.ndarray:
    """The FLOPs a row costs when it leaves at each exit, for the plan of `thresholds` (`cascade_graph.deciding`):
    the layers up to the exit and the heads of the deciding exits up to it; the head of an exit whose threshold is 1
    is not run. Thresholds below 1 everywhere give the manifest's `cumulative_flops`; 1 everywhere gives the full
    model's FLOPs at the last exit."""
    decide = set(deciding(thresholds))
    costs, total = [], 0
    for k, seg in enumerate(segments):
        total += seg["flops"] - seg["head_flops"]
        costs.append(total + seg["head_flops"])
        total += seg["head_flops"] if k in decide else 0
    return np.asarray(costs, np.int64)


def write_manifest(folder: Path, manifest: dict) -> None:
    from netspec.project import atomic_write

    atomic_write(Path(folder) / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def session_options(threads: int | None = 1):
    """The options of every session the runner and its benchmarks create (ours): every graph optimisation,
    sequential execution, `threads` intra-op threads (None: onnxruntime's default, one per core) and one
    inter-op thread. The same options for the segments and `full.onnx`, so a comparison is like for like."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    return options


def session(path: Path, threads: int | None = 1):
    """An onnxruntime CPU session with `session_options`."""
    import onnxruntime as ort

    if not Path(path).is_file():
        raise UserError(f"{path} is missing", "export the cascade again")
    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


def as_input(x, shape: tuple[int, ...]) -> np.ndarray:
    """`x` as a C-contiguous N×C×H×W float32 array of the model's input shape (a one-line error otherwise)."""
    x = np.asarray(x)
    if x.ndim == len(shape):
        x = x[None]
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != tuple(shape) or x.dtype.kind not in "fiu":
        raise UserError(f"input of shape {'×'.join(map(str, x.shape))} ({x.dtype}); the model takes N×"
                        + "×".join(map(str, shape)) + " numbers",
                        "give normalised float32 images, N×C×H×W (mean and std as in the manifest's 'input')")
    return np.ascontiguousarray(x, np.float32)


class Bound:
    """A session called with OrtValues in and out through the session's C++ binding
    (`InferenceSession._sess.run_with_ort_values`): the stages of a batched early exit, whose hand-off tensors never
    go through numpy. Measured at batch 1 on an empty call (docs/cascade.md): ~4 µs a call against ~6 µs for `run`
    with numpy, ~7 µs for an IOBinding whose outputs stay bound (a second call overwrites the first call's results)
    and 30–40 µs for IOBinding bound again at each call or the public `run_with_ort_values`. But on a real model at
    batch 1, reading the outputs with `.numpy()` made whole calls 5–20 % slower than `_sess.run` with numpy (load
    8, CPU clock): a batch of one goes through `Plan.single` instead."""

    def __init__(self, session, inputs: list[str], outputs: list[str]):
        from onnxruntime.capi import _pybind_state

        self.session, self.inputs, self.outputs = session, list(inputs), list(outputs)
        self._run = session._sess.run_with_ort_values
        self._plain = _pybind_state.OrtValue  # the C++ class; a public `OrtValue` wraps one as `_ortvalue`

    def __call__(self, values: dict) -> list:
        """Run on `values` (OrtValues, public or C++, by name, a superset of the inputs); return the outputs (C++
        OrtValues, with `.numpy()` and `.shape()`). A type test tells the two apart, instead of `getattr` with a
        default, which raises and catches an AttributeError for every C++ value."""
        plain = self._plain
        return self._run({name: v if type(v := values[name]) is plain else v._ortvalue for name in self.inputs},
                         self.outputs, None)


def _ortvalue_maker():
    """A function making an OrtValue (the C++ object, no Python wrapper) that views a C-contiguous numpy array on
    CPU without copying it: the public `OrtValue.ortvalue_from_numpy` costs ~6 µs a call in its wrapper, this ~1 µs.
    The caller keeps the array alive as long as the OrtValue is used."""
    from onnxruntime.capi import _pybind_state
    from onnxruntime.capi.onnxruntime_inference_collection import OrtDevice

    make, cpu = _pybind_state.OrtValue.ortvalue_from_numpy, OrtDevice.make("cpu", 0)._get_c_device()
    return lambda array: make(array, cpu)


def bind_full(sess) -> Bound:
    """A one-input, one-output session (`full.onnx`, an exported exit) as a `Bound`."""
    return Bound(sess, [sess.get_inputs()[0].name], [sess.get_outputs()[0].name])


@dataclass
class Stage:
    """One group of a plan loaded (`cascade_graph.plan`): its bound session, the exit it ends at and the values later
    stages read (gathered when rows leave)."""

    exit_index: int
    call: Bound
    keep: list[str]

    @property
    def outputs(self) -> list[str]:
        return self.call.outputs


@dataclass
class Plan:
    """The loaded plan of a set of deciding exits (for `thresholds`, any setting with those exits): its stages, the
    cost of leaving at each exit (`exit_costs`), and `single(x, early thresholds) -> (logits, exit)` for a batch of one, made by `Cascade.single` the first time a
    batch of one runs (callers that only batch, like `calibrate`'s cost model, never pay for its session): with more
    than one stage, the same groups as one model with `If` nodes (`cascade_graph.compose_anytime`), measured faster
    at batch 1 than stepping through the stages (docs/cascade.md)."""

    stages: list[Stage]
    thresholds: list[float]
    costs: np.ndarray
    single: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, int]] | None = None


class Resolved(NamedTuple):
    """A threshold setting resolved: the thresholds checked, their plan, the early ones as the `If` model's input."""

    thresholds: list[float]
    plan: Plan
    feed: np.ndarray  # float32 [exits − 1]


class Cascade:
    """A cascade directory loaded, runnable on a normalised N×C×H×W float32 batch.

    The segment models are read once; the sessions are made per *plan*, the exits that decide for the thresholds
    in use (`cascade_graph.plan`), and kept: the first call with a new set of deciding exits pays for creating
    them (`prepare` does it ahead)."""

    def __init__(self, folder: Path, manifest: dict, threads: int | None = 1):
        import onnx

        self.folder, self.manifest, self.threads = Path(folder), manifest, threads
        self.segments = manifest["segments"]
        self.input_name = manifest["input"]["name"]
        self.input_shape = tuple(manifest["input"]["shape"])
        self.exits = [s["exit"] for s in self.segments]
        self.cumulative = np.asarray([s["cumulative_flops"] for s in self.segments], np.int64)
        self.protos = []
        for seg in self.segments:
            path = self.folder / seg["file"]
            if not path.is_file():
                raise UserError(f"{path} is missing", "export the cascade again")
            self.protos.append(onnx.load(str(path)))
        self._ortvalue = _ortvalue_maker()
        self.plans: dict[tuple[int, ...], Plan] = {}  # by deciding exits
        self.resolved: dict[tuple | None, Resolved] = {}  # by thresholds as given

    @classmethod
    def load(cls, folder: Path, threads: int | None = 1) -> "Cascade":
        folder = Path(folder)
        return cls(folder, read_manifest(folder), threads)

    def full_session(self):
        """The pruned main exit alone (`full.onnx`) in onnxruntime, with the same options as the segments."""
        return session(self.folder / self.manifest["full"], self.threads)

    @property
    def criterion(self) -> str:
        return self.manifest["criterion"]

    @property
    def thresholds(self) -> list[float]:
        return [float(s["threshold"]) for s in self.segments]

    def prepare(self, thresholds=None) -> tuple[list[float], list[Stage]]:
        """(the thresholds checked, the loaded stages of their plan). Sessions are made once per set of deciding
        exits; a threshold setting seen before costs one dictionary look-up."""
        resolved = self._resolve(thresholds)
        return resolved.thresholds, resolved.plan.stages

    def _resolve(self, thresholds) -> "Resolved":
        key = None if thresholds is None else tuple(thresholds) if isinstance(thresholds, (list, tuple)) else False
        try:
            hash(key)
        except TypeError:
            key = False
        if key is not False and key in self.resolved:
            return self.resolved[key]
        t = self.thresholds if thresholds is None else check_thresholds(thresholds, self.exits)
        exits = tuple(deciding(t))
        if exits not in self.plans:
            self.plans[exits] = self._load_plan(t)
        resolved = Resolved(t, self.plans[exits], float32_thresholds(t[:-1]))
        if key is not False and len(self.resolved) < 4096:
            self.resolved[key] = resolved
        return resolved

    def _load_plan(self, t: list[float]) -> "Plan":
        import onnxruntime as ort

        groups = plan(self.protos, self.segments, t)
        stages = []
        for j, group in enumerate(groups):
            later = {name for g in groups[j + 1:] for name in g.inputs}
            known = [self.input_name] + [name for g in groups[:j + 1] for name in g.outputs]
            sess = ort.InferenceSession(group.model.SerializeToString(), session_options(self.threads),
                                        providers=["CPUExecutionProvider"])
            stages.append(Stage(group.exit_index, Bound(sess, group.inputs, group.outputs),
                                [n for n in known if n in later]))
        return Plan(stages, t, exit_costs(self.segments, t))

    def single(self, p: Plan) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, int]]:
        """`p.single`, made on first use: one call with numpy in and out (`InferenceSession._sess.run`, the C++ call
        under `session.run`), measured cheaper at batch 1 than OrtValues whose outputs are read with `.numpy()`."""
        if p.single is not None:
            return p.single
        import onnxruntime as ort

        name, stages = self.input_name, p.stages
        if len(stages) == 1:
            run, outputs, last = stages[0].call.session._sess.run, stages[0].outputs[:1], stages[0].exit_index
            p.single = lambda x, feed: (run(outputs, {name: x}, None)[0], last)
            return p.single
        model = compose_anytime(plan(self.protos, self.segments, p.thresholds), p.thresholds,
                                len(self.manifest["classes"]))
        run = ort.InferenceSession(model.SerializeToString(), session_options(self.threads),
                                   providers=["CPUExecutionProvider"])._sess.run

        def single(x: np.ndarray, feed: np.ndarray) -> tuple[np.ndarray, int]:
            logits, k = run(["logits", "exit"], {name: x, "thresholds": feed}, None)
            return logits, int(k)
        p.single = single
        return single

    def feed(self, x: np.ndarray) -> dict:
        """The values the stages start from: the input batch (checked) as an OrtValue, by name."""
        from onnxruntime import OrtValue

        return {self.input_name: OrtValue.ortvalue_from_numpy(as_input(x, self.input_shape))}

    def all_exits(self, x: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Every exit's logits and every early exit's confidence for every input (each segment run on the whole
        batch): what calibration needs."""
        values = self.feed(x)
        outs = []
        for stage in self.prepare([0.0] * len(self.exits))[1]:
            outs.append(stage.call(values))
            values.update(zip(stage.outputs, outs[-1]))
        return [o[0].numpy() for o in outs], [o[1].numpy() for o in outs[:-1]]

    def values(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every segment's every output for the batch `x`, by name (each segment run on the whole batch)."""
        values = self.feed(x)
        for stage in self.prepare([0.0] * len(self.exits))[1]:
            values.update(zip(stage.outputs, stage.call(values)))
        return {name: value.numpy() for name, value in values.items() if name != self.input_name}

    def run(self, x: np.ndarray, thresholds=None) -> CascadeResult:
        """The batched early exit: a stage runs only on the rows still in the cascade; a row leaves at exit k when
        its confidence > thresholds[k]. Results in input order (`CascadeResult`). One row runs in one call of the
        plan's `If` model (`Plan.single`), without a Python step between stages."""
        t, p, feed = self._resolve(thresholds)
        stages = p.stages
        x = as_input(x, self.input_shape)
        n, last = len(x), len(stages) - 1
        if n == 1:  # new arrays, not views of the plan's costs a caller could write into
            logits, k = self.single(p)(x, feed)
            return CascadeResult(logits, np.array((k,), np.int64), np.array((p.costs[k],), np.int64))
        hold = [x]  # the arrays the OrtValues of this call are views of
        values = {self.input_name: self._ortvalue(x)}
        rows = None  # the input rows still in the cascade (None: all of them, in order)
        logits = exits = None
        for j, stage in enumerate(stages):
            outs = stage.call(values)
            k = stage.exit_index
            leave = True if j == last else outs[1].numpy() > t[k]
            if j == last or leave.all():
                if rows is None:  # every row leaves here, none left before: nothing to gather
                    return CascadeResult(outs[0].numpy(), np.full(n, k, np.int64), np.full(n, p.costs[k]))
                logits[rows], exits[rows] = outs[0].numpy(), k
                return CascadeResult(logits, exits, p.costs[exits])
            values.update(zip(stage.outputs, outs))
            if not leave.any():
                continue
            here = outs[0].numpy()
            if rows is None:
                rows = np.arange(n)
                logits = np.empty((n, here.shape[1]), np.float32)
                exits = np.full(n, stages[-1].exit_index, np.int64)
            logits[rows[leave]], exits[rows[leave]] = here[leave], k
            stay = ~leave
            rows = rows[stay]
            hold += [np.ascontiguousarray(values[name].numpy()[stay]) for name in stage.keep]
            values = {name: self._ortvalue(a) for name, a in zip(stage.keep, hold[-len(stage.keep):])}
        raise AssertionError("unreachable: the last stage takes every row")


def simulate(confidences: list[np.ndarray], thresholds: list[float], n: int) -> np.ndarray:
    """What `Cascade.run` decides for `n` rows, from every early exit's confidence (`Cascade.all_exits`): the exit
    index per row."""
    where = np.full(n, len(confidences), np.int64)
    undecided = np.ones(n, bool)
    for k, value in enumerate(confidences):
        leave = undecided & (value > thresholds[k])
        where[leave] = k
        undecided &= ~leave
    return where


def pick(logits: list[np.ndarray], where: np.ndarray) -> np.ndarray:
    """The predicted class of each row at the exit it left at."""
    return np.stack([v.argmax(1) for v in logits])[where, np.arange(len(where))]


ANYTIME = "anytime.onnx"  # the cascade as one model with `If` nodes, beside the segments


def anytime_model(cascade: Cascade, thresholds=None, every_exit: bool = False):
    """The cascade as one ONNX model with `If` nodes (`cascade_graph.compose_anytime`) for `thresholds` (default:
    the manifest's): the exits that decide for them (`every_exit`: all of them, so any thresholds can be fed),
    the thresholds as the default of its `thresholds` input, and the metadata `predict` reads."""
    import onnx

    t = cascade.thresholds if thresholds is None else check_thresholds(thresholds, cascade.exits)
    planned = [0.0] * len(t) if every_exit else t
    groups = plan(cascade.protos, cascade.segments, planned)
    model = compose_anytime(groups, t, len(cascade.manifest["classes"]))
    manifest = cascade.manifest
    meta = {"spec_name": manifest.get("spec_name"), "weights": manifest.get("weights"),
            "input_shape": json.dumps(manifest["input"]["shape"]), "mean": json.dumps(manifest["input"].get("mean")),
            "std": json.dumps(manifest["input"].get("std")), "classes": json.dumps(manifest["classes"]),
            "criterion": manifest["criterion"], "exits": json.dumps(cascade.exits),
            "deciding_exits": json.dumps([cascade.exits[g.exit_index] for g in groups]),
            "cumulative_flops": json.dumps(exit_costs(cascade.segments, planned).tolist())}
    onnx.helper.set_model_props(model, {f"netspec.{k}": str(v) for k, v in meta.items()})
    return model


def write_anytime(cascade: Cascade, path: Path, thresholds=None, every_exit: bool = False) -> None:
    from netspec.project import atomic_file

    with atomic_file(Path(path), binary=True) as f:
        f.write(anytime_model(cascade, thresholds, every_exit).SerializeToString())
