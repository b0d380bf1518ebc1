"""Checkpoints: `<run>/checkpoints/last.pt` and `best.pt`, written atomically, read with `weights_only`.

A checkpoint is a dict of tensors and plain values only (so `torch.load(weights_only=True)` reads it):
`model` (state_dict, names as in the spec), `optimizer`, `scheduler`, `rng` (one entry per process:
torch, cuda, python and numpy generator states as tensors), `epoch` (epochs completed), `step`,
`best` (best main-exit top-1 so far), `spec_name`, `spec_hash`. `checkpoints.json` next to them
says which epoch each file holds.
"""
from __future__ import annotations

import io
import json
import random
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from netspec.errors import UserError
from netspec.project import atomic_write, read_json
from netspec.spec import Spec

LAST, BEST, INDEX = "last.pt", "best.pt", "checkpoints.json"


def run_dir(spec: Spec) -> Path:
    """Where a spec's run writes metrics, plots and checkpoints: `train.out`, else `runs/<spec name>`."""
    return Path(spec.train.out) if spec.train.out else Path("runs") / spec.name


def checkpoint_dir(spec: Spec) -> Path:
    return run_dir(spec) / "checkpoints"


def best_checkpoint(spec: Spec) -> Path:
    """The checkpoint to deploy or evaluate: best.pt, else last.pt."""
    folder = checkpoint_dir(spec)
    for name in (BEST, LAST):
        if (folder / name).is_file():
            return folder / name
    raise UserError(f"no checkpoint in {folder}", "train first (`netspec train`), or name one with --checkpoint PATH")


def save(folder: Path, state: dict, *, best: bool) -> None:
    """Write `state` to last.pt (and best.pt when `best`), each atomically, then update checkpoints.json."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    index = read_index(folder)  # a damaged index is an error before anything is written
    atomic_write(folder / LAST, data)
    index_path = folder / INDEX
    index.update(spec_name=state["spec_name"], spec_hash=state["spec_hash"],
                 last={"file": LAST, "epoch": state["epoch"], "step": state["step"]})
    if best:
        atomic_write(folder / BEST, data)
        index["best"] = {"file": BEST, "epoch": state["epoch"], "metric": "top1/main", "value": state["best"]}
    atomic_write(index_path, json.dumps(index, indent=1) + "\n")


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
    (unless `missing_ok`, as for init.from) and tensors of `weights` the model has no place for (unless
    `unused_ok`, as for an export that pruned the branches away)."""
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
