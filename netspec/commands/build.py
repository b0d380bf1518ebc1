"""`netspec compile` and `netspec draw`."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from netspec.project import atomic_write, build_root, check_output_file, claim_dir
from netspec.compiler.artifacts import write_build
from netspec.compiler import analyse
from netspec.compiler.draw import DEFAULT_NODES, default_view, deployed, render, to_dot
from netspec.compiler.prune import unbranched_overrides
from netspec.compiler.summary import format_summary, summarise
from netspec.commands.common import add_spec_arguments, load


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    add_spec_arguments(parser)
    if name == "compile":
        parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    else:
        parser.add_argument("-o", "--output", default=None, help="output file (.svg, .png, .pdf, .dot); "
                            "default build/<name>/graph.svg (graph_deploy.svg with --deploy)")
        view = parser.add_mutually_exclusive_group()
        view.add_argument("--collapse", dest="view", action="store_const", const="collapse", default="auto",
                          help="draw each run of a repeated block as one node (stage2, 5× basic), and a `backbone:` "
                          "module's calls by top-level submodule (layer1); the default "
                          f"for nets of more than {DEFAULT_NODES} nodes")
        view.add_argument("--expand", dest="view", action="store_const", const="expand",
                          help="draw every node, however deep the net")
        parser.add_argument("--rankdir", choices=("TB", "LR"), default="TB",
                            help="TB: input at the top (default); LR: input at the left")
        parser.add_argument("--deploy", action="store_true",
                            help="draw the deployed graph, as exported: the main exit's logits, no branch, loss "
                            "or dropout")


def run(args: argparse.Namespace) -> int:
    return run_compile(args) if args.command == "compile" else run_draw(args)


def run_compile(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    compiled, overrides = load(args)
    summary = summarise(compiled.network)
    summary["compile_seconds"] = round(time.perf_counter() - started, 3)
    out = claim_dir(build_root() / compiled.spec.name, ("build.json",), "build directory")
    stale = write_build(compiled, overrides, summary, out)
    atomic_write(build_root() / "CURRENT", compiled.spec.name + "\n")
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(format_summary(summary))
        print(f"\nwrote {out}/ (current build) in {summary['compile_seconds']:.2f}s")
    if stale:  # on stderr with --json: stdout stays one JSON document
        print(f"removed {', '.join(stale)} from {out}/: made from the previous graph (draw, export or probe again)",
              file=sys.stderr if args.json else sys.stdout)
    return 0


def run_draw(args: argparse.Namespace) -> int:
    if args.output:
        check_output_file(args.output, "drawing")
    compiled, overrides = load(args)
    network = compiled.network
    if args.deploy:  # what `export --prune-aux` deploys: the spec compiled without its branches
        network = deployed(analyse(compiled.path, overrides + unbranched_overrides(compiled.spec), compiled.limits)[1])
    network, note = default_view(network, args.view)
    if note:
        print(f"note: {note}", file=sys.stderr)
    default = "graph_deploy.svg" if args.deploy else "graph.svg"
    output = Path(args.output) if args.output else build_root() / compiled.spec.name / default
    print(f"wrote {render(to_dot(network, args.rankdir, losses=not args.deploy), output)}")
    return 0
