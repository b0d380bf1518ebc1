"""Runs and checkpoints: where a run lives, its lock, and `last.pt` / `best.pt` with the manifest that vouches for them.

A run is a directory `<root>/<run name>/` (root: `train.out`, else `runs/<spec name>`; run name:
`train.run_name`, else the start time), with `<root>/latest` pointing at the newest run. Its checkpoints
are in `checkpoints/`: `best.pt` (best main-exit top-1), `last.pt` (where to resume) and
`checkpoints.json`, the manifest, written last: it names what each file holds, so a kill between the
writes never leaves a pair that disagrees unnoticed (`verify` repairs the manifest from the files).

A checkpoint is a dict of tensors and plain values only (`torch.load(weights_only=True)` reads it):
`model` (state_dict, names as in the spec), `optimizer`, `scheduler`, `rng` (one entry per process),
`epoch` (epochs completed), `step` (optimiser steps done), `batch` (steps done in epoch `epoch`, for a
mid-epoch snapshot; 0 at an epoch boundary), `epoch_sums` (the epoch's running loss sums), `best`,
`spec_name`, `spec_hash`, `structure` (compiler/structure.py: each head's ancestry and each parameter's
node).
"""
from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import random
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from netspec.compiler import structure
from netspec.errors import UserError
from netspec.project import atomic_write, claim_dir, read_json
from netspec.spec import Spec

LAST, BEST, INDEX = "last.pt", "best.pt", "checkpoints.json"
LATEST, LOCK, RECORD = "latest", "lock", "run.json"


# --- run directories -------------------------------------------------------------------------

def runs_root(spec: Spec) -> Path:
    """The folder holding a spec's runs: `train.out`, else `runs/<spec name>`."""
    return Path(spec.train.out) if spec.train.out else Path("runs") / spec.name


def latest_run(spec: Spec) -> Path | None:
    """The run `train.run_name` names, else the newest run (`latest`); None when there is none."""
    root = runs_root(spec)
    if spec.train.run_name:
        return root / spec.train.run_name if (root / spec.train.run_name).is_dir() else None
    link = root / LATEST
    if link.is_symlink() or link.is_dir():
        return root / os.readlink(link) if link.is_symlink() else link
    return None


def new_run(spec: Spec) -> Path:
    """Make the directory of a new run (never an existing one) and point `latest` at it."""
    root = claim_dir(runs_root(spec), (LATEST,), "run directory (train.out)")  # absent, empty, or netspec's runs
    root.mkdir(parents=True, exist_ok=True)
    if spec.train.run_name:
        run = root / spec.train.run_name
        try:
            run.mkdir()
        except FileExistsError:
            raise UserError(f"run {run} exists already (train.run_name={spec.train.run_name})",
                            "continue it with --resume, or give another train.run_name") from None
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for i in range(1, 1000):
            run = root / (stamp if i == 1 else f"{stamp}-{i}")
            try:
                run.mkdir()
                break
            except FileExistsError:
                continue
    point_latest(run)
    return run


def point_latest(run: Path) -> None:
    """`<root>/latest` → run (a relative symlink, replaced atomically)."""
    link = run.parent / LATEST
    tmp = run.parent / f".{LATEST}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(run.name, tmp)
    os.replace(tmp, link)


def checkpoint_dir(run: Path) -> Path:
    return run / "checkpoints"


def best_checkpoint(spec: Spec) -> Path:
    """The checkpoint to deploy or evaluate: the latest run's best.pt, else its last.pt (as its manifest says)."""
    run = latest_run(spec)
    where = run or runs_root(spec) / (spec.train.run_name or LATEST)
    if run is not None:
        folder = checkpoint_dir(run)
        index = read_index(folder)
        for key, name in (("best", BEST), ("last", LAST)):
            if (folder / name).is_file() and (key in index or not index):
                return folder / name
    raise UserError(f"no checkpoint in {where}", "train first (`netspec train`), or name one with --checkpoint PATH")


# --- the lock --------------------------------------------------------------------------------

class RunLock:
    """An exclusive lock on a run directory for a training process's lifetime (`flock` on `<run>/lock`)."""

    def __init__(self, run: Path):
        self.path = run / LOCK
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "?"
            self.file.close()
            raise UserError(f"run {run} is in use by another `netspec train` (process {holder})",
                            f"wait for it to finish, or stop it (kill {holder}); start a new run without --resume "
                            "or train.run_name") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()

    def release(self) -> None:
        if not self.file.closed:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()


