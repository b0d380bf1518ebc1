"""`netspec sweep`: train a spec moved N ways on paired seeds (an Optuna study) and tabulate the answer."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

import yaml

from netspec.errors import Pos, UserError
from netspec.project import split_args


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("words", nargs="*", metavar="SPEC|SWEEP.yaml [key=value]",
                        help="the spec (or a sweep file with a `sweep:` section, which may name explicit `arms:`) "
                             "and fixed overrides")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help='a swept key: KEY=v1,v2,... or "KEY=[v1, {type: x}, ...]" (YAML flow); repeat for '
                             "more keys (every combination is an arm); KEY `spec` sweeps the spec file")
    parser.add_argument("--seeds", type=int, default=None, metavar="N",
                        help="train every arm on seeds 0..N-1, paired across arms (default 3)")
    parser.add_argument("--baseline", action="append", default=[], metavar="KEY=V",
                        help="the arm(s) others are compared with (default: the first arm); naming some keys "
                             "compares each arm with the arm that differs from it only in those; arm=NAME names "
                             "a sweep file's explicit arm")
    parser.add_argument("--search", choices=["tpe"], default=None, help="sample arms with Optuna's TPE sampler")
    parser.add_argument("--space", type=Path, default=None, metavar="FILE.yaml",
                        help="search space: KEY: {type: categorical, choices: [...]} | {type: float|int, low, high, log}")
    parser.add_argument("--trials", type=int, default=None, metavar="N", help="search: the number of arms")
    parser.add_argument("--pruner", choices=["median", "none"], default=None,
                        help="stop whole arms whose mean per-epoch top-1 is below the median of completed arms "
                             "(default: median for a search, none for a grid)")
    parser.add_argument("--prune-startup", type=int, default=None, metavar="N",
                        help="no pruning before N arms completed (default 5, Optuna's)")
    parser.add_argument("--jobs", type=int, default=1, metavar="J",
                        help="arms this worker trains at once (each runs its seeds side by side)")
    parser.add_argument("--storage", default=None, metavar="URL",
                        help="Optuna storage URL shared by workers (default sqlite:///runs/<name>/sweeps/<sweep>.db)")
    parser.add_argument("--name", default=None, help="the sweep's name (default: the swept keys and a hash)")
    parser.add_argument("--collect", action="store_true", help="train nothing; tabulate what is finished")
    parser.add_argument("--json", action="store_true", help="print results.json instead of the tables")
    parser.add_argument("--allow-custom", action="store_true", help="allow `op: custom` nodes to import code")


def build_sweep(args: argparse.Namespace):
    from netspec.runtime.sweep import Sweep, check_space, parse_grid, read_sweep_file, read_yaml_file

    target, overrides = split_args(args.words)
    base: dict = {}
    if target and target.endswith((".yaml", ".yml")) and Path(target).is_file() and _is_sweep_file(Path(target)):
        base = read_sweep_file(Path(target))
        target = base.get("spec")
    grid = dict(base.get("grid") or {})
    for item in args.grid:
        key, values = parse_grid(item)
        grid[key] = values
    space = base.get("space") or {}
    if args.space is not None:
        space = check_space(read_yaml_file(args.space, "search space"), "--space", Pos(str(args.space), 1))
    if args.search and not space:
        raise UserError("--search tpe needs a search space", "add --space FILE.yaml")
    if space and not args.search and args.space is not None:
        raise UserError("--space is for a search", "add --search tpe --trials N")
    baseline = dict(base.get("baseline") or {})
    for item in args.baseline:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--baseline {item!r}: expected KEY=VALUE", "e.g. --baseline branches.aux1.from=relu3_2")
        baseline[key.strip()] = value.strip()
    seeds = args.seeds if args.seeds is not None else base.get("seeds", 3)
    if not isinstance(seeds, int) or seeds < 1:
        raise UserError(f"--seeds {seeds}: need a whole number >= 1", "3 or more for an interval")
    return Sweep(spec=Path(target) if target else None, overrides=list(base.get("overrides") or []) + overrides,
                 grid=grid, space=space, arms=base.get("arms") or {}, compare=base.get("compare") or [],
                 seeds=list(range(seeds)), baseline=baseline,
                 trials=args.trials or base.get("trials"), pruner=args.pruner or base.get("pruner"),
                 prune_startup=args.prune_startup if args.prune_startup is not None else base.get("prune_startup", 5),
                 name=args.name or base.get("name"), storage=args.storage, jobs=max(1, args.jobs), limits=args.limits)


def _is_sweep_file(path: Path) -> bool:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "sweep" in data


def run(args: argparse.Namespace) -> int:
    from netspec.runtime import sweep as engine

    sweep = build_sweep(args)
    engine.prepare(sweep)
    say = lambda text: print(f"sweep {sweep.name}: {text}", file=sys.stderr, flush=True)  # noqa: E731
    status = 0
    if not args.collect:
        arms = sweep.trials if sweep.space else len(sweep.grid_arms())
        say(f"{arms} arm(s) x {len(sweep.seeds)} seed(s); runs in {sweep.runs}; study {sweep.storage_url()}")
        stop = threading.Event()
        caught: list[int] = []

        def on_signal(signum, frame) -> None:
            caught.append(signum)
            stop.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        started = time.perf_counter()
        try:
            engine.work(sweep, stop, say)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        say(f"this worker: {(time.perf_counter() - started) / 60:.1f} min")
        if caught:
            say(f"{signal.Signals(caught[0]).name}: the runs saved a checkpoint; run the same command to resume")
            status = 128 + caught[0]
    data = engine.write_results(sweep)
    if args.json:
        print(json.dumps(data, indent=1))
    else:
        print(engine.markdown(data), end="")
        print(f"(results.md, results.json{', sweep.png' if data['plot'] else ''}"
              f"{', best.yaml' if data['best'] else ''} in {sweep.home})")
    return status
