"""The checkpoint format: the one definition of what a netspec checkpoint file holds, its writer and its reader.

Both the runtime (`netspec train`) and the compiler (`import-caffe --weights`) write checkpoints through
`write_checkpoint`, and every command reads them through `load_checkpoint`.

A checkpoint is a dict of tensors and plain values only (`torch.load(weights_only=True)` reads it):
`model` (state_dict, names as in the spec), and for training state `optimizer`, `scheduler`, `rng` (one entry per
process), `epoch` (epochs completed), `step` (optimiser steps done), `batch` (steps done in epoch `epoch`, for a
mid-epoch snapshot; 0 at an epoch boundary), `epoch_sums` (the epoch's running loss sums), `best` (the best
selection metric so far), `metric` (its name: `val_top1/main`, or `top1/main` on the test split without a
validation split), `spec_name`, `spec_hash`, `structure` (compiler/structure.py: each head's ancestry and each
parameter's node). A weights-only file (import-caffe) holds `model`, `epoch` 0, `step` 0, `best` -1, `spec_name`,
`spec_hash` and `source`.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch

from netspec.errors import UserError
from netspec.project import atomic_write


def checkpoint_bytes(state: dict) -> bytes:
    """A checkpoint as the bytes of its file."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def write_checkpoint(path: Path, state: dict) -> None:
    """Write one checkpoint file atomically (readers see the old file or the new one, never half)."""
    atomic_write(Path(path), checkpoint_bytes(state))


def weights_checkpoint(model: dict[str, torch.Tensor], spec_name: str, spec_hash: str, source: str) -> dict:
    """A weights-only checkpoint (epoch 0, no training state), as `import-caffe --weights` writes it."""
    return {"model": model, "epoch": 0, "step": 0, "best": -1.0, "spec_name": spec_name, "spec_hash": spec_hash,
            "source": source}


def non_finite(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity (one reduction per tensor)."""
    return [name for name, t in state_dict.items()
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


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