# --- writing and checking checkpoints --------------------------------------------------------

def non_finite(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity (one reduction per tensor)."""
    return [name for name, t in state_dict.items()
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _write(path: Path, data: bytes | str) -> None:
    """One atomic file write (a seam for the fault-injection tests)."""
    atomic_write(path, data)


def save(folder: Path, state: dict, *, best: bool) -> None:
    """Write best.pt (when `best`) first, then last.pt, then the manifest naming what each holds.

    A kill between the writes leaves best.pt never older than what last.pt and the manifest claim; `verify`
    brings the manifest in line on resume. Non-finite parameters are refused (nothing is written). Disk full is
    one line; the files on disk are the previous ones."""
    bad = non_finite(state["model"])
    if bad:
        raise UserError(f"not saving step {state['step']}: non-finite values in {layers(bad)}",
                        "the previous checkpoints are kept")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    index = read_index(folder)
    index.update(spec_name=state["spec_name"], spec_hash=state["spec_hash"])
    try:
        if best:
            _write(folder / BEST, data)
            index["best"] = describe(state, BEST)
        _write(folder / LAST, data)
        index["last"] = describe(state, LAST)
        _write(folder / INDEX, json.dumps(index, indent=1) + "\n")
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"disk full while writing a checkpoint in {folder}; the files there are the previous "
                            "ones, intact", "free some space, then `netspec train --resume`") from None
        raise


def describe(state: dict, name: str) -> dict:
    """A manifest entry: what a checkpoint file holds."""
    return {"file": name, "epoch": state["epoch"], "step": state["step"], "batch": state.get("batch", 0),
            "metric": "top1/main", "value": state["best"]}


def remove_stale_temps(folder: Path) -> list[str]:
    """Delete the temp files of writes a kill interrupted (`.<name>.*.tmp`, see project.atomic_file)."""
    gone = []
    if folder.is_dir():
        for path in folder.glob(".*.tmp"):
            path.unlink(missing_ok=True)
            gone.append(path.name)
    return gone


def verify(folder: Path) -> list[str]:
    """Check last.pt, best.pt and the manifest agree; rewrite the manifest from the files when they do not.
    Returns what was repaired (one line each); a damaged file is a UserError naming it."""
    index = read_index(folder)
    fixed = []
    for key, name in (("last", LAST), ("best", BEST)):
        path = folder / name
        if not path.is_file():
            if key in index:
                fixed.append(f"{name} is missing (the manifest named epoch {index[key].get('epoch')})")
                index.pop(key)
            continue
        state = load_checkpoint(path, resume=True)  # what a resume reads: training state included
        entry = describe(state, name)
        if index.get(key) != entry:
            was = index.get(key)
            fixed.append(f"the manifest said {name} holds "
                         + (f"epoch {was.get('epoch')} step {was.get('step')}" if was else "nothing")
                         + f"; it holds epoch {entry['epoch']} step {entry['step']}")
            index[key] = entry
    if fixed:
        _write(folder / INDEX, json.dumps(index, indent=1) + "\n")
    return fixed


def load_checkpoint(path: str | Path, *, resume: bool = False) -> dict:
    """Read a checkpoint safely (`weights_only`). A missing, damaged or foreign file is a UserError naming it;
    with `resume`, the file must also hold the training state (optimizer, scheduler, rng, epoch, ...)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}", "train first (`netspec train`), or give the path of a .pt file")
    try:
        with warnings.catch_warnings():  # torch warns before refusing a pickle; the error below says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged or foreign file can make the unpickler raise nearly anything
        raise UserError(f"cannot read checkpoint {path}: it is damaged or not a checkpoint ({type(e).__name__})",
                        "use the other checkpoint in its directory (last.pt or best.pt), or train again") from None
    validate_checkpoint(state, path, resume=resume)
    return state


# --- a checkpoint knows its graph ------------------------------------------------------------

