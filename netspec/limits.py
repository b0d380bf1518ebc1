"""What a spec and its data may ask of the machine: one `Limits` value, read once by the command layer
(`Limits.from_env`) and passed down to the passes and readers that check it (nothing below the commands reads
the environment). The Python API's default is `Limits()`: the bounds below, and no code from specs.

Every bound is ours, chosen so that a damaged or hostile spec or data file is one error rather than a
MemoryError or a hang, while the largest networks and data sets of the papers (ResNet-1202, ImageNet files) pass.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Mapping

from netspec.errors import UserError


@dataclass(frozen=True)
class Limits:
    """Bounds on a compile and on data reads, and whether a spec may run Python code."""

    nodes: int = 20_000  # op nodes after unrolling blocks and repeats (ResNet-1202 has ~4,800)
    expand_seconds: float = 60.0  # wall-clock bound on unrolling blocks
    params: int = 1 << 28  # parameters of the whole training graph (1 GiB in fp32)
    activations: int = 1 << 28  # activation elements of one example, summed over the input and every node
    data_bytes: int = 1 << 30  # decoded data read into memory (an array file, an .npz's arrays, a data set)
    image_pixels: int = 1 << 26  # pixels of one image (8192²), checked from its header before decoding
    code: bool = False  # `op: custom` nodes and `backbone:` modules import and run Python code

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, *, code: bool = False) -> Limits:
        """The limits with each `NETSPEC_MAX_<FIELD>` that is set (a positive number); code allowed when `code`
        (the command's --allow-custom) or NETSPEC_ALLOW_CUSTOM=1."""
        values = {}
        for f in fields(cls):
            text = environ.get(env_name(f.name))
            if f.name == "code" or text is None:
                continue
            kind = float if f.type == "float" else int
            try:
                value = kind(text.replace("_", ""))
            except ValueError:
                value = 0
            if not 0 < value < float("inf"):
                raise UserError(f"{env_name(f.name)}={text[:40]!r} is not a positive "
                                f"{'number' if kind is float else 'integer'}",
                                f"e.g. {env_name(f.name)}={f.default:g}")
            values[f.name] = value
        return cls(**values, code=code or environ.get("NETSPEC_ALLOW_CUSTOM") == "1")


def env_name(field: str) -> str:
    """The environment variable that sets a limit (named in every 'raise the limit' hint)."""
    return "NETSPEC_ALLOW_CUSTOM" if field == "code" else f"NETSPEC_MAX_{field.upper()}"
