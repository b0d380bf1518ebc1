"""`netspec probe`: CNDS's rule of thumb for where a supervision branch goes (Wang et al. 2015, §2, Fig. 2).

The probe strips the branches, trains the plain net for a few SGD iterations with supervision only
at the top (weights ~ N(0, 0.01²), biases 0 by default), and records the mean absolute gradient of
every backbone weight layer (conv, fc) at every iteration. The suggestion is a pure function of the
layers' mean gradients over those iterations (`attach_points`):

* Candidates are the conv layers (weight layers whose output is a feature map): CNDS puts branches
  after conv layers, and a branch head (pool, 1x1 conv) needs a feature map.
* Walk down from the top weight layer. The first attach point is the highest candidate whose mean
  gradient is below `threshold` (the paper: 1e-7).
* Each further point is the highest candidate below the previous one whose gradient is another `decay`
  times smaller than the previous point's. `decay` defaults to top gradient / threshold: a branch
  makes its attach point a new "top", so the next point is where the gradient vanishes again,
  counted from there (CNDS-13: "gradients tend to decay every three to four layers").
* If the top layer's own gradient is below the threshold, nothing is suggested (the net is dead).

A branch attaches after the layer's own normalisation and activation (conv3_2 → `from: relu3_2`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from compiler import Compiled, analyse
from compiler.graph import data_graph, exit_ancestry, in_order
from compiler.lower import apply_init, lower, node_init
from compiler.parse import load_yaml, read_spec_file
from netspec.errors import SpecError, UserError, did_you_mean
from netspec.ops import Gaussian, Kaiming, TorchDefault, WeightInit, Xavier
from netspec.project import atomic_write, build_root
from netspec.spec import MAIN_HEAD, SGD
from runtime.data import Batches, load_dataset
from runtime.objective import Objective

INITS = {"gaussian": lambda std: Gaussian(type="gaussian", std=std), "kaiming": lambda: Kaiming(type="kaiming"),
         "xavier": lambda: Xavier(type="xavier"), "default": lambda: TorchDefault(type="default")}
FOLLOW_OPS = {"batchnorm", "relu", "prelu", "leaky_relu"}  # a branch goes after these, not between them and their layer
BRANCH_LOSS = {"weight": 0.3, "schedule": "cnds"}  # CNDS: α_0 = 0.3, eq. 2

RULE_HELP = """\
the rule: walking down from the top weight layer, the first attach point is the highest conv layer
whose mean |gradient| over the iterations is below --threshold (CNDS: 1e-7); each next point is the
highest conv layer below the previous one whose gradient is another --decay times smaller (default:
top layer's gradient / threshold, i.e. it vanishes again counting from the branch). A branch attaches
after the layer's activation (conv3_2 -> from: relu3_2). See docs/probe.md."""


# --- arguments -------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    from netspec.cli import add_spec_arguments

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = RULE_HELP
    add_spec_arguments(parser)
    parser.add_argument("--iters", type=int, default=30, help="SGD iterations to record (CNDS: 10-50; default 30)")
    parser.add_argument("--threshold", type=float, default=1e-7, help="a mean gradient below this has vanished (default 1e-7)")
    parser.add_argument("--decay", type=float, default=None,
                        help="drop factor between successive attach points (default: top gradient / threshold)")
    parser.add_argument("--max-points", type=int, default=None, help="suggest at most this many attach points")
    parser.add_argument("--init", default="gaussian:0.01",
                        help="weight init for every weight layer: gaussian[:STD] (default gaussian:0.01, biases 0, "
                             "as in CNDS), kaiming, xavier, default (PyTorch's; biases 0), or spec (the spec's own init:)")
    parser.add_argument("--seed", type=int, default=None, help="seed for init, data order and dropout (default: train.seed)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: train.batch_size")
    parser.add_argument("--lr", type=float, default=None, help="SGD learning rate (default: the spec's SGD lr, else 0.01)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--out", default=None, help="directory for probe.json and the plots (default build/<name>/probe/)")
    parser.add_argument("--with-branches", action="store_true",
                        help="probe again with the spec's branches on and plot the lower layers' gradients before/after")
    parser.add_argument("--apply", action="store_true",
                        help="write a spec with a branch at each suggested point (default <spec>_probed.yaml beside it)")
    parser.add_argument("-o", "--output", default=None, help="with --apply: the new spec's path (never overwritten)")
    parser.add_argument("--in-place", action="store_true", help="with --apply: rewrite the spec itself, keeping <spec>.bak")
    parser.add_argument("--branch-template", default=None,
                        help="with --apply: copy the nodes of this branch of the spec (default: its first branch, "
                             "else a CNDS head: avgpool, 1x1 conv, relu, fc, relu, dropout, fc, relu, fc)")


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


def settings(args: argparse.Namespace, compiled: Compiled) -> Settings:
    """Check the arguments and fill the defaults from the spec."""
    if args.iters <= 0:
        raise UserError(f"--iters must be positive, not {args.iters}", "CNDS runs 10-50 iterations, e.g. --iters 30")
    if not args.threshold > 0:
        raise UserError(f"--threshold must be positive, not {args.threshold}", "CNDS uses --threshold 1e-7")
    if args.decay is not None and not args.decay > 1:
        raise UserError(f"--decay must be greater than 1, not {args.decay}", "e.g. --decay 1e3, or leave it out")
    if args.max_points is not None and args.max_points <= 0:
        raise UserError(f"--max-points must be positive, not {args.max_points}", "e.g. --max-points 1")
    if args.batch_size is not None and args.batch_size <= 0:
        raise UserError(f"--batch-size must be positive, not {args.batch_size}", "e.g. --batch-size 128")
    if args.lr is not None and not args.lr > 0:
        raise UserError(f"--lr must be positive, not {args.lr}", "e.g. --lr 0.01")
    if (args.in_place or args.output) and not args.apply:
        raise UserError("--in-place and -o only make sense with --apply", "add --apply")
    if args.in_place and args.output:
        raise UserError("--in-place and -o both say where the new spec goes", "give one of them")
    if args.apply:
        apply_target(compiled.path, args)
        if args.branch_template is not None and args.branch_template not in compiled.spec.branches:
            raise UserError(f"--branch-template '{args.branch_template}' is not a branch of {compiled.path}",
                            did_you_mean(args.branch_template, compiled.spec.branches) if compiled.spec.branches
                            else "the spec has no branches; leave the option out for the default CNDS head")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UserError(f"unknown --device '{args.device}'", "e.g. --device cpu or --device cuda:0") from None
    train = compiled.spec.train
    sgd = train.optimizer if isinstance(train.optimizer, SGD) else SGD(type="sgd", lr=0.01, weight_decay=0.0)
    return Settings(args.iters, train.seed if args.seed is None else args.seed, args.batch_size or train.batch_size,
                    args.lr or sgd.lr, sgd.momentum, sgd.weight_decay, parse_init(args.init), device)


def parse_init(text: str) -> WeightInit | None:
    """`gaussian[:STD]`, `kaiming`, `xavier`, `default` → a weight filler; `spec` → None (keep the spec's)."""
    name, _, value = text.partition(":")
    if name == "spec" and not value:
        return None
    if name not in INITS:
        raise UserError(f"unknown --init '{text}'", did_you_mean(name, [*INITS, "spec"]))
    if name != "gaussian":
        if value:
            raise UserError(f"--init {name} takes no value", f"write --init {name}")
        return INITS[name]()
    try:
        std = float(value) if value else 0.01
    except ValueError:
        raise UserError(f"--init {text}: '{value}' is not a number", "e.g. --init gaussian:0.01") from None
    if not std > 0:
        raise UserError(f"--init {text}: the std must be positive", "e.g. --init gaussian:0.01")
    return INITS["gaussian"](std)


def run(args: argparse.Namespace) -> int:
    from netspec.cli import load

    started = time.perf_counter()
    compiled, overrides = load(args)
    config = settings(args, compiled)
    g = compiled.graph
    if args.with_branches and not compiled.spec.branches:
        raise UserError(f"{compiled.path} has no branches to probe with",
                        "run `netspec probe --apply` first, then probe the new spec with --with-branches")
    dataset = load_dataset(compiled.spec.data, compiled.spec.input.shape)
    layers = weight_layers(g)
    plain = probe(compiled, dataset, config, branches=False)
    table = {name: mean(plain[name]) for name in candidates(g)}
    points = attach_points(table, args.threshold, args.decay, args.max_points)
    report = {"spec": str(compiled.path), "overrides": overrides, "iters": config.iters, "seed": config.seed,
              "batch_size": config.batch_size, "lr": config.lr, "init": args.init, "threshold": args.threshold,
              "decay": args.decay or default_decay(table, args.threshold), "layers": layers, "gradients": plain,
              "points": [{"layer": p, "from": attach_node(g, p)} for p in points]}
    out = Path(args.out) if args.out else build_root() / compiled.spec.name / "probe"
    title = f"{compiled.spec.name}, init {args.init}"
    plots = [plot_gradients(plain, args.threshold, out / "probe_gradients", title)]
    with_branches = None
    if args.with_branches:
        with_branches = probe(compiled, dataset, config, branches=True)
        report["with_branches"] = with_branches
        lower_layers = supervised_layers(g)
        plots.append(plot_before_after(plain, with_branches, lower_layers, out / "probe_branches", title))
    atomic_write(out / "probe.json", json.dumps(report, indent=1) + "\n")

    print(f"{compiled.spec.name}: {config.iters} SGD iterations (batch {config.batch_size}, lr {config.lr:g}, "
          f"init {args.init}, seed {config.seed}), supervision at the top only\n")
    print(format_table(plain, args.threshold, with_branches))
    print()
    print(format_points(g, table, points, args.threshold))
    if args.apply:
        print(apply(compiled, overrides, points, args))
    print(f"\nwrote {out / 'probe.json'}, " + ", ".join(f"{p}.png/.svg" for p in plots)
          + f" in {time.perf_counter() - started:.1f}s")
    return 0


# --- the rule (pure) -------------------------------------------------------------------------

def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def default_decay(table: dict[str, float], threshold: float) -> float:
    """The drop from the top layer's gradient to the threshold."""
    return list(table.values())[-1] / threshold


def attach_points(table: dict[str, float], threshold: float, decay: float | None = None,
                  max_points: int | None = None) -> list[str]:
    """The layers to attach branches after, top first. `table`: mean gradient per weight layer, input to top."""
    *below, top = table.items()
    if top[1] < threshold:
        return []
    decay = decay or default_decay(table, threshold)
    points, level = [], threshold
    for name, gradient in reversed(below):
        if gradient < level and len(points) != max_points:
            points.append(name)
            level = gradient / decay
    return points


def threshold_ladder(table: dict[str, float]) -> list[tuple[str, float, float]]:
    """(layer, low, high): with low < --threshold <= high the first attach point is after that layer."""
    *below, (_, high) = table.items()
    ladder = []
    for name, gradient in reversed(below):
        if gradient < high:
            ladder.append((name, gradient, high))
            high = gradient
    return ladder


# --- the probe run ---------------------------------------------------------------------------

def weight_layers(g: nx.DiGraph) -> list[str]:
    """The backbone's weight layers (conv, fc), input to top."""
    backbone = exit_ancestry(g, MAIN_HEAD)
    layers = [n for n in in_order(g) if n in backbone and g.nodes[n]["op"].weighted]
    if not layers:
        raise UserError("the backbone has no weight layer (conv or fc) to probe", "probe a spec with conv/fc layers")
    return layers


def candidates(g: nx.DiGraph) -> list[str]:
    """The layers a branch may follow (weight layers with a feature-map output), then the top weight layer."""
    *below, top = weight_layers(g)
    return [n for n in below if len(g.nodes[n]["shape"]) == 3] + [top]


def supervised_layers(g: nx.DiGraph) -> list[str]:
    """Backbone weight layers that some branch sits above (the layers a branch can lift)."""
    data = data_graph(g)
    reached = set()
    for attach in branch_attach(g):
        reached |= nx.ancestors(data, attach) | {attach}
    return [n for n in weight_layers(g) if n in reached]


def branch_attach(g: nx.DiGraph) -> dict[str, list[str]]:
    """Backbone node → the branches that start from it."""
    out: dict[str, list[str]] = {}
    for name, attrs in g.nodes(data=True):
        if attrs["kind"] == "op" and attrs["branch"]:
            for source in attrs["inputs"]:
                if g.nodes[source].get("branch") is None:
                    out.setdefault(source, []).append(attrs["branch"])
    return out


def attach_node(g: nx.DiGraph, layer: str) -> str:
    """The node a branch after `layer` starts from: the layer, then its normalisation/activation chain."""
    node = layer
    while True:
        after = [s for s in g.successors(node) if g.nodes[s]["kind"] == "op" and g.nodes[s]["branch"] is None]
        if len(after) != 1 or g.nodes[after[0]]["op"].op not in FOLLOW_OPS:
            return node
        node = after[0]


def initialise(g: nx.DiGraph, init: WeightInit | None, seed: int) -> None:
    """Re-initialise every module of the graph, in spec order, from `seed`.

    Weight layers get `init` and bias 0 (CNDS); `init=None` keeps the spec's `init:` (and per-node `init:`)."""
    torch.manual_seed(seed)
    spec = g.graph["spec"]
    for name in in_order(g):
        attrs = g.nodes[name]
        module = attrs.get("module")
        if not isinstance(module, nn.Module):
            continue
        for sub in module.modules():
            for reset in ("reset_parameters", "reset_running_stats"):
                if hasattr(sub, reset):
                    getattr(sub, reset)()
        op = attrs["op"]
        if op.weighted:
            apply_init(module, *((init, 0.0) if init is not None else node_init(op, spec.init)))


def objective(compiled: Compiled, branches: bool):
    """loss(outputs, labels): plain cross-entropy at the top, or the spec's whole training objective at epoch 0."""
    if not branches:
        return F.cross_entropy
    full = Objective(compiled.graph)
    return lambda outputs, y: full(outputs, y, 0.0)[0]


def probe(compiled: Compiled, dataset, config: Settings, *, branches: bool) -> dict[str, list[float]]:
    """Train `config.iters` SGD steps; the mean |gradient| of each backbone weight layer at each step."""
    g, spec = compiled.graph, compiled.spec
    initialise(g, config.init, config.seed)
    model = (compiled.module if branches else lower(g, [MAIN_HEAD], single=True)).to(config.device).train()
    layers = {name: g.nodes[name]["module"] for name in weight_layers(g)}
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


def format_points(g: nx.DiGraph, table: dict[str, float], points: list[str], threshold: float) -> str:
    if points:
        return "\n".join(f"suggested attach point: after {p} (mean |grad| {table[p]:.2e}) → branch `from: {attach_node(g, p)}`"
                         for p in points)
    top, top_gradient = list(table.items())[-1]
    if top_gradient < threshold:
        return (f"no suggestion: even the top layer {top} has a mean gradient ({top_gradient:.2e}) below the threshold "
                f"— lower --threshold, or check --init and --lr")
    ladder = threshold_ladder(table)
    if not ladder:
        return (f"no suggestion: no conv layer's mean gradient is below the threshold, nor below the top layer's "
                f"({top}, {top_gradient:.2e}): the gradients do not vanish on the way down")
    lines = [f"no suggestion: no conv layer's mean gradient is below {threshold:g}. The first attach point would be"]
    lines += [f"  after {name:<10} for {low:.2e} < --threshold <= {high:.2e}" for name, low, high in ladder]
    return "\n".join(lines)


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


# --- --apply: write a spec with the new branches ---------------------------------------------

def apply(compiled: Compiled, overrides: list[str], points: list[str], args: argparse.Namespace) -> str:
    """Write the spec with a branch after each point; returns what was done."""
    if not points:
        raise UserError("--apply: there is no attach point to add a branch at",
                        "raise --threshold (the table shows each layer's gradient and where it would go)")
    path, g = compiled.path, compiled.graph
    target = apply_target(path, args)
    existing = branch_attach(g)
    wanted = [attach_node(g, p) for p in points]
    skipped = [a for a in wanted if a in existing]
    wanted = [a for a in wanted if a not in existing]
    if not wanted:
        return "\n--apply: nothing to do, the spec already has a branch at " + ", ".join(
            f"{a} ({', '.join(existing[a])})" for a in skipped)
    text = path.read_text()
    merged, own, base = _sections(path, text)
    source, template = branch_template(merged, args.branch_template)
    taken = set(g.nodes) | {k for part in (merged, own, base) for s in ("branches", "losses") for k in (part.get(s) or {})}
    names = _fresh_names(taken, len(wanted))
    branches = {name: {"from": a, "nodes": template or default_head(g.nodes[a]["shape"])} for name, a in zip(names, wanted)}
    losses = {name: {"type": "cross_entropy", "head": name, **BRANCH_LOSS} for name in names}
    if not merged.get("losses"):
        losses = {MAIN_HEAD: {"type": "cross_entropy", "head": MAIN_HEAD}, **losses}
    new_text = add_entries(add_entries(text, "branches", branches, base), "losses", losses, base)
    if target != path:  # its own build directory
        new_text = set_name(new_text, target.stem)
    _check_and_write(new_text, target, overrides, backup=path.with_name(path.name + ".bak") if args.in_place else None)
    done = "\n".join(f"  {name}: from {a}, {source}, loss weight {BRANCH_LOSS['weight']} schedule {BRANCH_LOSS['schedule']}"
                     for name, a in zip(names, wanted))
    kept = f" (kept {path.name}.bak)" if args.in_place else ""
    already = "".join(f"\n  {a}: already has {', '.join(existing[a])}" for a in skipped)
    return f"\n--apply: wrote {target}{kept}:\n{done}{already}"


def apply_target(path: Path, args: argparse.Namespace) -> Path:
    """Where --apply writes: the spec itself (--in-place), -o, or <spec>_probed.yaml; never an existing file."""
    target = path if args.in_place else Path(args.output) if args.output else path.with_name(f"{path.stem}_probed{path.suffix}")
    if target.exists() and not args.in_place:
        raise UserError(f"{target} exists; --apply never overwrites a spec",
                        "give another -o, delete it, or use --in-place (which keeps a .bak)")
    return target


def _plain(value):
    """Parsed YAML (LineDict/LineList) as plain dicts and lists, for yaml.safe_dump."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _sections(path: Path, text: str) -> tuple[dict, dict, dict]:
    """The spec as merged with what it `extends:`, the file's own mapping, and the merged base ({} if none)."""
    own = _plain(load_yaml(text, str(path)))
    base = _plain(read_spec_file(path.parent / own["extends"])) if own.get("extends") else {}
    return _plain(read_spec_file(path)), own, base


def branch_template(merged: dict, name: str | None) -> tuple[str, list[dict] | None]:
    """(description, nodes) of the named branch (checked by `settings`), or of the first; nodes None: the spec has
    none, use `default_head`."""
    branches = merged.get("branches") or {}
    if name is None and not branches:
        return "default CNDS head", None
    name = name or next(iter(branches))
    return f"nodes of {name}", branches[name]["nodes"]


def default_head(shape: tuple[int, int, int]) -> list[dict]:
    """CNDS's branch (Fig. 1) for a C×H×W map: average pool, 1x1 conv, relu, fc-relu, fc-relu, fc classifier."""
    kernel = min(5, *shape[1:])
    return [{"name": "pool", "op": "avgpool", "kernel": kernel, "stride": min(2, kernel), "ceil": True},
            {"name": "conv", "op": "conv", "out": 128, "kernel": 1}, {"name": "relu", "op": "relu"},
            {"name": "fc1", "op": "fc", "out": 1024}, {"name": "relu_fc1", "op": "relu"},
            {"name": "drop_fc1", "op": "dropout", "p": 0.5},
            {"name": "fc2", "op": "fc", "out": 1024}, {"name": "relu_fc2", "op": "relu"},
            {"name": "fc3", "op": "fc", "out": "${classes}"}]


def _fresh_names(taken: set[str], count: int) -> list[str]:
    names, i = [], 1
    while len(names) < count:
        if f"aux{i}" not in taken:
            names.append(f"aux{i}")
        i += 1
    return names


def add_entries(text: str, key: str, entries: dict, base: dict) -> str:
    """Add `entries` to the top-level mapping `key` of the spec text, keeping everything else (comments too).
    `base`: the spec it `extends:` ({} if none).

    A block mapping gets the entries appended after its last line, a flow mapping gets them in flow
    style, a `null` becomes a block mapping (a `null` that deletes an `extends:`-ed section keeps
    deleting its entries), and a missing key is appended at the end of the file."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    value = next((v for k, v in root.value if k.value == key), None)
    if value is None:
        return text.rstrip("\n") + f"\n\n{key}:\n" + _block(entries, "  ")
    if isinstance(value, yaml.MappingNode) and not value.flow_style and value.value:
        indent = " " * value.value[0][0].start_mark.column
        end = _last_mark(value)
        lines = text.splitlines(keepends=True)
        at = end.line + 1 if end.column > 0 else end.line
        if at >= len(lines) and lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        return "".join(lines[:at]) + _block(entries, indent) + "".join(lines[at:])
    start, stop = value.start_mark.index, value.end_mark.index
    if isinstance(value, yaml.MappingNode):
        return text[:start] + _flow({**yaml.safe_load(text[start:stop]), **entries}) + text[stop:]
    deleted = {name: None for name in base.get(key) or {}}  # `key: null` deletes what the base has
    return text[:start].rstrip(" ") + "\n" + _block({**deleted, **entries}, "  ").rstrip("\n") + text[stop:]


def set_name(text: str, name: str) -> str:
    """The spec text with `name: <name>` (replaced where it is written, else added before the first key)."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    value = next((v for k, v in root.value if k.value == "name"), None)
    if value is None:
        at = root.value[0][0].start_mark.index
        return text[:at] + f"name: {_flow(name)}\n" + text[at:]
    return text[:value.start_mark.index] + _flow(name) + text[value.end_mark.index:]


def _last_mark(node):
    """Where the last scalar or flow collection inside a block collection ends (a block's own end is the next token)."""
    while isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and not node.flow_style and node.value:
        last = node.value[-1]
        node = last[1] if isinstance(node, yaml.MappingNode) else last
    return node.end_mark


def _flow(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=math.inf).removesuffix("\n...\n").strip()


def _block(entries: dict, indent: str) -> str:
    """Entries in block style, one node or loss per line: the layout of specs/*.yaml."""
    lines = []
    for name, value in entries.items():
        if isinstance(value, dict) and "nodes" in value:
            lines += [f"{indent}{name}:", f"{indent}  from: {_flow(value['from'])}", f"{indent}  nodes:"]
            lines += [f"{indent}    - {_flow(node)}" for node in value["nodes"]]
        else:
            lines.append(f"{indent}{name}: {_flow(value)}")
    return "\n".join(lines) + "\n"


def _check_and_write(text: str, target: Path, overrides: list[str], backup: Path | None) -> None:
    """Compile the new spec from a temporary file beside the target, then move it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=".yaml")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        try:
            analyse(tmp, overrides)
        except SpecError as err:
            raise UserError(f"the spec with the new branch(es) does not compile: {err}",
                            "check the message: a template must fit the feature map it attaches to (--branch-template), "
                            "and `extends:` paths are relative to the new file's folder") from None
        if backup is not None:
            atomic_write(backup, target.read_text())
        atomic_write(target, text)
    finally:
        Path(tmp).unlink(missing_ok=True)
