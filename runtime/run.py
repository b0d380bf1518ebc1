"""A run: its directory, lock, `latest` link, record and changes — one object that every command reads a run through.

Layout: `<root>/<run>/`, root `train.out` (else `runs/<spec name>`), run `train.run_name` (else the start time);
`<root>/latest` links the newest run.

| file | what |
|---|---|
| `lock` | held (`flock`) by the training process, its pid inside |
| `run.json` | the record: command, cwd, spec file, overrides, seed, threads, versions, git commit, data identity (source, path, sizes of the splits, checksum), process count, and `spec_sha256`, the hash of spec.yaml |
| `spec.yaml` | the resolved spec (after `extends:`, overrides, `${}`) exactly as the run uses it |
| `changes.jsonl` | one line per `--resume --allow-change`: the step it took effect at, what changed, and the new run.json and spec.yaml in full |
| `checkpoints/` | `last.pt`, `best.pt` and `checkpoints.json`, the manifest (runtime/checkpoint.py); the manifest's `record` holds the hashes of run.json and changes.jsonl |

Write order. A new run: spec.yaml, run.json, then the manifest's `record`. A change: changes.jsonl (with the new
record in full), spec.yaml, run.json, then the manifest. `Run.check` reads in the same chain: run.json and
changes.jsonl must hash to what the manifest vouches for and spec.yaml to what run.json names. When they do not
and the last line of changes.jsonl is a change the manifest does not vouch for yet, a kill cut that change short:
it is completed (spec.yaml and run.json written from that line, then the manifest) and said so. Anything else is
damage, named in one line; nothing is silently ignored.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

import torch
import yaml

import netspec

from netspec.errors import UserError
from netspec.project import claim_dir, read_json, read_small_text
from netspec.spec import Spec
from netspec.runtime import checkpoint as ckpt

LATEST, LOCK, RECORD, SPEC_FILE, CHANGES = "latest", "lock", "run.json", "spec.yaml", "changes.jsonl"
RECORD_SHAPE = {"run": str, "spec_name": str, "spec": str, "overrides": [str], "command": [str], "seed": int,
                "spec_sha256": str, "data?": dict, "world_size?": int, "threads?": int}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def runs_root(spec: Spec) -> Path:
    """The folder holding a spec's runs: `train.out`, else `runs/<spec name>`."""
    return Path(spec.train.out) if spec.train.out else Path("runs") / spec.name


