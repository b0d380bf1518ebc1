"""`netspec probe`, the run: CNDS's gradient probe (Wang et al. 2015, §2, Fig. 2).

The branches are stripped, the plain net is trained for a few SGD iterations with supervision only at
the top (weights ~ N(0, 0.01²), biases 0 by default), and the mean absolute gradient of every backbone
weight layer (conv, fc) is recorded at every iteration; `placement.py` turns that into attach points.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import fx, nn

from netspec.errors import UserError
from netspec.ops import WeightInit
from netspec.spec import MAIN_HEAD
from netspec.compiler import Compiled
from netspec.compiler.lower import apply_init, lower, node_init
from netspec.runtime.data import Batches
from netspec.runtime.objective import Objective
from netspec.runtime.placement import mean, weight_layers

@dataclass(frozen=True)
class Settings:
    """How the probe trains: the same for the run without and the run with branches."""

    iters: int
    seed: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    init: WeightInit | None  # None: the spec's own init
    device: torch.device



def initialise(model: fx.GraphModule, compiled: Compiled, init: WeightInit | None, seed: int) -> None:
    """Re-initialise every layer of `model` (a lowering of `compiled`), in network order, from `seed`.

    Weight layers get `init` and bias 0 (CNDS); `init=None` keeps the spec's `init:` (and per-node `init:`)."""
    torch.manual_seed(seed)
    spec = compiled.spec
    for node in compiled.network:
        module = _submodule(model, node.name)
        if module is None:
            continue
        for sub in module.modules():
            for reset in ("reset_parameters", "reset_running_stats"):
                if hasattr(sub, reset):
                    getattr(sub, reset)()
        if node.op.weighted:
            apply_init(module, *((init, 0.0) if init is not None else node_init(node.op, spec.init)))


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:  # a function call (add, flatten), or a layer of a pruned branch
        return None


def objective(compiled: Compiled, branches: bool):
    """loss(outputs, labels): plain cross-entropy at the top, or the spec's whole training objective at epoch 0."""
    if not branches:
        return F.cross_entropy
    full = Objective(compiled.network)
    return lambda outputs, y: full(outputs, y, 0.0)[0]


def probe(compiled: Compiled, dataset, config: Settings, *, branches: bool) -> dict[str, list[float]]:
    """Train `config.iters` SGD steps; the mean |gradient| of each backbone weight layer at each step."""
    spec = compiled.spec
    model = compiled.module if branches else lower(compiled.network, [MAIN_HEAD], single=True)
    initialise(model, compiled, config.init, config.seed)
    model = model.to(config.device).train()
    layers = {name: model.get_submodule(name) for name in weight_layers(compiled.network)}
    batches = Batches(dataset.train_x, dataset.train_y, config.batch_size, train=True, mean=spec.input.mean,
                      std=spec.input.std, augment=spec.data.augment, device=config.device, seed=config.seed)
    if len(batches) == 0:
        raise UserError(f"the training set has {len(dataset.train_y)} examples, fewer than one batch of {config.batch_size}",
                        "give a smaller --batch-size")
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    loss_fn = objective(compiled, branches)
    history: dict[str, list[float]] = {name: [] for name in layers}
    torch.manual_seed(config.seed)  # dropout
    torch.set_flush_denormal(True)  # vanishing gradients are full of denormals, which are ~10x slower on x86
    try:
        for x, y in _steps(batches, config.iters):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            for name, module in layers.items():
                history[name].append(module.weight.grad.abs().mean().item())
            optimizer.step()
    finally:
        torch.set_flush_denormal(False)
        model.to("cpu")
    return history


def _steps(batches: Batches, count: int):
    """`count` batches, epoch after epoch."""
    epoch = 0
    while True:
        batches.set_epoch(epoch)
        for batch in batches:
            if count == 0:
                return
            count -= 1
            yield batch
        epoch += 1


# --- printing and plots ----------------------------------------------------------------------

def format_table(plain: dict[str, list[float]], threshold: float, with_branches: dict[str, list[float]] | None) -> str:
    """Per layer: mean, first and last |gradient|, vanished?, and with branches the mean and the ratio."""
    head = f"{'layer':<12}{'mean |grad|':>13}{'first':>11}{'last':>11}  vanished (<{threshold:.0e})"
    if with_branches:
        head += f"{'with branches':>15}{'ratio':>9}"
    rows = [head]
    for name, values in plain.items():
        m = mean(values)
        row = f"{name:<12}{m:>13.3e}{values[0]:>11.2e}{values[-1]:>11.2e}  {'yes' if m < threshold else 'no':<20}"
        if with_branches:
            b = mean(with_branches[name])
            row += f"{b:>15.3e}{b / m:>9.2f}"
        rows.append(row.rstrip())
    return "\n".join(rows)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig, stem: Path) -> Path:
    stem.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(stem.with_suffix(".png"), dpi=120)
    fig.savefig(stem.with_suffix(".svg"), metadata={"Date": None})
    return stem


def plot_gradients(history: dict[str, list[float]], threshold: float, stem: Path, title: str) -> Path:
    """CNDS Fig. 2(a): mean |gradient| of each layer against the iteration, log scale."""
    from matplotlib import colormaps

    fig = _figure(8, 4.5)
    ax = fig.add_subplot()
    colours = colormaps["viridis"]
    for i, (name, values) in enumerate(history.items()):
        ax.plot(range(1, len(values) + 1), values, label=name, color=colours(i / max(1, len(history) - 1)))
    ax.axhline(threshold, color="red", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    ax.set(yscale="log", xlabel="iteration", ylabel="mean |gradient|", title=f"{title}: supervision at the top only")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    return _save(fig, stem)


def plot_before_after(plain: dict[str, list[float]], with_branches: dict[str, list[float]], layers: list[str],
                      stem: Path, title: str) -> Path:
    """CNDS Fig. 2(b–d): each lower layer's mean |gradient|, without and with the branches."""
    columns = min(4, len(layers))
    rows = math.ceil(len(layers) / columns)
    fig = _figure(3.2 * columns, 2.8 * rows)
    for i, name in enumerate(layers):
        ax = fig.add_subplot(rows, columns, i + 1)
        steps = range(1, len(plain[name]) + 1)
        ax.plot(steps, plain[name], label="top only", color="tab:blue")
        ax.plot(steps, with_branches[name], label="with branches", color="tab:red")
        ax.set(yscale="log", title=name, xlabel="iteration")
        if i % columns == 0:
            ax.set_ylabel("mean |gradient|")
    fig.axes[0].legend(fontsize="small")
    fig.suptitle(f"{title}: lower layers before/after adding the branches")
    return _save(fig, stem)
