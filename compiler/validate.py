"""Pass 2, validate: the parsed tree against the pydantic schema, errors turned into `file:line` messages.

Each pydantic error is located twice along its `loc`: in the parsed tree (for the line it was written
on) and in the schema (for the field's description, the fallback "how to fix it").
"""
from __future__ import annotations

import re
import types
import typing
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from netspec.errors import Pos, SpecError, SpecErrors, did_you_mean
from netspec.ops import REGISTRY
from netspec.schema_base import Mistyped
from netspec.spec import Node, Spec

MAX_REPORTED = 10
_node_adapter = TypeAdapter(Node)


def validate(raw: dict) -> Spec:
    """Check a parsed spec against the schema; every problem is reported with its line."""
    _check_block_bodies(raw)
    try:
        return Spec.model_validate(raw)
    except ValidationError as err:
        raise spec_errors(err, raw, Spec) from None


def validate_node(raw: dict) -> Any:
    """Check one node (used for block bodies, which are validated once their params are known)."""
    try:
        return _node_adapter.validate_python(raw)
    except ValidationError as err:
        label = f"node '{raw['name']}'" if isinstance(raw, dict) and isinstance(raw.get("name"), str) else "block node"
        raise spec_errors(err, raw, Node, label) from None


def _check_block_bodies(raw: Any) -> None:
    """Block bodies are validated only when instantiated; a body item that is not a mapping has no line
    of its own then, so it is caught here, where the list still knows its positions."""
    blocks = raw.get("blocks") if isinstance(raw, dict) else None
    if not isinstance(blocks, dict):
        return
    for name, block in blocks.items():
        body = block.get("nodes") if isinstance(block, dict) else None
        if not isinstance(body, list):
            continue
        for index, item in enumerate(body):
            if not isinstance(item, dict):
                pos = body.where(index) if hasattr(body, "where") else None
                raise SpecError(f"blocks.{name}.nodes[{index}]: a node must be a mapping, got {_show(item)}",
                                "write it as {name: conv, op: conv, out: '${out}', kernel: 3}", pos)


# --- pydantic errors to people's errors ------------------------------------------------------

def spec_errors(err: ValidationError, raw: Any, model: Any = Spec, root: str = "spec") -> SpecErrors:
    """Turn pydantic's errors into people's errors: position, what is wrong, how to fix it.

    Errors on one key from the alternatives of a union (`from:` is a name or a list) become one.
    """
    grouped: dict[tuple, list] = {}
    for item in err.errors():
        found = _locate(raw, model, item["loc"])
        grouped.setdefault((tuple(found.path), item["type"] == "unknown_key"), []).append((item, found))
    paths = [path for path, _ in grouped]
    for (path, unknown), entries in list(grouped.items()):  # a list whose item is a Mistyped: the item's error says it
        if _holds_mistyped(entries[0][0].get("input")) and any(p[:len(path)] == path and len(p) > len(path) for p in paths):
            del grouped[(path, unknown)]
    out = []
    for entries in list(grouped.values())[:MAX_REPORTED]:
        item, found = entries[0]
        label = _label(found.path, found.names, root)
        if len(entries) > 1:
            what, fix = _explain_union([i for i, _ in entries], label)
        else:
            what, fix = _explain(item, label, found)
        if not fix and found.help:
            fix = f"{found.field}: {found.help}"
        out.append(SpecError(what, fix or "see the spec reference in docs/spec.md", found.pos))
    return SpecErrors(out)


def _holds_mistyped(value: Any) -> bool:
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return any(isinstance(item, Mistyped) or _holds_mistyped(item) for item in items)


class _Found:
    """Where an error's loc leads: the raw keys that exist, their names, the line, the schema field."""

    def __init__(self, pos: Pos | None):
        self.path: list = []
        self.names: list = []  # for list items: the item's `name:`, shown instead of the index
        self.pos = pos
        self.raw: Any = None
        self.field = ""
        self.help = ""