class Run:
    """One run directory. Reading goes through `check` (once), writing through `start` and `change`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __eq__(self, other) -> bool:
        return isinstance(other, Run) and self.path == other.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def saved(self) -> bool:
        """Whether a training state (last.pt) was written."""
        return (self.checkpoints / ckpt.LAST).is_file()

    # --- finding runs -------------------------------------------------------------------------

    @staticmethod
    def latest(spec: Spec) -> Run | None:
        """The run `train.run_name` names, else the newest run (`latest`); None when there is none."""
        root = runs_root(spec)
        if spec.train.run_name:
            return Run(root / spec.train.run_name) if (root / spec.train.run_name).is_dir() else None
        link = root / LATEST
        if link.is_symlink():
            target = root / os.readlink(link)
            return Run(target) if target.is_dir() else None
        return Run(link) if link.is_dir() else None

    @staticmethod
    def named(text: str, what: str = "--run") -> Run:
        """`--run runs/NAME/ID` (or a `latest` link): a directory netspec's training wrote."""
        path = Path(text)
        if path.is_symlink() and path.name == LATEST:
            path = path.parent / os.readlink(path)
        if not (path / RECORD).is_file() and not (path / "checkpoints").is_dir():
            raise UserError(f"{what} {text}: not a run directory (no {RECORD} there)",
                            "give a directory `netspec train` made, e.g. runs/<spec name>/<run>")
        return Run(path)

    @staticmethod
    def holding(checkpoint: str | Path) -> Run | None:
        """The run a checkpoint file belongs to (`<run>/checkpoints/x.pt`), None for a file outside any run."""
        path = Path(checkpoint)
        run = path.parent.parent
        return Run(run) if path.parent.name == "checkpoints" and (run / RECORD).is_file() else None

    @staticmethod
    def create(spec: Spec) -> Run:
        """Make the directory of a new run (never an existing one) and point `latest` at it."""
        root = claim_dir(runs_root(spec), (LATEST, "sweeps"), "run directory (train.out)")  # absent, empty, netspec's runs
        root.mkdir(parents=True, exist_ok=True)
        if spec.train.run_name:
            path = root / spec.train.run_name
            try:
                path.mkdir()
            except FileExistsError:
                RunLock(path).release()  # in use: names the process that trains it
                raise UserError(f"run {path} exists already (train.run_name={spec.train.run_name})",
                                "continue it with --resume, or give another train.run_name") from None
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for i in range(1, 1000):
                path = root / (stamp if i == 1 else f"{stamp}-{i}")
                try:
                    path.mkdir()
                    break
                except FileExistsError:
                    continue
        run = Run(path)
        run.point_latest()
        return run

    def point_latest(self) -> None:
        """`<root>/latest` → this run (a relative symlink, replaced atomically)."""
        link = self.path.parent / LATEST
        tmp = self.path.parent / f".{LATEST}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(self.path.name, tmp)
        os.replace(tmp, link)

    def remove_unused(self) -> bool:
        """Remove a run directory that training left before writing anything but its record (a start that failed);
        `latest` then points at the newest run left, or goes. Returns whether it was removed."""
        if any(p.name not in (LOCK, RECORD, SPEC_FILE, "checkpoints") for p in self.path.iterdir()) or (
                self.checkpoints.is_dir() and any(p.suffix == ".pt" for p in self.checkpoints.iterdir())):
            return False
        shutil.rmtree(self.path)
        link = self.path.parent / LATEST
        others = sorted((p for p in self.path.parent.iterdir()
                         if p.is_dir() and not p.is_symlink() and (p / RECORD).is_file()), key=lambda p: p.stat().st_mtime)
        if others:
            Run(others[-1]).point_latest()
        else:
            link.unlink(missing_ok=True)
        return True

    # --- the record ---------------------------------------------------------------------------

    def _bytes(self, name: str) -> bytes:
        path = self.path / name
        return path.read_bytes() if path.is_file() else b""

    def _damaged(self, name: str, why: str) -> UserError:
        return UserError(f"{self.path / name} is damaged ({why})",
                         f"restore it, or start a new run (`netspec train SPEC`); the checkpoints in {self.checkpoints} "
                         "are intact: `init.from` starts a new run from them")

    def _vouched(self, repair: bool) -> tuple[dict | None, list[str]]:
        """The manifest's `record` hashes, and what was repaired to read them (a damaged manifest is rebuilt)."""
        try:
            return ckpt.read_index(self.checkpoints).get("record"), []
        except UserError as err:
            lines = ckpt.verify(self.checkpoints, rebuild=True, write=repair)
            return None, [f"{self.checkpoints / ckpt.INDEX} was damaged ({err.what.split('damaged')[-1].strip(': ')}); "
                          f"rebuilt it from the checkpoint files"] + lines

    def check(self, *, repair: bool = True) -> list[str]:
        """Check run.json, spec.yaml and changes.jsonl against the manifest (see the module docstring). Returns
        what was repaired, one line each (`repair=False`: what would be, nothing written); damage is a UserError."""
        vouched, notes = self._vouched(repair)
        if not (self.path / RECORD).exists():
            if self.saved:
                raise self._damaged(RECORD, "missing, though the run has checkpoints")
            return notes
        current = {RECORD: sha256(self._bytes(RECORD)), CHANGES: sha256(self._bytes(CHANGES))}
        if vouched is not None and current != vouched:
            pending = self._pending_change(vouched)
            if pending is None:
                name = RECORD if current[RECORD] != vouched.get(RECORD) else CHANGES
                raise self._damaged(name, f"cut short, emptied or edited: it no longer matches "
                                          f"{self.checkpoints / ckpt.INDEX}")
            if repair:
                self._write_record(pending["record"], pending["spec_yaml"])
            notes.append(f"completed the --allow-change of step {pending['step']} that was cut short "
                         f"({'; '.join(pending['changes'])})")
        record = self.record()
        if sha256(self._bytes(SPEC_FILE)) != record["spec_sha256"]:
            raise self._damaged(SPEC_FILE, f"cut short, emptied or edited: it no longer matches {RECORD}")
        self.changes()
        if repair and (vouched is None or notes):
            self._vouch()
        return notes

    def _pending_change(self, vouched: dict) -> dict | None:
        """The last line of changes.jsonl when it is a change the manifest does not vouch for yet (cut short)."""
        text = self._bytes(CHANGES)
        lines = text.splitlines(keepends=True)
        if not lines or sha256(b"".join(lines[:-1])) != vouched.get(CHANGES):
            return None
        try:
            line = json.loads(lines[-1])
            return line if {"record", "spec_yaml", "step", "changes"} <= set(line) else None
        except ValueError:
            return None

    def record(self) -> dict:
        """run.json (`check` vouches for it)."""
        return read_json(self.path / RECORD, RECORD_SHAPE, "restore it, or start a new run (`netspec train SPEC`)")

    def changes(self) -> list[dict]:
        """changes.jsonl, one record per accepted change (`check` vouches for it)."""
        path = self.path / CHANGES
        if not path.exists():
            return []
        out = []
        for i, line in enumerate(read_small_text(path).splitlines(), 1):
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if not isinstance(entry, dict) or not isinstance(entry.get("changes"), list):
                raise self._damaged(CHANGES, f"line {i} is not a change record")
            out.append(entry)
        return out

    def spec(self) -> dict:
        """spec.yaml: the resolved spec the run uses (`check` vouches for it)."""
        return yaml.safe_load(self._bytes(SPEC_FILE))

    def _write_record(self, record: dict, spec_yaml: str) -> None:
        ckpt.write_run_file(self.path / SPEC_FILE, spec_yaml)
        ckpt.write_run_file(self.path / RECORD, json.dumps(record, indent=1) + "\n")

    def _vouch(self) -> None:
        """The manifest's `record`: the hashes of run.json and changes.jsonl as they are now (written last)."""
        ckpt.set_index_entry(self.checkpoints, "record", {RECORD: sha256(self._bytes(RECORD)),
                                                            CHANGES: sha256(self._bytes(CHANGES))})

    def start(self, record: dict, spec_yaml: str) -> None:
        """Write a new run's record: spec.yaml, run.json (naming spec.yaml's hash), then the manifest."""
        self._write_record({**record, "spec_sha256": sha256(spec_yaml.encode())}, spec_yaml)
        self._vouch()

    def change(self, step: int, changes: list[str], command: list[str], record: dict, spec_yaml: str) -> None:
        """Record a `--resume --allow-change`: changes.jsonl first (with the new record in full), then spec.yaml,
        run.json, the manifest — a kill between any two is completed by the next `check`."""
        record = {**record, "spec_sha256": sha256(spec_yaml.encode())}
        line = {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": step, "command": command, "changes": changes,
                "record": record, "spec_yaml": spec_yaml}
        ckpt.write_run_file(self.path / CHANGES, self._bytes(CHANGES) + (json.dumps(line) + "\n").encode())
        self._write_record(record, spec_yaml)
        self._vouch()

    # --- checkpoints --------------------------------------------------------------------------

    def best_checkpoint(self) -> Path:
        """The checkpoint to deploy or evaluate: best.pt, else last.pt (as the manifest says)."""
        index = ckpt.read_index(self.checkpoints)
        for key, name in (("best", ckpt.BEST), ("last", ckpt.LAST)):
            if (self.checkpoints / name).is_file() and (key in index or not {"best", "last"} & set(index)):
                return self.checkpoints / name
        raise UserError(f"no checkpoint in {self.path}", "train first (`netspec train`), or name one with "
                        "--checkpoint PATH")

    def lock(self) -> RunLock:
        return RunLock(self.path)


