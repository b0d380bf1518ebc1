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
from pathlib import Path

import numpy as np
import torch
from torch import nn

from netspec.errors import UserError
from netspec.project import atomic_write
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
    atomic_write(folder / LAST, data)
    index_path = folder / INDEX
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    index.update(spec_name=state["spec_name"], spec_hash=state["spec_hash"],
                 last={"file": LAST, "epoch": state["epoch"], "step": state["step"]})
    if best:
        atomic_write(folder / BEST, data)
        index["best"] = {"file": BEST, "epoch": state["epoch"], "metric": "top1/main", "value": state["best"]}
    atomic_write(index_path, json.dumps(index, indent=1) + "\n")


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint safely (`weights_only`). A missing, damaged or foreign file is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}", "train first (`netspec train`), or give the path of a .pt file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged or foreign file can make the unpickler raise nearly anything
        raise UserError(f"cannot read checkpoint {path}: it is damaged or not a checkpoint ({type(e).__name__})",
                        "use the other checkpoint in its directory (last.pt or best.pt), or train again") from e
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{path} is not a netspec checkpoint (no 'model' entry)",
                        "give a file written by `netspec train`")
    return state


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
