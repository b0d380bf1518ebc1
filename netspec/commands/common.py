"""What every command that reads a spec shares: `[SPEC] [key=value ...]` and compiling it."""
from __future__ import annotations

import argparse
import os

from netspec.ops import Custom
from netspec.project import resolve_spec
from netspec.compiler import Compiled, compile_spec


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    """`[SPEC] [key=value ...]` and `--allow-custom`."""
    parser.add_argument("words", nargs="*", metavar="[SPEC] [key=value]",
                        help="spec file (default: the current build's, else specs/cnds8.yaml) and overrides")
    parser.add_argument("--allow-custom", action="store_true", help="allow `op: custom` nodes to import code")


def load(args: argparse.Namespace) -> tuple[Compiled, list[str]]:
    """Compile the spec a command names (or the current build's); also the overrides it was given."""
    Custom.allowed = args.allow_custom or os.environ.get("NETSPEC_ALLOW_CUSTOM") == "1"
    path, overrides = resolve_spec(args.words)
    return compile_spec(path, overrides), overrides
