"""A run is a record: what a run directory holds besides its checkpoints and metrics.

`run.json`: the command line, working directory, spec file and overrides, seed, netspec / torch / python
versions, the project's git commit (when there is one), the data set's identity (source, path, size of
its files, a checksum of its contents) and the process count. `spec.yaml`: the resolved spec (after
`extends:`, overrides and `${}`), exactly as the run used it. `changes.jsonl`: settings changed at a
`--resume --allow-change`, one record per resume.

At `--resume`, `settings_changes` compares the spec now with the recorded one: the keys that change the
schedule (`train:` but for where and how fast it runs, `data:`, `losses:`) are refused unless allowed.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

import netspec
from netspec.project import atomic_write

SPEC_FILE, CHANGES = "spec.yaml", "changes.jsonl"
# train: keys that say where or how fast a run goes, or where it writes; the rest change what it computes
FREE_TRAIN_KEYS = {"device", "amp", "compile", "sync_bn", "eval_batch_size", "checkpoint_every",
                   "checkpoint_every_steps", "log_every_steps", "log_gradients", "eval_every", "out", "run_name"}
SCHEDULE_SECTIONS = ("train", "data", "losses")


def resolved_spec(spec) -> dict:
    return spec.model_dump(mode="json", by_alias=True)


def write_record(run: Path, compiled, overrides: list[str], command: list[str] | None, dataset,
                 world_size: int) -> None:
    """Write run.json and spec.yaml for a new run."""
    spec = compiled.spec
    record = {
        "run": run.name, "spec_name": spec.name, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command if command is not None else list(sys.argv), "cwd": os.getcwd(),
        "spec": str(compiled.path), "overrides": list(overrides), "seed": spec.train.seed,
        "spec_hash": compiled.spec_hash, "world_size": world_size,
        "versions": {"netspec": netspec.__version__, "torch": torch.__version__,
                     "python": platform.python_version(), "platform": platform.platform()},
        "git": git_commit(Path(compiled.path).resolve().parent),
        "data": data_identity(spec, dataset),
    }
    atomic_write(run / "run.json", json.dumps(record, indent=1) + "\n")
    atomic_write(run / SPEC_FILE, yaml.safe_dump(resolved_spec(spec), sort_keys=False))


def read_record(run: Path) -> dict | None:
    try:
        return json.loads((run / "run.json").read_text())
    except (OSError, ValueError):
        return None


def read_spec(run: Path) -> dict | None:
    try:
        return yaml.safe_load((run / SPEC_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return None


def git_commit(folder: Path) -> dict | None:
    """The commit of the git work tree holding `folder` and whether it has uncommitted changes; None outside git."""
    try:
        commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def data_identity(spec, dataset) -> dict:
    """Where the data came from (source, path, total size of its files) and a checksum of what was read: the
    labels and images of both splits, in order (the index a run's data order is drawn from)."""
    from netspec.runtime.data import data_root

    root = data_root(spec.data)
    size = 0
    if root.is_file():
        size = root.stat().st_size
    elif root.is_dir():
        for dirpath, _, files in os.walk(root):
            size += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    digest = hashlib.blake2b(digest_size=16)
    streamed = hasattr(dataset, "train_files")  # streaming: the file lists stand for the pixels
    for tensor in (dataset.train_y, dataset.test_y) + ((dataset.train_files, dataset.test_files) if streamed
                                                         else (dataset.train_x, dataset.test_x)):
        array = tensor.contiguous().numpy() if isinstance(tensor, torch.Tensor) else tensor
        digest.update(str(tuple(array.shape)).encode())
        digest.update(array.tobytes())
    return {"source": spec.data.source, "path": str(root.resolve()) if root.exists() else str(root),
            "bytes": size, "train": len(dataset.train_y), "test": len(dataset.test_y),
            "checksum": digest.hexdigest()}


def settings_changes(recorded: dict, spec) -> list[str]:
    """The schedule-changing settings that differ between a run's recorded spec and `spec`: `key: old → new`."""
    now = resolved_spec(spec)
    out = []
    for section in SCHEDULE_SECTIONS:
        old, new = recorded.get(section), now.get(section)
        if section == "train":
            old = {k: v for k, v in (old or {}).items() if k not in FREE_TRAIN_KEYS}
            new = {k: v for k, v in (new or {}).items() if k not in FREE_TRAIN_KEYS}
        out += _diff(section, old, new)
    return out


def _diff(key: str, old, new) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict) and old.get("type") == new.get("type"):
        return [line for k in dict.fromkeys([*old, *new]) for line in _diff(f"{key}.{k}", old.get(k), new.get(k))]
    return [] if old == new else [f"{key}: {_short(old)} → {_short(new)}"]


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def log_changes(run: Path, changes: list[str], command: list[str] | None) -> None:
    """Append the changes a `--resume --allow-change` made to the run's changes.jsonl."""
    path = run / CHANGES
    old = path.read_text() if path.is_file() else ""
    line = json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command or list(sys.argv),
                       "changes": changes})
    atomic_write(path, old + line + "\n")
