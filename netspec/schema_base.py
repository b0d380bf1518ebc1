"""The base of every spec model: strict fields, unknown keys refused with a did-you-mean.

Each model remembers where it was written (`at`), so later passes can point at the line.
"""
from __future__ import annotations

import functools
import math
import re
import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from netspec.errors import Pos, did_you_mean

INT64 = (-(2**63), 2**63 - 1)  # every integer a spec holds fits torch's int64 (beyond it torch fails in C++)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def check_value(value: Any) -> Any:
    """One rule for every field of every section: numbers are finite and within ±2**63, strings hold no control
    characters (NUL would end a path in C). Walks lists, tuples and dicts; nested models check themselves."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value}")
    if isinstance(value, float) and abs(value) >= 2.0**63:  # no setting means anything this large
        raise ValueError(f"must be smaller than 2**63 in magnitude, got {value:g}")
    if isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
        shown = str(value) if value.bit_length() < 200 else f"a {value.bit_length()}-bit integer"
        raise ValueError(f"must fit in a 64-bit integer (|value| < 2**63), got {shown}")
    if isinstance(value, str) and _CONTROL.search(value):
        raise ValueError(f"must not contain control characters, got {_CONTROL.search(value).group()!r}")
    if isinstance(value, (list, tuple)):
        for item in value:
            check_value(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_value(key)
            check_value(item)
    return value


@functools.lru_cache(maxsize=None)
def _kinds(annotation: Any) -> frozenset:
    """What a field's type accepts, as far as booleans go: 'bool', 'number', 'str', quoted literals, 'any',
    'other' (models, paths, ...), and ('items', type) / ('values', type) for the members of lists and mappings."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return frozenset({"any"})
    if origin is typing.Annotated:
        return _kinds(args[0])
    if origin in (typing.Union, types.UnionType):
        return frozenset().union(*map(_kinds, args))
    if origin is typing.Literal:
        return frozenset("bool" if isinstance(a, bool) else "number" if isinstance(a, (int, float)) else repr(a)
                         for a in args)
    if origin in (list, tuple, set, frozenset):
        members = [a for a in args if a is not Ellipsis] or [Any]
        return frozenset(("items", member) for member in members)
    if origin is dict:
        return frozenset({("values", args[1] if len(args) == 2 else Any)})
    if annotation is bool:
        return frozenset({"bool"})
    if isinstance(annotation, type) and issubclass(annotation, (int, float)):
        return frozenset({"number"})
    return frozenset({"str" if annotation is str else "other"})


class Mistyped:
    """A boolean given for a number (or a number or string for a boolean), put in the value's place so that the
    field's own validation fails with the field's position; shown as the value and why it is not accepted."""

    def __init__(self, value: Any, why: str):
        self.value, self.why = value, why

    def __str__(self) -> str:
        shown = str(self.value).lower() if isinstance(self.value, bool) else repr(self.value)
        return f"{shown} ({self.why})"

    __repr__ = __str__


def mark_mistyped(annotation: Any, value: Any) -> Any:
    """`value` with every boolean where `annotation` wants a number (and every number or string where it wants a
    boolean) replaced by a `Mistyped`: pydantic would turn `yes` (a YAML boolean) into 1, and 1 or 'on' into
    true. Lists and mappings are checked item by item; anything else is left to the field's validation."""
    return _mark(_kinds(annotation), value)


def _mark(kinds: frozenset, value: Any) -> Any:
    if "any" in kinds:
        return value
    if isinstance(value, bool):
        if "number" in kinds and "bool" not in kinds:
            return Mistyped(value, "a YAML boolean: yes, no, on, off, true, false")
    elif isinstance(value, (int, float, str)):
        if "bool" in kinds and "number" not in kinds and "str" not in kinds and repr(value) not in kinds:
            return Mistyped(value, "a string, not a boolean" if isinstance(value, str) else "a number, not a boolean")
    elif isinstance(value, (list, tuple, dict)):
        members = [k[1] for k in kinds if isinstance(k, tuple) and k[0] == ("values" if isinstance(value, dict) else "items")]
        if members:
            item_kinds = frozenset().union(*map(_kinds, members))
            if isinstance(value, dict):
                marked = {key: _mark(item_kinds, item) for key, item in value.items()}
                return marked if any(marked[k] is not value[k] for k in value) else value
            marked = [_mark(item_kinds, item) for item in value]
            return marked if any(m is not v for m, v in zip(marked, value)) else value
    return value


@functools.cache
def _schema_of(cls: type) -> tuple[frozenset, list, dict]:
    """A model's accepted keys, the keys a hint offers (`from`, not its python name `from_`), and the kinds of
    each key whose values `_mark` may change (numbers, booleans, lists and mappings of them)."""
    known, shown, kinds = set(), [], {}
    for name, field in cls.model_fields.items():
        keys = [k for k in (name, field.alias) if k]
        known.update(keys)
        if name in ("at", "key_at"):
            continue
        shown.append(field.alias or name)
        field_kinds = _kinds(field.annotation)
        if "any" not in field_kinds and field_kinds & {"number", "bool"} or any(isinstance(k, tuple) for k in field_kinds):
            kinds.update((key, field_kinds) for key in keys)
    return frozenset(known), sorted(shown), kinds


class Strict(BaseModel):
    """A spec section. Unknown keys are errors; `at` is the position it was read from."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=False)

    at: Pos | None = Field(default=None, alias="_at", exclude=True, repr=False)
    key_at: dict[str, Pos] = Field(default_factory=dict, alias="_keys", exclude=True, repr=False)

    def where(self, key: str) -> Pos | None:
        """The position of one key of this section (else of the section)."""
        return self.key_at.get(key, self.at)

    @field_validator("*", mode="after")
    @classmethod
    def _finite_and_plain(cls, value: Any) -> Any:
        return check_value(value)

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        known, shown, kinds = _schema_of(cls)
        for key in data:
            if key not in known and not (cls.model_config.get("extra") == "allow"):
                raise PydanticCustomError(
                    "unknown_key",
                    "unknown key '{key}' in {section}: {hint}",
                    {"key": key, "section": cls.section_name(), "hint": did_you_mean(key, shown)},
                )
        pos = getattr(data, "pos", None)
        if pos is not None and "_at" not in data:
            data = {**data, "_at": pos, "_keys": {str(k): v for k, v in getattr(data, "key_pos", {}).items()}}
        changed = {}
        for key, value in data.items():
            if key in kinds and (marked := _mark(kinds[key], value)) is not value:
                changed[key] = marked
        return {**data, **changed} if changed else data

    @classmethod
    def section_name(cls) -> str:
        return getattr(cls, "__section__", cls.__name__)