def _locate(raw: Any, model: Any, loc: tuple) -> _Found:
    """Follow pydantic's loc through the raw tree (for positions) and the schema (for field help).

    pydantic's loc mixes keys, list indices, union tags (`conv`, `cross_entropy`) and union member
    labels (`int`, `tuple[int, int]`); tags and labels are recognised through the schema and skipped.
    """
    found = _Found(getattr(raw, "pos", None))
    node, types_ = raw, [model]
    for key in loc:
        members = _members(types_)
        tagged = {tag: t for tag, t in members if tag is not None}
        if len(members) > 1 and isinstance(key, str) and key in tagged:
            types_ = [tagged[key]]
            continue
        next_types, field = _step(members, key)
        if next_types is None:
            continue  # a union member label such as 'int' or 'list[str]'
        types_ = next_types
        if field is not None:
            found.field, found.help = str(key), (field.description or "")
        if isinstance(node, dict) and key in node:
            found.pos = node.key_pos.get(key, found.pos) if hasattr(node, "key_pos") else found.pos
            node = node[key]
            found.path.append(key)
            found.names.append(None)
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            found.pos = node.where(key) if hasattr(node, "where") else found.pos
            node = node[key]
            found.path.append(key)
            found.names.append(node.get("name") if isinstance(node, dict) and isinstance(node.get("name"), str) else None)
        else:
            node = None  # not written (a missing key): the error points at the enclosing mapping
    found.raw = node
    return found


def _members(types_: list) -> list[tuple[str | None, Any]]:
    """The concrete types a value may have, with the tag (discriminator value) of each, if any."""
    out: list[tuple[str | None, Any]] = []

    def add(tp: Any, tag: str | None) -> None:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            args = typing.get_args(tp)
            for meta in args[1:]:
                if type(meta).__name__ == "Tag":
                    tag = meta.tag
            add(args[0], tag)
        elif origin in (typing.Union, types.UnionType):
            for arg in typing.get_args(tp):
                add(arg, None)
        else:
            if tag is None and isinstance(tp, type) and issubclass(tp, BaseModel):
                for key in ("op", "type"):
                    field = tp.model_fields.get(key)
                    if field is not None and typing.get_origin(field.annotation) is typing.Literal:
                        values = typing.get_args(field.annotation)
                        for value in values[1:]:
                            out.append((value, tp))
                        tag = values[0]
                        break
            out.append((tag, tp))

    for tp in types_:
        add(tp, None)
    return out


def _step(members: list, key: Any) -> tuple[list | None, FieldInfo | None]:
    """The schema type(s) one loc key leads to, and the model field it names (if it is one)."""
    for _, tp in members:
        if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(key, str):
            for name, field in tp.model_fields.items():
                if key in (name, field.alias):
                    return [field.annotation], field
    for _, tp in members:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if isinstance(key, int) and origin in (list, tuple):
            if origin is tuple and args and args[-1] is not Ellipsis:
                return [args[key] if key < len(args) else Any], None
            return [args[0] if args else Any], None
        if origin is dict and isinstance(key, str) and args:
            return [args[1]], None
    if isinstance(key, int):
        return [Any], None
    return None, None


def _label(path: list, names: list, root: str) -> str:
    """`nodes.conv1.out` (the form an override takes), `[3]` for list items without a name."""
    text = ""
    for key, name in zip(path, names):
        if name is not None:
            text += f".{name}" if text else name
        elif isinstance(key, int):
            text += f"[{key}]"
        else:
            text += f".{key}" if text else str(key)
    if root != "spec":
        return f"{root}, {text}" if text else root
    return text or root


