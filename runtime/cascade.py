"""Running an early-exit cascade (a directory written by `netspec export --cascade`): onnxruntime and numpy only,
never torch, like `predict`.

The directory holds one ONNX model per segment, the pruned main exit alone (`full.onnx`) and `manifest.json`:
the segments in order (shallow exit first, main last), each with its file, inputs, outputs (its exit's logits
first, then the features later segments read), its FLOPs and the cumulative FLOPs of leaving at its exit, and a
threshold per exit.

The criterion is the maximum softmax probability: an input leaves at exit k when max softmax(logits_k) > threshold_k
(strictly). We chose it over the entropy because it is on one scale (1/classes .. 1) whatever the number of classes,
and it is what BranchyNet-style "confidence" means to a user. Strict ">" makes the two ends exact: threshold 1.0
never exits early (a probability is at most 1, even when float32 rounds it to 1), threshold 0 always exits at
the first exit. The main (last) exit takes every input that reaches it; its threshold is not used.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from netspec.errors import UserError

MANIFEST = "manifest.json"
FULL = "full.onnx"  # the pruned main exit alone, beside the segments
CRITERION = "max_softmax"


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def confidence(logits: np.ndarray) -> np.ndarray:
    """The criterion: max softmax probability per row."""
    return softmax(logits).max(1)


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UserError(f"no {MANIFEST} in {folder}", "give a directory written by `netspec export --cascade DIR`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not JSON: {err}", "export the cascade again") from None
    if manifest.get("criterion") != CRITERION or not manifest.get("segments"):
        raise UserError(f"{path} is not a netspec cascade manifest", "export the cascade again")
    return manifest


def write_manifest(folder: Path, manifest: dict) -> None:
    from netspec.project import atomic_write

    atomic_write(Path(folder) / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def session(path: Path, threads: int | None = None):
    """A quiet onnxruntime CPU session; `threads` intra-op threads (None: onnxruntime's default)."""
    import onnxruntime as ort

    if not Path(path).is_file():
        raise UserError(f"{path} is missing", "export the cascade again")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass
class Cascade:
    """The loaded segments of a cascade directory, runnable on a normalised N×C×H×W float32 batch."""

    folder: Path
    manifest: dict
    sessions: list = field(default_factory=list)
    threads: int | None = None

    @classmethod
    def load(cls, folder: Path, threads: int | None = None) -> "Cascade":
        folder = Path(folder)
        manifest = read_manifest(folder)
        return cls(folder, manifest, [session(folder / s["file"], threads) for s in manifest["segments"]], threads)

    def full_session(self):
        """The pruned main exit alone (`full.onnx`) in onnxruntime."""
        if "full" not in self.manifest:
            raise UserError(f"{self.folder / MANIFEST} names no {FULL} (exported by an older netspec)",
                            "export the cascade again")
        return session(self.folder / self.manifest["full"], self.threads)

    @property
    def exits(self) -> list[str]:
        return [s["exit"] for s in self.manifest["segments"]]

    @property
    def thresholds(self) -> list[float]:
        return [float(s["threshold"]) for s in self.manifest["segments"]]

    def step(self, k: int, values: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run segment k on `values` (by name; its outputs are added); return its outputs, exit k's logits first."""
        seg = self.manifest["segments"][k]
        outs = self.sessions[k].run(seg["outputs"], {name: values[name] for name in seg["inputs"]})
        values.update(zip(seg["outputs"], outs))
        return outs

    def all_exits(self, x: np.ndarray) -> list[np.ndarray]:
        """Every exit's logits for every input (each segment run on the whole batch): what calibration needs."""
        values = {self.manifest["input"]["name"]: x}
        return [self.step(k, values)[0] for k in range(len(self.sessions))]

    def run(self, x: np.ndarray, thresholds: list[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(logits of the exit each input left at, index of that exit): segment k runs only on the inputs still
        in the cascade; an input leaves at exit k when its max softmax probability > thresholds[k]."""
        thresholds = self.thresholds if thresholds is None else list(thresholds)
        n, last = len(x), len(self.sessions) - 1
        alive = np.arange(n)
        values = {self.manifest["input"]["name"]: x}
        result, where = None, np.full(n, -1, np.int64)
        for k in range(last + 1):
            logits = self.step(k, values)[0]
            if result is None:
                result = np.zeros((n, logits.shape[1]), np.float32)
            leave = np.ones(len(alive), bool) if k == last else confidence(logits) > thresholds[k]
            result[alive[leave]] = logits[leave]
            where[alive[leave]] = k
            stay = ~leave
            if not stay.any():
                break
            alive = alive[stay]
            values = {name: value[stay] for name, value in values.items()}
        return result, where

    def latency(self, x: np.ndarray, repeats: int = 3) -> dict:
        """Measured at batch 1 on the inputs of `x`, in ms: `exits[k]`, the cost of leaving at exit k (segments
        0..k chained and the confidence tests of exits 0..k; the last exit has none), and `full`, the pruned main
        exit alone (`full.onnx`). Each a mean over the inputs, the median over `repeats` rounds after one warm-up
        round; within a round each input runs through the full model, then the cascade."""
        full = self.full_session()
        full_in, full_out = full.get_inputs()[0].name, full.get_outputs()[0].name
        last = len(self.sessions) - 1
        rounds = []
        for _ in range(repeats + 1):
            total = np.zeros(last + 2)  # per exit, then full
            for i in range(len(x)):
                one = x[i:i + 1]
                start = time.perf_counter()
                full.run([full_out], {full_in: one})
                total[-1] += time.perf_counter() - start
                values = {self.manifest["input"]["name"]: one}
                start = time.perf_counter()
                for k in range(last + 1):
                    logits = self.step(k, values)[0]
                    if k < last:
                        confidence(logits)
                    total[k] += time.perf_counter() - start
            rounds.append(total / len(x) * 1e3)
        median = np.median(rounds[1:], axis=0)
        return {"exits": [float(v) for v in median[:-1]], "full": float(median[-1]), "inputs": int(len(x)),
                "repeats": repeats, "threads": self.threads}


def simulate(logits: list[np.ndarray], thresholds: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """What `Cascade.run` decides, from every exit's logits (`Cascade.all_exits`): (predicted class, exit index)."""
    n = len(logits[0])
    where = np.full(n, len(logits) - 1, np.int64)
    undecided = np.ones(n, bool)
    for k, value in enumerate(logits[:-1]):
        leave = undecided & (confidence(value) > thresholds[k])
        where[leave] = k
        undecided &= ~leave
    stacked = np.stack([v.argmax(1) for v in logits])  # exits × n
    return stacked[where, np.arange(n)], where
