"""A run's checkpoints: `last.pt` and `best.pt` with the manifest that vouches for them; init.from; generator states.

In `<run>/checkpoints/`: `best.pt` (the best main-exit top-1 on the validation split, or on the test split
without one), `last.pt` (where to resume) and `checkpoints.json`, the manifest, written last: it names what each
file holds (and, under `record`, the hashes of the run's record, runtime/run.py), so a kill between the writes
never leaves a pair that disagrees unnoticed: `verify` repairs the manifest from the files, and rebuilds it when it
is damaged. The file format (what a checkpoint holds, its writer and reader) is compiler/checkpoint_format.py.
"""
from __future__ import annotations

import errno
import json
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from netspec.compiler import structure
from netspec.compiler.checkpoint_format import checkpoint_bytes, load_checkpoint, non_finite
from netspec.errors import UserError
from netspec.project import atomic_write, read_json

LAST, BEST, INDEX = "last.pt", "best.pt", "checkpoints.json"


# --- writing and checking checkpoints --------------------------------------------------------

def _write(path: Path, data: bytes | str) -> None:
    """One atomic file write (a seam for the fault-injection tests)."""
    atomic_write(path, data)


def write_run_file(path: Path, data: bytes | str) -> None:
    """Write a run file (checkpoint, manifest, record) atomically. Disk full is one line; the file on disk is the
    previous one."""
    try:
        _write(path, data)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"disk full while writing {path}; the files of the run are the previous ones, intact",
                            "free some space, then `netspec train --resume`") from None
        raise


def save(folder: Path, state: dict, *, best: bool, keep: int = 0) -> None:
    """Write best.pt (when `best`) first, then last.pt (and, with `keep`, step-<step>.pt beside it), then the
    manifest naming what each holds; snapshots beyond the newest `keep` are deleted after it.

    A kill between the writes leaves best.pt never older than what last.pt and the manifest claim; `verify`
    brings the manifest in line on resume. Non-finite parameters are refused (nothing is written). Disk full is
    one line; the files on disk are the previous ones."""
    bad = non_finite(state["model"])
    if bad:
        raise UserError(f"not saving step {state['step']}: non-finite values in {layers(bad)}",
                        "the previous checkpoints are kept")
    data = checkpoint_bytes(state)
    index = read_index(folder)
    index.update(spec_name=state["spec_name"], spec_hash=state["spec_hash"])
    if best:
        write_run_file(folder / BEST, data)
        index["best"] = describe(state, BEST)
    write_run_file(folder / LAST, data)
    index["last"] = describe(state, LAST)
    kept = [s for s in index.get("snapshots", []) if s["step"] != state["step"]]
    if keep:
        name = f"step-{state['step']}.pt"
        write_run_file(folder / name, data)
        kept.append(describe(state, name))
    cut = max(len(kept) - keep, 0)
    gone, index["snapshots"] = kept[:cut], kept[cut:]
    write_run_file(folder / INDEX, json.dumps(index, indent=1) + "\n")
    for entry in gone:
        (folder / entry["file"]).unlink(missing_ok=True)


def describe(state: dict, name: str) -> dict:
    """A manifest entry: what a checkpoint file holds."""
    return {"file": name, "epoch": state["epoch"], "step": state["step"], "batch": state.get("batch", 0),
            "metric": state.get("metric", "top1/main"), "value": state["best"]}


def remove_stale_temps(folder: Path) -> list[str]:
    """Delete the temp files of writes a kill interrupted (`.<name>.*.tmp`, see project.atomic_file)."""
    gone = []
    if folder.is_dir():
        for path in folder.glob(".*.tmp"):
            path.unlink(missing_ok=True)
            gone.append(path.name)
    return gone


def verify(folder: Path, *, rebuild: bool = False, write: bool = True) -> list[str]:
    """Check last.pt, best.pt and the manifest agree; rewrite the manifest from the files when they do not
    (`rebuild`: the manifest is damaged, write it from the files alone; `write=False`: say, write nothing).
    Returns what was repaired (one line each); a damaged checkpoint is a UserError naming it."""
    index = {} if rebuild else read_index(folder)
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
    present = [s for s in index.get("snapshots", []) if (folder / s["file"]).is_file()]
    if present != index.get("snapshots", present):
        fixed.append(f"{len(index['snapshots']) - len(present)} snapshot(s) it listed are gone")
        index["snapshots"] = present
    if (fixed or rebuild) and write:
        write_run_file(folder / INDEX, json.dumps(index, indent=1) + "\n")
    return fixed


def set_index_entry(folder: Path, key: str, value) -> None:
    """Set one entry of the manifest (the run's `record` hashes), keeping the rest."""
    index = read_index(folder)
    index[key] = value
    write_run_file(folder / INDEX, json.dumps(index, indent=1) + "\n")


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


def read_weights(source: Path) -> dict[str, torch.Tensor]:
    """init.from: the named tensors of a netspec checkpoint, or of a plain PyTorch state dict file (a dict of
    tensors, or one under `state_dict` / `model`, as torch.save(model.state_dict()) and most trainers write)."""
    try:
        return load_checkpoint(source)["model"]
    except UserError as err:
        if not source.is_file():
            raise
        state = _plain_state_dict(source)
        if state is None:
            raise UserError(f"init.from {source}: neither a netspec checkpoint nor a state dict of named tensors",
                            "give a file written by `netspec train`, or by torch.save(model.state_dict())") from err
        return state


def _plain_state_dict(source: Path) -> dict[str, torch.Tensor] | None:
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception:  # damaged or foreign: the caller names the file
        return None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    ok = isinstance(state, dict) and state and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                   for k, v in state.items())
    return dict(state) if ok else None


def copy_matching(model: nn.Module, weights: dict[str, torch.Tensor]) -> tuple[list[str], list[str], dict[str, str]]:
    """init.from: copy every layer whose tensors are all in `weights` under the same qualified names and shapes, as
    Caffe's CopyTrainedLayersFrom copies layers by name. Returns (copied tensors, new: tensors the weights lack,
    changed: layer → the first tensor whose shape differs, then and now); a changed layer starts afresh whole."""
    own = model.state_dict()
    layer = lambda name: name.rsplit(".", 1)[0]  # noqa: E731
    changed: dict[str, str] = {}
    for name in own:
        if name in weights and own[name].shape != weights[name].shape and layer(name) not in changed:
            changed[layer(name)] = f"{name.rsplit('.', 1)[-1]} {tuple(weights[name].shape)} → {tuple(own[name].shape)}"
    copied = [n for n in own if n in weights and layer(n) not in changed]
    model.load_state_dict({n: weights[n] for n in copied}, strict=False)
    return copied, [n for n in own if n not in weights], changed


def read_index(folder: Path) -> dict:
    """checkpoints.json (empty when absent); a damaged one is an error naming it, raised before anything is written."""
    path = folder / INDEX
    if not path.exists():
        return {}
    return read_json(path, {"spec_name?": str, "spec_hash?": str, "last?": dict, "best?": dict, "record?": dict,
                            "snapshots?": [dict]},
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