_EXPECTED = {
    "string_type": "a string", "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false", "bool_parsing": "true or false",
    "list_type": "a list", "tuple_type": "a list", "dict_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)", "model_attributes_type": "a mapping (key: value)",
    "literal_error": None,  # from ctx
}


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _explain(item: dict, where: str, found: _Found) -> tuple[str, str]:
    kind, ctx = item["type"], item.get("ctx") or {}
    got = f", got {_show(item['input'])}" if "input" in item else ""
    if kind == "unknown_key":
        key = ctx["key"]
        raw = found.raw
        if isinstance(raw, dict) and hasattr(raw, "key_pos") and key in raw.key_pos:
            found.pos = raw.key_pos[key]
        if where == "spec":
            return f"unknown top-level key '{key}'", _section_hint(key) or ctx["hint"]
        return f"{where}: unknown key '{key}'", ctx["hint"]
    if kind == "missing":
        key = item["loc"][-1]
        if isinstance(key, int):
            return f"{where}: has {len(item['input'])} item(s), needs {key + 1}", ""
        help_ = f" ({found.help})" if found.help else ""
        found.help = ""
        return f"{where}: required key '{key}' is missing", f"add {key}: ...{help_}"
    if kind == "union_tag_invalid":
        tag, expected = ctx.get("tag"), re.findall(r"'([^']*)'", str(ctx.get("expected_tags", "")))
        if "'op'" in str(ctx.get("discriminator")) or "_node_kind" in str(ctx.get("discriminator")) or "block" in expected:
            return f"{where}: unknown op '{tag}'", did_you_mean(tag, REGISTRY)
        return f"{where}: unknown type '{tag}'", did_you_mean(tag, expected)
    if kind == "union_tag_not_found":
        if not isinstance(item.get("input"), dict):
            return f"{where}: must be a mapping{got}", "write it as {name: conv1, op: conv, out: 64, kernel: 3}"
        if "op" in str(ctx.get("discriminator")) or "_node_kind" in str(ctx.get("discriminator")):
            return f"{where}: a node needs `op:` (or `block:`)", "e.g. {name: conv1, op: conv, out: 64, kernel: 3}"
        return f"{where}: `type:` is missing", "say which kind this is with type: ..."
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return f"{where}: must be one of {', '.join(choices)}{got}", did_you_mean(item["input"], choices) \
            if isinstance(item.get("input"), str) and choices else ""
    if kind in _EXPECTED:
        return f"{where}: must be {_EXPECTED[kind]}{got}", ""
    if kind in ("too_long", "too_short"):
        size = ctx.get("actual_length")
        limit = ctx.get("max_length") if kind == "too_long" else ctx.get("min_length")
        bound = "at most" if kind == "too_long" else "at least"
        return f"{where}: has {size} item(s), needs {bound} {limit}", ""
    message = item["msg"].removeprefix("Value error, ")
    if message.startswith("Input should"):
        message = "must" + message.removeprefix("Input should") + got
    return f"{where}: {message}", ""


def _explain_union(items: list[dict], where: str) -> tuple[str, str]:
    """Several errors on one key, one per alternative of a union: say what each alternative wanted."""
    wanted = []
    for item in items:
        kind, ctx = item["type"], item.get("ctx") or {}
        if kind in ("too_long", "too_short"):
            bound = ctx.get("max_length") if kind == "too_long" else ctx.get("min_length")
            text = f"a list of {'at most' if kind == 'too_long' else 'at least'} {bound} items"
        elif kind == "literal_error":
            text = " or ".join(f"'{c}'" for c in re.findall(r"'([^']*)'", str(ctx.get("expected", ""))))
        else:
            text = _EXPECTED.get(kind) or item["msg"].removeprefix("Input should be ")
        if text not in wanted:
            wanted.append(text)
    got = f", got {_show(items[0]['input'])}" if "input" in items[0] else ""
    return f"{where}: must be {' or '.join(wanted)}{got}", ""


def _section_hint(key: str) -> str:
    """`epochs` at the top level: did you mean `train.epochs`? (the first section that has such a key)"""
    for name, field in Spec.model_fields.items():
        if key in getattr(field.annotation, "model_fields", {}):
            return f"did you mean '{name}.{key}'?"
    return ""