def check_heads(state: dict, compiled, heads: list[str], path: Path, action: str) -> None:
    """Refuse (one line, naming the head and what changed) to load heads whose structure differs from the
    checkpoint's. Checkpoints written before structures were recorded pass (names and shapes are still checked)."""
    old = state.get("structure")
    if not old:
        return
    new = compiled_structure(compiled)
    changed = structure.changed_heads(old, new, heads)
    if changed:
        text = "; ".join(f"{h}: {what}" for h, what in changed.items())
        intact = [h for h in new["heads"] if h not in changed and h in old["heads"]]
        hint = (f"`--exit {intact[0]}`" + (" / `--prune-aux`" if "main" in intact else "") + " still work"
                + (f" ({', '.join(intact)} unchanged)" if intact else "")) if intact else "nothing of it is intact"
        raise UserError(f"{path} was trained with another graph: {text}; cannot {action} it",
                        f"{hint}; or retrain (`netspec train`)")


def compiled_structure(compiled) -> dict:
    return structure.record(compiled.network, compiled.module.state_dict().keys())


def copy_unchanged(model: nn.Module, state: dict, compiled, source: Path) -> tuple[list[str], list[str], dict[str, str]]:
    """init.from: copy the parameters of the nodes whose ancestry is unchanged; (copied, new, changed node → why)."""
    old = state.get("structure")
    weights = state["model"]
    own = model.state_dict()
    if not old:  # an old checkpoint: by name and shape, as Caffe copies layers
        copied, missing = load_weights(model, weights, source, missing_ok=True, unused_ok=True)
        return copied, missing, {}
    new = compiled_structure(compiled)
    keep = structure.unchanged_nodes(old, new)
    owner = new["params"]
    copied = [n for n in own if n in weights and owner.get(n) in keep and own[n].shape == weights[n].shape]
    why = {}
    for name in own:
        node = owner.get(name)
        if name in weights and node not in keep and node in old["nodes"] and node not in why:
            why[node] = _why(old, new, node)
    model.load_state_dict({n: weights[n] for n in copied}, strict=False)
    return copied, [n for n in own if n not in copied], why


def _why(old: dict, new: dict, node: str) -> str:
    a, b = old["nodes"][node], new["nodes"][node]
    if a["op"] != b["op"]:
        return structure._op_diff(json.loads(a["op"]), json.loads(b["op"]))
    if a["inputs"] != b["inputs"]:
        return f"was from {', '.join(a['inputs'])}, now from {', '.join(b['inputs'])}"
    own = lambda rec, n: (rec["nodes"][n]["op"], rec["nodes"][n]["inputs"])  # noqa: E731
    upstream = [n for n in structure.ancestry(new, node)
                if n != node and (n not in old["nodes"] or own(old, n) != own(new, n))]
    return f"depends on {upstream[0]}" if upstream else "its input changed"
def _tensor(kind: torch.dtype | None = None, length: int | None = None):
    def check(value) -> bool:
        return isinstance(value, torch.Tensor) and (kind is None or value.dtype == kind) and (
            length is None or value.shape == (length,))
    return check


def _is(*types):
    return lambda value: isinstance(value, types) and not isinstance(value, bool)


# What `rng_state` writes for one process, and the training state `_train` saves: checked before use, so a
# foreign or damaged file is one error naming it, not a failure deep inside torch.
_RNG = {"torch": _tensor(torch.uint8), "cuda": lambda v: isinstance(v, list) and all(map(_tensor(torch.uint8), v)),
        "python": _tensor(torch.int64, 626), "python_gauss": lambda v: _tensor(torch.float64)(v) and v.numel() <= 1,
        "numpy": _tensor(torch.int64, 624), "numpy_extra": _tensor(torch.float64, 3)}
_TRAINING = {
    "optimizer": lambda v: isinstance(v, dict) and isinstance(v.get("state"), dict)
    and isinstance(v.get("param_groups"), list) and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                                        for g in v["param_groups"]),
    "scheduler": lambda v: isinstance(v, dict) and _is(int)(v.get("last_epoch")) and isinstance(v.get("base_lrs"), list),
    "rng": lambda v: isinstance(v, list) and len(v) > 0 and all(
        isinstance(r, dict) and all(key in r and ok(r[key]) for key, ok in _RNG.items()) for r in v),
    "epoch": lambda v: _is(int)(v) and 0 <= v < 2**40, "step": lambda v: _is(int)(v) and 0 <= v < 2**40,
    "best": _is(int, float), "spec_name": _is(str), "spec_hash": _is(str),
}


