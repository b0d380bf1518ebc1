"""Errors meant for people: `file:line: what is wrong — how to fix it`, exit status 2."""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Iterable

MAX_TOKEN = 160  # a longer run of non-blank characters in a message (a huge name or value) is shortened


def shorten(text: str, limit: int = MAX_TOKEN) -> str:
    """`text` with every run of more than `limit` non-blank characters cut in the middle (`...`), so a huge
    name, path or value cannot flood a one-line message."""
    keep = max(limit // 2 - 2, 8)
    return re.sub(r"\S{%d,}" % (limit + 1), lambda m: m.group()[:keep] + "..." + m.group()[-keep // 2:], str(text))


def plural(count: int, noun: str, nouns: str = "") -> str:
    """`1 epoch`, `2 epochs`: a count with its noun in the right number."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


@dataclass(frozen=True)
class Pos:
    """Where something was written: a file (or `<override>`) and a 1-based line."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


class UserError(Exception):
    """A mistake the user can fix. The CLI prints it without a traceback and exits 2."""

    exit_code = 2

    def __init__(self, what: str, fix: str = "", pos: Pos | None = None):
        super().__init__(what)
        self.what, self.fix, self.pos = what, fix, pos

    def __str__(self) -> str:
        head = f"{self.pos}: " if self.pos else "netspec: "
        return shorten(head + self.what + (f" — {self.fix}" if self.fix else ""))


class SpecError(UserError):
    """Something wrong in a spec file or an override."""


class SpecErrors(SpecError):
    """Several spec errors found at once (schema validation reports them all)."""

    def __init__(self, errors: list[SpecError]):
        super().__init__(errors[0].what, errors[0].fix, errors[0].pos)
        self.errors = errors

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A `did you mean 'x'?` hint, or a list of the valid choices when nothing is close."""
    choices = sorted(set(map(str, choices)))
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    if not choices:
        return "nothing is defined here"
    shown = ", ".join(choices[:12]) + (", ..." if len(choices) > 12 else "")
    return f"valid: {shown}"
