"""Parsed spec data that remembers where it was written: every later error can say `file:line`."""
from __future__ import annotations

from typing import Any

from netspec.errors import Pos


class LineDict(dict):
    """A mapping that knows its own position and the position of each key."""

    pos: Pos | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.key_pos: dict[Any, Pos] = {}

    def where(self, key: Any) -> Pos | None:
        return self.key_pos.get(key, self.pos)


class LineList(list):
    """A sequence that knows its own position and the position of each item."""

    pos: Pos | None = None

    def __init__(self, *args):
        super().__init__(*args)
        self.item_pos: list[Pos | None] = []

    def where(self, index: int) -> Pos | None:
        return self.item_pos[index] if 0 <= index < len(self.item_pos) else self.pos


def where(value: Any, default: Pos | None = None) -> Pos | None:
    """The position a parsed value was read from, if it knows it."""
    return getattr(value, "pos", None) or default