def validate_checkpoint(state, path: Path, *, resume: bool = False) -> None:
    """The structure netspec writes (see the module docstring), else a UserError naming the file. Entries a
    weights-only file may lack are checked when present, and required with `resume`."""
    fix = "give a file written by `netspec train`"
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a netspec checkpoint: it holds a {type(state).__name__}, not a dict", fix)
    model = state.get("model")
    if not isinstance(model, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()):
        what = "no 'model' entry" if model is None else "its 'model' entry is not a dict of named tensors"
        raise UserError(f"{path} is not a netspec checkpoint ({what})", fix)
    broken = next((k for k, v in model.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if broken is not None:
        raise UserError(f"{path} is damaged: '{broken[:80]}' holds NaN or infinite values",
                        "use the other checkpoint in its directory (last.pt or best.pt), or train again")
    for key, ok in _TRAINING.items():
        if key in state and not ok(state[key]):
            raise UserError(f"{path} is damaged: its '{key}' entry is not what `netspec train` writes", fix)
    missing = [key for key in _TRAINING if key not in state]
    if resume and missing:
        raise UserError(f"{path} holds weights only (no {', '.join(missing[:3])}), so training cannot resume from it",
                        "train without --resume (use init.from to start from these weights)")


def read_index(folder: Path) -> dict:
    """checkpoints.json (empty when absent); a damaged one is an error naming it, raised before anything is written."""
    path = folder / INDEX
    if not path.exists():
        return {}
    return read_json(path, {"spec_name?": str, "spec_hash?": str, "last?": dict, "best?": dict},
                     f"delete {path} (netspec rewrites it at the next checkpoint)")


# --- random generator states, as tensors -----------------------------------------------------

def rng_state() -> dict[str, torch.Tensor | list[torch.Tensor]]:
    """This process's generator states (torch, cuda, python, numpy) as tensors."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": torch.tensor([version, *mt], dtype=torch.int64),
        "python_gauss": torch.tensor([] if gauss is None else [gauss], dtype=torch.float64),
        "numpy": torch.from_numpy(keys.astype(np.int64)),
        "numpy_extra": torch.tensor([pos, has_gauss, cached], dtype=torch.float64),
    }


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    python = state["python"].tolist()
    gauss = state["python_gauss"].tolist()
    random.setstate((python[0], tuple(python[1:]), gauss[0] if gauss else None))
    pos, has_gauss, cached = state["numpy_extra"].tolist()
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), cached))


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], source: Path, *,
                 missing_ok: bool = False, unused_ok: bool = False) -> tuple[list[str], list[str]]:
    """Copy tensors into `model` by name; returns the (copied, missing) names of the model.

    A shape mismatch is a UserError naming the layer. So are tensors the model needs that `weights` lacks
    (unless `missing_ok`) and tensors of `weights` the model has no place for (unless `unused_ok`, as for an
    export that pruned the branches away)."""
    own = model.state_dict()
    for name, tensor in weights.items():
        if name in own and own[name].shape != tensor.shape:
            layer = name.rsplit(".", 1)[0]
            raise UserError(f"layer '{layer}': {name} is {tuple(tensor.shape)} in {source} but "
                            f"{tuple(own[name].shape)} in this spec",
                            f"give '{layer}' the same shape, or rename it so it starts fresh")
    copied = [n for n in own if n in weights]
    missing = [n for n in own if n not in weights]
    unused = [n for n in weights if n not in own]
    if (missing and not missing_ok) or (unused and not unused_ok):
        raise UserError(f"{source} does not fit this spec: missing {layers(missing) or 'nothing'}; "
                        f"not in the spec {layers(unused) if not unused_ok and unused else 'nothing'}",
                        "use the spec the checkpoint was trained with (or init.from to copy what matches)")
    model.load_state_dict({n: weights[n] for n in copied}, strict=False)
    return copied, missing


def layers(names: list[str]) -> str:
    """Tensor names grouped by layer: 'conv1, conv2, fc8'."""
    return ", ".join(dict.fromkeys(n.rsplit(".", 1)[0] for n in names))