class RunLock:
    """An exclusive lock on a run directory for a training process's lifetime (`flock` on `<run>/lock`)."""

    def __init__(self, run: Path):
        self.path = Path(run) / LOCK
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "?"
            self.file.close()
            raise UserError(f"run {run} is in use by another `netspec train` (process {holder})",
                            f"wait for it to finish, or stop it (kill {holder}); or start a new run with another "
                            "train.run_name") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()

    def release(self) -> None:
        if not self.file.closed:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()


# --- what the record holds -----------------------------------------------------------------------

def resolved_spec(spec: Spec) -> dict:
    return spec.model_dump(mode="json", by_alias=True)


def spec_yaml(spec: Spec) -> str:
    """spec.yaml: the resolved spec as YAML (it compiles to the same network: a test holds them equal)."""
    return yaml.safe_dump(resolved_spec(spec), sort_keys=False)


def make_record(compiled, command: list[str], dataset, world_size: int, threads: int) -> dict:
    """run.json of a run starting now (its `spec_sha256` is added when it is written)."""
    spec = compiled.spec
    return {
        "run": "", "spec_name": spec.name, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": list(command), "cwd": os.getcwd(), "spec": str(compiled.path), "overrides": list(compiled.overrides),
        "seed": spec.train.seed, "spec_hash": compiled.spec_hash, "world_size": world_size, "threads": threads,
        "versions": {"netspec": netspec.__version__, "torch": torch.__version__,
                     "python": platform.python_version(), "platform": platform.platform()},
        "git": git_commit(Path(compiled.path).resolve().parent),
        "data": data_identity(spec, dataset),
    }


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


