"""What every command that reads a spec shares: `[SPEC] [key=value ...]` and compiling it."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from netspec.ops import Custom
from netspec.project import current_build, resolve_spec, split_args
from netspec.compiler import Compiled, compile_spec


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    """`[SPEC] [key=value ...]` and `--allow-custom`."""
    parser.add_argument("words", nargs="*", metavar="[SPEC] [key=value]",
                        help="spec file (default: the current build's, else specs/cnds8.yaml) and overrides")
    parser.add_argument("--allow-custom", action="store_true", help="allow `op: custom` nodes to import code")


def load(args: argparse.Namespace, announce: bool = False) -> tuple[Compiled, list[str]]:
    """Compile the spec a command names (or the current build's); also the overrides it was given. With
    `announce`, say which spec was picked when the command named none."""
    Custom.allowed = args.allow_custom or os.environ.get("NETSPEC_ALLOW_CUSTOM") == "1"
    named, _ = split_args(args.words)
    path, overrides = resolve_spec(args.words)
    if announce and named is None:
        build = current_build()
        origin = f"the current build, {build}" if build is not None else "no spec given and no build: the default"
        print(f"spec: {path} ({origin})", file=sys.stderr)
    return compile_words(path, overrides), overrides


def compile_words(path: str | Path, overrides: list[str]) -> Compiled:
    return compile_spec(path, overrides)
