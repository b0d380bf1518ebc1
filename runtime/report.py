"""Where the runtime's lines go. The runtime does not print: a function with something to say takes a `Report`
and the command passes `Report.console()` (results to stdout, remarks to stderr); from Python the default,
`QUIET`, says nothing. (Training reports its progress through `say` the same way: netspec/commands/train.py.)"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import Callable


def _silent(text: str) -> None:
    """A line nobody asked for."""


@dataclass(frozen=True)
class Report:
    say: Callable[[str], None] = _silent  # a result line (the command's stdout)
    note: Callable[[str], None] = _silent  # a remark beside the result (stderr)

    @classmethod
    def console(cls) -> Report:
        return cls(print, functools.partial(print, file=sys.stderr, flush=True))


QUIET = Report()