def data_identity(spec: Spec, dataset) -> dict:
    """Where the data came from (source, path, total size of its files), the size of each split and a checksum of
    what was read: labels and images (or file lists, when streamed) of every split, in order."""
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
    splits = ["train", "test"] + ["val"] * (dataset.val_y is not None)
    for split in splits:
        pixels = getattr(dataset, f"{split}_files" if streamed else f"{split}_x")
        for tensor in (getattr(dataset, f"{split}_y"), pixels):
            array = tensor.contiguous().numpy() if isinstance(tensor, torch.Tensor) else tensor
            digest.update(str(tuple(array.shape)).encode())
            digest.update(array.tobytes())
    return {"source": spec.data.source, "path": str(root.resolve()) if root.exists() else str(root),
            "bytes": size, **{split: len(getattr(dataset, f"{split}_y")) for split in splits},
            "checksum": digest.hexdigest()}


# --- what a resume may change ----------------------------------------------------------------------

# train: keys that say where or how fast a run goes, how often it logs, evaluates or saves: never a change
FREE_TRAIN_KEYS = {"device", "amp", "compile", "sync_bn", "eval_batch_size", "checkpoint_every", "threads",
                   "checkpoint_every_steps", "log_every_steps", "log_gradients", "eval_every", "out", "run_name",
                   "keep_snapshots", "tensorboard"}
# what `--allow-change` accepts, applied at the resume (runtime/train.py): the solver, the lr schedule, the length
# of training, loss weights and schedules
CHANGEABLE = ("train.optimizer", "train.lr_schedule", "train.epochs", "train.max_steps")
CHANGEABLE_LOSS_KEYS = ("weight", "beta", "schedule")
REFUSED = {
    "data": "the data set and its splits are part of a run",
    "train": "it changes the data order or the parameter groups the run was trained with",
    "init": "initialisation only applies when a run starts",
    "losses": "it changes which loss terms are computed (only their weights and schedules may change)",
}


def resume_changes(run: Run, spec: Spec, allow_change: bool) -> list[str]:
    """What a resume of `run` with `spec` changes; refused (one line) unless `--allow-change` accepts all of it."""
    accepted, refused = spec_changes(run.spec(), resolved_spec(spec))
    if refused:
        raise UserError(f"--resume {run}: {refused[0]}" + (f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""),
                        "start a new run (without --resume); init.from copies the weights that still fit")
    if accepted and not allow_change:
        raise UserError(f"--resume {run}: the spec differs from the one the run was started with: {'; '.join(accepted)}",
                        "add --allow-change to continue with these changes (applied from the step it resumes at, "
                        f"recorded in changes.jsonl), or resume with the run's own spec: `netspec train --resume --run {run}`")
    return accepted


def spec_changes(recorded: dict, now: dict) -> tuple[list[str], list[str]]:
    """(changes `--allow-change` accepts, changes it refuses with their reason), each `key: old → new`, between a
    run's recorded spec and the spec now. The network sections are compared as one: any change there is refused."""
    from netspec.compiler import NETWORK_SECTIONS

    accepted, refused = [], []
    network = [k for k in NETWORK_SECTIONS if recorded.get(k) != now.get(k)]
    if network:
        refused.append(f"the network ({', '.join(sorted(network))}) changed: a resume continues the same network "
                       "(start a new run; init.from copies every layer that still fits)")
    for section in ("train", "data", "losses", "init"):
        old, new = recorded.get(section) or {}, now.get(section) or {}
        if section == "train":
            old, new = ({k: v for k, v in d.items() if k not in FREE_TRAIN_KEYS} for d in (old, new))
        for line, key in _diff(section, old, new):
            if _changeable(key, recorded, now):
                accepted.append(line)
            else:
                refused.append(f"{line} ({REFUSED[section]})")
    return accepted, refused


def _changeable(key: str, recorded: dict, now: dict) -> bool:
    if key.startswith(CHANGEABLE):
        return True
    parts = key.split(".")
    return (parts[0] == "losses" and len(parts) >= 3 and parts[2] in CHANGEABLE_LOSS_KEYS
            and parts[1] in (recorded.get("losses") or {}) and parts[1] in (now.get("losses") or {}))


def _diff(key: str, old, new) -> list[tuple[str, str]]:
    """(`key: old → new`, key) for every leaf that differs; a mapping whose `type` changed is one leaf."""
    if isinstance(old, dict) and isinstance(new, dict) and old.get("type") == new.get("type"):
        return [item for k in dict.fromkeys([*old, *new]) for item in _diff(f"{key}.{k}", old.get(k), new.get(k))]
    return [] if old == new else [(f"{key}: {_short(old)} → {_short(new)}", key)]


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."
