"""Generate docs/spec.md from the schema: `python -m netspec.docs > docs/spec.md`.

The pydantic models and the op registry are the single source of truth; this page only prints them.
"""
from __future__ import annotations

import inspect
import types
import typing

from pydantic import BaseModel

from netspec import ops, schedules, solver, spec
from netspec.data_spec import Augment, DataSpec

INTRO = """# The netspec spec language

Generated from the pydantic schema by `python -m netspec.docs`; do not edit by hand.

A spec is a YAML mapping. Every node names its inputs with `from:` (Caffe's `bottom`), defaulting to the
previous node. `${expr}` anywhere is evaluated in jinja2's sandbox with `vars:`, `classes` and, inside
blocks, the block's params. `extends: other.yaml` merges this file over another (mappings merge, `null`
deletes a key, lists replace). `key=value` on the command line overrides any key; list items are picked
by `name:` (`nodes.conv1.out=32`).

Heads: `main` is the backbone's output (`output:` or the last node); every branch is a head named after
the branch. Every head needs a loss. Node names become parameter names (`stage1.0.conv1.weight`,
`aux1.fc.weight`), so moving a branch (`from:`) never renames backbone parameters.
"""


def _type_name(annotation) -> str:
    """A readable type: `list[node]`, `int or [int, int]`, `'sgd'`, ... (no '|', it would split the table)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        if any(typing.get_args(a)[:1] == (spec.BlockNode,) for a in args):
            return "node (`op:` or `block:`, see Ops)"
        return " or ".join(_type_name(a) for a in args)
    if origin is typing.Literal:
        return " or ".join(f"'{a}'" for a in args)
    if origin in (list, tuple, dict):
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def _default(field) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, dict):
            value = {k: v.model_dump(exclude_defaults=True) if isinstance(v, BaseModel) else v for k, v in value.items()}
        return f"`{value.model_dump(exclude_defaults=True) if isinstance(value, BaseModel) else value}`"
    return f"`{field.default}`"


def model_table(model: type[BaseModel], skip: tuple[str, ...] = ("at", "key_at")) -> str:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        key = field.alias or name
        rows.append(f"| `{key}` | {_type_name(field.annotation)} | {_default(field)} | {field.description or ''} |")
    return "\n".join(rows)


def section(title: str, model: type[BaseModel], level: str = "##") -> str:
    doc = inspect.getdoc(model) or ""
    return f"{level} {title}\n\n{doc}\n\n{model_table(model)}\n"


def op_section() -> str:
    parts = ["## Ops\n\nEvery node has `name`, `from` and `init`; the rest are per op. "
             "Adding an op is one class in `netspec/ops.py`.\n"]
    for name, cls in ops.REGISTRY.items():
        parts.append(f"### `op: {name}`\n\n{inspect.getdoc(cls)}\n\n"
                     f"{model_table(cls, skip=('at', 'key_at', 'op', 'name', 'from_', 'init'))}\n")
    return "\n".join(parts)


def union_members(annotation) -> list[type[BaseModel]]:
    """The models of a discriminated union (Annotated[Union[...], ...])."""
    inner = typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation
    return [m for m in typing.get_args(inner) if isinstance(m, type) and issubclass(m, BaseModel)]


def render() -> str:
    parts = [INTRO, section("Top level", spec.Spec), section("`input:`", spec.InputSpec),
             section("`init:`", spec.InitDefaults)]
    parts += [section(f"weight filler `type: {m.model_fields['type'].annotation.__args__[0]}`", m, "###")
              for m in union_members(ops.WeightInit)]
    parts += [section("`blocks.<name>:`", spec.BlockDef), section("block instance (`block:` in a node)", spec.BlockNode),
              section("`branches.<name>:`", spec.Branch)]
    parts += [section(f"loss `type: {m.model_fields['type'].annotation.__args__[0]}`", m)
              for m in union_members(spec.Loss)]
    parts.append("## Loss weight schedules\n\nThe effective weight at epoch t of N is `weight × factor(t)`. "
                 "Default: `constant`. CNDS specs use `cnds`; `depth_power` (netspec's own) depends on the head's depth, not on t.\n")
    parts += [section(f"`schedule: {m.model_fields['type'].annotation.__args__[0]}`", m, "###")
              for m in schedules.SCHEDULES.classes()]
    parts += [section("`data:`", DataSpec), section("`data.augment:`", Augment), section("`train:`", solver.TrainSpec)]
    parts += [section(f"`train.lr_schedule` `type: {m.model_fields['type'].annotation.__args__[0]}`", m, "###")
              for m in solver.LR_POLICIES.classes()]
    parts += [section(f"`train.optimizer` `type: {'/'.join(m.model_fields['type'].annotation.__args__)}`", m, "###")
              for m in solver.OPTIMIZERS.classes()]
    parts.append(op_section())
    return "\n".join(parts)


if __name__ == "__main__":
    print(render())
