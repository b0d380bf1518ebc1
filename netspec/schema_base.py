"""The base of every spec model: strict fields, unknown keys refused with a did-you-mean.

Each model remembers where it was written (`at`), so later passes can point at the line.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from netspec.errors import Pos, did_you_mean


class Strict(BaseModel):
    """A spec section. Unknown keys are errors; `at` is the position it was read from."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=False)

    at: Pos | None = Field(default=None, alias="_at", exclude=True, repr=False)
    key_at: dict[str, Pos] = Field(default_factory=dict, alias="_keys", exclude=True, repr=False)

    def where(self, key: str) -> Pos | None:
        """The position of one key of this section (else of the section)."""
        return self.key_at.get(key, self.at)

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
