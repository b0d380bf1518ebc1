"""Pass 2, validate: the parsed tree against the pydantic schema, errors turned into `file:line` messages."""
from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter, ValidationError

from netspec.errors import Pos, SpecError, SpecErrors, did_you_mean
from netspec.ops import REGISTRY
from netspec.spec import Node, Spec

MAX_REPORTED = 10
_node_adapter = TypeAdapter(Node)


def validate(raw: dict) -> Spec:
    """Check a parsed spec against the schema; every problem is reported with its line."""
    try:
        return Spec.model_validate(raw)
    except ValidationError as err:
        raise spec_errors(err, raw) from None


def validate_node(raw: dict) -> Any:
    """Check one node (used for block bodies, which are validated once their params are known)."""
    try:
        return _node_adapter.validate_python(raw)
    except ValidationError as err:
        raise spec_errors(err, raw) from None


def spec_errors(err: ValidationError, raw: Any) -> SpecErrors:
    """Turn pydantic's errors into people's errors: position, what is wrong, how to fix it."""
    out = []
    for item in err.errors()[:MAX_REPORTED]:
        loc, pos, field_help = _locate(raw, item["loc"])
        what, fix = _explain(item, loc)
        if field_help and not fix:
            fix = f"'{loc[-1]}' is {field_help}" if loc else field_help
        out.append(SpecError(what, fix or "see docs/spec.md", pos))
    return SpecErrors(out)


def _locate(raw: Any, loc: tuple) -> tuple[list, Pos | None, str]:
    """Follow pydantic's loc through the raw tree: the keys that exist, the deepest position, field help."""
    node, path, pos = raw, [], getattr(raw, "pos", None)
    for key in loc:
        if isinstance(node, dict) and key in node:
            pos = node.key_pos.get(key, pos) if hasattr(node, "key_pos") else pos
            node = node[key]
            path.append(key)
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            pos = node.where(key) if hasattr(node, "where") else pos
            node = node[key]
            path.append(key)
        # else: a union tag or model name that pydantic adds to loc; skip it
    return path, pos, ""


def _label(path: list) -> str:
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text or "spec"


def _explain(item: dict, path: list) -> tuple[str, str]:
    kind, ctx, where = item["type"], item.get("ctx") or {}, _label(path)
    if kind == "unknown_key":
        return f"{where}: unknown key '{ctx['key']}'", ctx["hint"]
    if kind == "missing":
        return f"{where}: required key '{item['loc'][-1]}' is missing", f"add {item['loc'][-1]}: ..."
    if kind == "union_tag_invalid":
        tag, expected = ctx.get("tag"), [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
        if "'op'" in str(ctx.get("discriminator")) or tag in REGISTRY or "block" in expected:
            return f"{where}: unknown op '{tag}'", did_you_mean(tag, REGISTRY)
        return f"{where}: unknown type '{tag}'", did_you_mean(tag, expected)
    if kind == "union_tag_not_found":
        if "op" in str(ctx.get("discriminator")) or "_node_kind" in str(ctx.get("discriminator")):
            return f"{where}: a node needs `op:` (or `block:`)", "e.g. {name: conv1, op: conv, out: 64, kernel: 3}"
        return f"{where}: `type:` is missing", "say which kind this is with type: ..."
    message = item["msg"].removeprefix("Value error, ")
    return f"{where}: {message}", ""
