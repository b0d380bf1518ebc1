"""What every command that reads a spec or a run shares: `[SPEC] [key=value ...]`, `--run`, and compiling once."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from netspec.errors import UserError
from netspec.limits import Limits
from netspec.project import current_build, resolve_spec, split_args
from netspec.compiler import Compiled, compile_spec, load_spec


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    """`[SPEC] [key=value ...]` and `--allow-custom`."""
    parser.add_argument("words", nargs="*", metavar="[SPEC] [key=value]",
                        help="spec file (default: the current build's, else specs/cnds8.yaml) and overrides")
    parser.add_argument("--allow-custom", action="store_true", help="allow `op: custom` nodes to import code")


def add_run_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", metavar="DIR", help="the run to use (runs/NAME/ID; default: the latest run of "
                        "the spec, or the run holding --checkpoint); its recorded spec and overrides are used")


def load(args: argparse.Namespace, announce: bool = False) -> tuple[Compiled, list[str]]:
    """Compile the spec a command names (or the current build's); also the overrides it was given. With
    `announce`, say which spec was picked when the command named none."""
    named, _ = split_args(args.words)
    path, overrides = resolve_spec(args.words)
    if announce and named is None:
        build = current_build()
        origin = f"the current build, {build}" if build is not None else "no spec given and no build: the default"
        print(f"spec: {path} ({origin})", file=sys.stderr)
    return compile_spec(path, overrides, args.limits), overrides


def find_run(args: argparse.Namespace, checkpoint: str | None = None):
    """The run a command means: `--run`, else the run holding `checkpoint`, else the latest run of the spec
    (named or current); None when there is none. Its record is checked (damage is one line; what a kill left
    is repaired and said)."""
    from netspec.runtime.run import Run

    if getattr(args, "run", None):
        run = Run.named(args.run)
    elif checkpoint:
        run = Run.holding(checkpoint)
    else:
        path, overrides = resolve_spec(args.words)
        run = Run.latest(load_spec(path, overrides))
    if run is not None:
        from netspec.runtime.distributed import is_main_process

        main = is_main_process()  # under torchrun, rank 0 alone repairs and says so
        for line in run.check(repair=main):
            if main:
                print(f"{run}: {line}", file=sys.stderr)
    return run


def compile_recorded(run, given: list[str], limits: Limits) -> Compiled:
    """The spec a run was trained with, compiled once (within `limits`): its spec file with its overrides (and
    `given` on top) while that file still resolves to the run's spec.yaml, else spec.yaml itself."""
    from netspec.runtime.run import SPEC_FILE, resolved_spec

    record = run.record()
    overrides = [*record["overrides"], *given]
    path = Path(record["spec"])
    try:
        same = path.is_file() and resolved_spec(load_spec(path, record["overrides"])) == run.spec()
    except UserError:
        same = False
    if not same:
        path, overrides = run.path / SPEC_FILE, list(given)
    return compile_spec(path, overrides, limits)


def load_for_weights(args: argparse.Namespace, checkpoint: str | None = None):
    """eval / export / calibrate: (compiled, the run or None, the checkpoint to read or None). With a run, its
    recorded spec and overrides (the command's overrides on top) and, unless `checkpoint`, its best.pt."""
    run = find_run(args, checkpoint)
    _, given = split_args(args.words)
    if run is None:
        compiled, _ = load(args)
        return compiled, None, Path(checkpoint) if checkpoint else None
    return compile_recorded(run, given, args.limits), run, Path(checkpoint) if checkpoint else run.best_checkpoint()
