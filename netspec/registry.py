"""One tiny registry mechanism for every place people extend netspec (ops, loss schedules, optimizers,
learning-rate policies): a class registers under the name in its `op`/`type` Literal, and the schema's
discriminated unions and the generated docs are built from the registry, so adding one is one class."""
from __future__ import annotations

import typing
from typing import Annotated, Any, Union

from pydantic import Field


class Registry(dict):
    """name → pydantic model class; `register` is the class decorator, keyed by the Literal of `key`."""

    def __init__(self, key: str = "type"):
        super().__init__()
        self.key = key

    def register(self, cls: type) -> type:
        for name in typing.get_args(cls.model_fields[self.key].annotation):
            self[name] = cls
        return cls

    def classes(self) -> list[type]:
        return list(dict.fromkeys(self.values()))

    def union(self) -> Any:
        """The discriminated union of every registered class (for a field's annotation)."""
        return Annotated[Union[tuple(self.classes())], Field(discriminator=self.key)]

    def names(self) -> str:
        return ", ".join(self)
