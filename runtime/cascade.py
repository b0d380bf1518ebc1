"""Running an early-exit cascade (a directory written by `netspec export --cascade`): onnxruntime and numpy only,
never torch, like `predict`.

The directory holds one ONNX model per segment and `manifest.json`: the segments in order (shallow exit first,
main last), each with its file, inputs, outputs (its exit's logits first, then the features later segments read),
its FLOPs and the cumulative FLOPs of leaving at its exit, and a threshold per exit.

The criterion is the maximum softmax probability: an input leaves at exit k when max softmax(logits_k) > threshold_k
(strictly). We chose it over the entropy because it is on one scale (1/classes .. 1) whatever the number of classes,
and it is what BranchyNet-style "confidence" means to a user. Strict ">" makes the two ends exact: threshold 1.0
never exits early (a probability is at most 1, even when float32 rounds it to 1), threshold 0 always exits at
the first exit. The main (last) exit takes every input that reaches it; its threshold is not used.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from netspec.errors import UserError

MANIFEST = "manifest.json"
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


@dataclass
class Cascade:
    """The loaded segments of a cascade directory, runnable on a normalised N×C×H×W float32 batch."""

    folder: Path
    manifest: dict
    sessions: list = field(default_factory=list)

    @classmethod
    def load(cls, folder: Path, threads: int | None = None) -> "Cascade":
        import onnxruntime as ort

        folder = Path(folder)
        manifest = read_manifest(folder)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        sessions = []
        for seg in manifest["segments"]:
            path = folder / seg["file"]
            if not path.is_file():
                raise UserError(f"{path} is missing (listed in {folder / MANIFEST})", "export the cascade again")
            sessions.append(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]))
        return cls(folder, manifest, sessions)

    @property
    def exits(self) -> list[str]:
        return [s["exit"] for s in self.manifest["segments"]]

    @property
    def thresholds(self) -> list[float]:
        return [float(s["threshold"]) for s in self.manifest["segments"]]

    def all_exits(self, x: np.ndarray) -> list[np.ndarray]:
        """Every exit's logits for every input (each segment run on the whole batch): what calibration needs."""
        values = {self.manifest["input"]["name"]: x}
        logits = []
        for seg, session in zip(self.manifest["segments"], self.sessions):
            outs = session.run(seg["outputs"], {name: values[name] for name in seg["inputs"]})
            values.update(zip(seg["outputs"], outs))
            logits.append(outs[0])
        return logits

    def run(self, x: np.ndarray, thresholds: list[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(logits of the exit each input left at, index of that exit): segment k runs only on the inputs still
        in the cascade; an input leaves at exit k when its max softmax probability > thresholds[k]."""
        thresholds = self.thresholds if thresholds is None else list(thresholds)
        segments = self.manifest["segments"]
        n = len(x)
        alive = np.arange(n)
        values = {self.manifest["input"]["name"]: x}
        result, where = None, np.full(n, -1, np.int64)
        for k, (seg, session) in enumerate(zip(segments, self.sessions)):
            outs = session.run(seg["outputs"], {name: values[name] for name in seg["inputs"]})
            logits = outs[0]
            if result is None:
                result = np.zeros((n, logits.shape[1]), np.float32)
            last = k == len(segments) - 1
            leave = np.ones(len(alive), bool) if last else confidence(logits) > thresholds[k]
            result[alive[leave]] = logits[leave]
            where[alive[leave]] = k
            stay = ~leave
            if not stay.any():
                break
            alive = alive[stay]
            values = {name: value[stay] for name, value in values.items()}
            values.update({name: value[stay] for name, value in zip(seg["outputs"], outs)})
        return result, where


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
