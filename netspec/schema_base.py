"""The base of every spec model: strict fields, unknown keys refused with a did-you-mean.

Each model remembers where it was written (`at`), so later passes can point at the line.
"""
from __future__ import annotations

import math
import re
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
        known, shown = set(), set()  # accepted keys; the keys a hint offers (`from`, not its python name `from_`)
        for name, field in cls.model_fields.items():
            known.add(name)
            if field.alias:
                known.add(field.alias)
            if name not in ("at", "key_at"):
                shown.add(field.alias or name)
        for key in data:
            if key not in known and not (cls.model_config.get("extra") == "allow"):
                raise PydanticCustomError(
                    "unknown_key",
                    "unknown key '{key}' in {section}: {hint}",
                    {"key": key, "section": cls.section_name(), "hint": did_you_mean(key, sorted(shown))},
                )
        pos = getattr(data, "pos", None)
        if pos is not None and "_at" not in data:
            data = {**data, "_at": pos, "_keys": {str(k): v for k, v in getattr(data, "key_pos", {}).items()}}
        return data

    @classmethod
    def section_name(cls) -> str:
        return getattr(cls, "__section__", cls.__name__)
