"""`netspec probe`: arguments, checks, and the report of the probe run (runtime/probe.py, runtime/placement.py,
runtime/spec_edit.py)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from netspec.errors import UserError, did_you_mean
from netspec.ops import Gaussian, Kaiming, TorchDefault, WeightInit, Xavier
from netspec.project import atomic_write, build_root, check_output_file, claim_dir
from netspec.solver import SGD
from netspec.compiler import Compiled
from netspec.runtime.data import load_dataset
from netspec.runtime.distributed import pick_device
from netspec.runtime.placement import (attach_node, attach_points, candidates, default_decay, format_points, mean,
                                       supervised_layers, weight_layers)
from netspec.runtime.probe import Settings, format_table, plot_before_after, plot_gradients, probe
from netspec.runtime.spec_edit import add_branches, apply_target
from netspec.commands.common import add_spec_arguments, load

INITS = {"gaussian": lambda std: Gaussian(type="gaussian", std=std), "kaiming": lambda: Kaiming(type="kaiming"),
         "xavier": lambda: Xavier(type="xavier"), "default": lambda: TorchDefault(type="default")}

RULE_HELP = """\
the rule: walking down from the top weight layer, the first attach point is the highest conv layer
whose mean |gradient| over the iterations is below --threshold (CNDS: 1e-7); each next point is the
highest conv layer below the previous one whose gradient is another --decay times smaller (default:
top layer's gradient / threshold, i.e. it vanishes again counting from the branch). A branch attaches
after the layer's activation (conv3_2 -> from: relu3_2). See docs/probe.md."""


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
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
        check_output_file(apply_target(compiled.path, args.in_place, args.output), "new spec")
        if args.branch_template is not None and args.branch_template not in compiled.spec.branches:
            raise UserError(f"--branch-template '{args.branch_template}' is not a branch of {compiled.path}",
                            did_you_mean(args.branch_template, compiled.spec.branches) if compiled.spec.branches
                            else "the spec has no branches; leave the option out for the default CNDS head")
    device = pick_device(args.device, what="--device")
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


def init_text(init: WeightInit | None, compiled: Compiled) -> str:
    """The init a probe uses, in words: `--init`'s filler, or (None) the spec's `init.weight` (per-node overrides
    aside)."""
    init = init if init is not None else compiled.spec.init.weight
    if init is None:
        return "default (PyTorch's)"
    fields = init.model_dump(exclude={"type", "std"}, exclude_defaults=True)
    std = f":{init.std:g}" if init.type == "gaussian" else ""
    return init.type + std + "".join(f" {k}={v}" for k, v in fields.items())


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    compiled, overrides = load(args)
    config = settings(args, compiled)
    out = claim_dir(Path(args.out) if args.out else build_root() / compiled.spec.name / "probe", ("probe.json",),
                    "probe directory")
    net = compiled.network
    if args.with_branches and not compiled.spec.branches:
        raise UserError(f"{compiled.path} has no branches to probe with",
                        "run `netspec probe --apply` first, then probe the new spec with --with-branches")
    dataset = load_dataset(compiled.spec.data, compiled.spec.input.shape, compiled.limits)
    layers = weight_layers(net)
    plain = probe(compiled, dataset, config, branches=False)
    table = {name: mean(plain[name]) for name in candidates(net)}
    points = attach_points(table, args.threshold, args.decay, args.max_points)
    report = {"spec": str(compiled.path), "overrides": overrides, "iters": config.iters, "seed": config.seed,
              "batch_size": config.batch_size, "lr": config.lr, "init": args.init, "threshold": args.threshold,
              "decay": args.decay or default_decay(table, args.threshold), "layers": layers, "gradients": plain,
              "points": [{"layer": p, "from": attach_node(net, p)} for p in points]}
    title = f"{compiled.spec.name}, init {init_text(config.init, compiled)}"
    plots = [plot_gradients(plain, args.threshold, out / "probe_gradients", title)]
    with_branches = None
    if args.with_branches:
        with_branches = probe(compiled, dataset, config, branches=True)
        report["with_branches"] = with_branches
        lower_layers = supervised_layers(net)
        plots.append(plot_before_after(plain, with_branches, lower_layers, out / "probe_branches", title))
    atomic_write(out / "probe.json", json.dumps(report, indent=1) + "\n")

    probed, own = init_text(config.init, compiled), init_text(None, compiled)
    print(f"{compiled.spec.name}: {config.iters} SGD iterations (batch {config.batch_size}, lr {config.lr:g}, "
          f"init {probed}, seed {config.seed}), supervision at the top only\n")
    if probed != own:
        print(f"warning: probed with init {probed}, but the spec initialises its weight layers with {own}: training "
              f"sees other gradients{' (and --apply writes branches for this init)' if args.apply else ''}; "
              "`--init spec` probes the spec's own init\n")
    print(format_table(plain, args.threshold, with_branches))
    print()
    print(format_points(net, table, points, args.threshold))
    if args.apply:
        target = apply_target(compiled.path, args.in_place, args.output)
        print(add_branches(compiled, overrides, points, target, args.branch_template))
    print(f"\nwrote {out / 'probe.json'}, " + ", ".join(f"{p}.png/.svg" for p in plots)
          + f" in {time.perf_counter() - started:.1f}s")
    return 0
