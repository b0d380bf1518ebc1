"""Pass 1, parse: YAML read safely with positions, `extends:` merged, overrides and `${...}` applied.

The result is plain data (`LineDict` / `LineList`) that remembers where every key and item was
written, so that every later error can say `file:line`.
"""
from __future__ import annotations

import functools
import math
import re
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Undefined
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from netspec.errors import Pos, SpecError, did_you_mean

MAX_YAML_NODES = 200_000  # expanded size; guards against alias ("billion laughs") bombs
MAX_EXTENDS_DEPTH = 8


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


class _PosLoader(yaml.SafeLoader):
    """yaml's SafeLoader (no python tags) that records positions and refuses alias bombs."""

    def compose_document(self):
        node = super().compose_document()
        if _expanded_size(node, {}) > MAX_YAML_NODES:
            mark = node.start_mark
            raise SpecError(
                f"the YAML expands to more than {MAX_YAML_NODES} values through anchors and aliases",
                "this looks like an alias bomb; write the values out or use blocks/repeat",
                Pos(self.name, mark.line + 1),
            )
        return node

    def _pos(self, node) -> Pos:
        return Pos(self.name, node.start_mark.line + 1)

    def construct_yaml_map(self, node):
        data = LineDict()
        data.pos = self._pos(node)
        yield data
        own = sum(1 for key_node, _ in node.value if key_node.tag != "tag:yaml.org,2002:merge")
        self.flatten_mapping(node)
        merged = len(node.value) - own  # keys from `<<: *anchor` come first; the mapping's own keys override them
        written: dict[Any, Pos] = {}
        for index, (key_node, value_node) in enumerate(node.value):
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise SpecError("a mapping key must be a plain value, not a list or mapping",
                                "write the key as a name", self._pos(key_node)) from None
            if index >= merged:
                if key in written:
                    raise SpecError(f"key '{key}' is written twice in one mapping (first at line {written[key].line})",
                                    "keep one of them", self._pos(key_node))
                written[key] = self._pos(key_node)
            data[key] = self.construct_object(value_node, deep=True)
            data.key_pos[key] = self._pos(key_node)

    def construct_yaml_seq(self, node):
        data = LineList()
        data.pos = self._pos(node)
        yield data
        data.extend(self.construct_object(child, deep=True) for child in node.value)
        data.item_pos = [self._pos(child) for child in node.value]


_PosLoader.add_constructor("tag:yaml.org,2002:map", _PosLoader.construct_yaml_map)
_PosLoader.add_constructor("tag:yaml.org,2002:seq", _PosLoader.construct_yaml_seq)


def _expanded_size(node, memo: dict) -> int:
    """How many values the node stands for once every alias is expanded (memoised, so cheap)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a recursive alias counts once; SafeLoader rejects true recursion later
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(v, memo) for v in node.value)
    else:
        size = 1
    memo[id(node)] = min(size, MAX_YAML_NODES + 1)
    return memo[id(node)]


def load_yaml(text: str, name: str) -> Any:
    """Parse YAML text safely, keeping positions. Python tags and alias bombs are refused."""
    loader = _PosLoader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else 0
        problem = err.problem or str(err)
        fix = "fix the YAML syntax"
        if "could not determine a constructor" in problem:
            tag = re.findall(r"'([^']*)'", problem)
            tag = tag[-1].replace("tag:yaml.org,2002:", "!!") if tag else "here"
            problem = f"the YAML tag '{tag}' is not allowed"
            fix = "specs are plain data: remove the tag (python objects cannot be created from a spec)"
        raise SpecError(problem, fix, Pos(name, line)) from None
    except yaml.YAMLError as err:
        raise SpecError(f"cannot read YAML: {err}", "fix the YAML syntax", Pos(name, 0)) from None
    finally:
        loader.dispose()


def read_spec_file(path: str | Path, _depth: int = 0) -> LineDict:
    """Read one spec file and, recursively, the file it `extends:`, merged below it."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"spec file '{path}' does not exist", "give the path of a .yaml spec, e.g. specs/cnds8.yaml") from None
    except OSError as err:
        raise SpecError(f"cannot read spec file '{path}': {err.strerror}", "check the path and its permissions") from None
    data = load_yaml(text, str(path))
    if not isinstance(data, LineDict):
        raise SpecError("a spec must be a mapping (name:, input:, nodes:, ...)", "see specs/cnds8.yaml for the layout", Pos(str(path), 1))
    base_name = data.pop("extends", None)
    if base_name is None:
        return data
    if _depth >= MAX_EXTENDS_DEPTH:
        raise SpecError("`extends:` goes more than 8 files deep (a loop?)", "make the chain shorter", data.where("extends"))
    base_path = path.parent / str(base_name)
    if not base_path.exists():
        raise SpecError(f"`extends: {base_name}` names a file that does not exist ({base_path})",
                        "the path is relative to this spec's folder", data.key_pos.get("extends", data.pos))
    return merge(read_spec_file(base_path, _depth + 1), data)


def merge(base: Any, top: Any) -> Any:
    """Deep-merge `top` over `base`: mappings merge key by key, `null` deletes, anything else replaces."""
    if not (isinstance(base, dict) and isinstance(top, dict)):
        return top
    out = LineDict(base)
    out.pos = getattr(top, "pos", None) or getattr(base, "pos", None)
    out.key_pos = {**getattr(base, "key_pos", {}), **getattr(top, "key_pos", {})}
    for key, value in top.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(base.get(key), value)
    return out


# --- key=value overrides -------------------------------------------------------------------

def apply_overrides(spec: LineDict, overrides: list[str]) -> LineDict:
    """Apply Hydra-style `a.b.c=value` overrides. List items can be picked by their `name:`."""
    for text in overrides:
        pos = Pos(f"override '{text}'", 0)
        key, sep, raw_value = text.partition("=")
        if not sep or not key:
            raise SpecError("an override must look like key=value", "e.g. train.epochs=3 or branches.aux1.from=conv4_1", pos)
        try:
            value = yaml.safe_load(raw_value) if raw_value.strip() else ""
        except yaml.YAMLError:
            value = raw_value
        _set_path(spec, key.split("."), _with_pos(value, pos), pos)
    return spec


def _with_pos(value: Any, pos: Pos) -> Any:
    if isinstance(value, dict):
        out = LineDict({k: _with_pos(v, pos) for k, v in value.items()})
        out.pos, out.key_pos = pos, {k: pos for k in value}
        return out
    if isinstance(value, list):
        out = LineList([_with_pos(v, pos) for v in value])
        out.pos, out.item_pos = pos, [pos] * len(value)
        return out
    return value


def _set_path(node: Any, parts: list[str], value: Any, pos: Pos, done: tuple[str, ...] = ()) -> None:
    head, rest = parts[0], parts[1:]
    if isinstance(node, list):
        index = _list_index(node, head, pos, f"'{'.'.join(done)}'" if done else "the list")
        if rest:
            _set_path(node[index], rest, value, pos, done + (head,))
        else:
            node[index] = value
        return
    if not isinstance(node, dict):
        raise SpecError(f"'{head}' cannot be set: its parent is a value, not a section", "check the dotted key", pos)
    if not rest:
        if value is None:
            node.pop(head, None)
        else:
            node[head] = value
            if isinstance(node, LineDict):
                node.key_pos[head] = pos
        return
    if head not in node:
        child = LineDict()
        child.pos = pos
        node[head] = child
        if isinstance(node, LineDict):
            node.key_pos[head] = pos
    _set_path(node[head], rest, value, pos, done + (head,))


def _list_index(items: list, key: str, pos: Pos, where: str = "the list") -> int:
    names = [item.get("name") if isinstance(item, dict) else None for item in items]
    if key in names:
        return names.index(key)
    if key.lstrip("-").isdigit() and -len(items) <= int(key) < len(items):
        return int(key) % len(items)
    known = [n for n in names if n]
    hint = did_you_mean(key, known) if known else f"use an index 0..{len(items) - 1}"
    raise SpecError(f"{where} has no item named '{key}'", hint, pos)


# --- ${...} expressions ----------------------------------------------------------------------

_EXPR = re.compile(r"\$\{([^}]*)\}")
MAX_EXPR_SIZE = 100_000  # longest string/list an expression may build


class _SpecSandbox(ImmutableSandboxedEnvironment):
    """jinja2's sandbox (no attribute tricks, no code), also refusing calls, and `*` and `**` that would exhaust
    memory or CPU. Expressions are arithmetic, comparisons, indexing and a few filters (`SAFE_FILTERS`)."""

    intercepted_binops = frozenset(["*", "**"])

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(count, int) and len(seq) * count > MAX_EXPR_SIZE:
                    raise OverflowError(f"the result would have more than {MAX_EXPR_SIZE} items")
        if operator == "**" and isinstance(left, (int, float)) and isinstance(right, (int, float)) and abs(left) > 1 \
                and right * math.log2(abs(left)) > 4096:
            raise OverflowError("the result would be too large")
        return super().call_binop(context, operator, left, right)


    def is_safe_callable(self, obj) -> bool:
        return False  # no calls at all: `'a'.center(10**10)` and friends would exhaust memory


SAFE_FILTERS = ("abs", "int", "float", "round", "min", "max", "length", "first", "last", "sum", "join", "lower", "upper")
_env = _SpecSandbox()
_env.globals.clear()  # no range(), lipsum(), cycler(), ...
_env.filters = {name: _env.filters[name] for name in SAFE_FILTERS}


def evaluate(text: str, context: dict[str, Any], pos: Pos | None) -> Any:
    """Replace `${expr}` in a string. A string that is one `${expr}` keeps the expression's type.

    Expressions are jinja2 expressions evaluated in its sandbox: arithmetic, comparisons,
    indexing and the names in `context` (the spec's `vars:`, `classes`, block params); no code.
    """
    whole = _EXPR.fullmatch(text.strip())
    if whole:
        return _eval_one(whole.group(1), context, pos)
    return _EXPR.sub(lambda m: str(_eval_one(m.group(1), context, pos)), text)


@functools.lru_cache(maxsize=4096)
def _compiled(expr: str):
    return _env.compile_expression(expr, undefined_to_none=False)


def _eval_one(expr: str, context: dict[str, Any], pos: Pos | None) -> Any:
    try:
        value = _compiled(expr)(**context)
    except UndefinedError as err:
        name = re.match(r"'([^']*)' is undefined", str(err))
        value = Undefined(name=name.group(1) if name else None)
    except SecurityError as err:
        raise SpecError(f"cannot evaluate ${{{expr}}}: {str(err).rstrip('.')}",
                        "expressions may use names, numbers and arithmetic only", pos) from None
    except TemplateError as err:
        raise SpecError(f"cannot evaluate ${{{expr}}}: {err}", "use names from vars: (or block params) and arithmetic", pos) from None
    except Exception as err:  # arithmetic errors inside a user's expression, e.g. division by zero
        raise SpecError(f"cannot evaluate ${{{expr}}}: {err}", "check the expression", pos) from None
    if isinstance(value, Undefined) or value.__class__.__module__.startswith("jinja2"):
        name = getattr(value, "_undefined_name", None)
        names = ", ".join(sorted(context)) or "none"
        if not name:
            raise SpecError(f"${{{expr}}} uses a name that is not defined", f"defined here: {names}", pos)
        hint = did_you_mean(name, context)
        hint = f"{hint} (defined here: {names})" if hint.startswith("did you mean") else f"defined here: {names}"
        raise SpecError(f"${{{expr}}} uses '{name}', which is not defined", f"{hint}; or add it under vars:", pos)
    return value


def substitute(value: Any, context: dict[str, Any], pos: Pos | None = None, skip: tuple[str, ...] = ()) -> Any:
    """Evaluate every `${...}` in a parsed tree (positions kept); keys listed in `skip` are left as written."""
    if isinstance(value, str):
        return evaluate(value, context, pos) if "${" in value else value
    if isinstance(value, dict):
        out = LineDict()
        out.pos, out.key_pos = getattr(value, "pos", pos), dict(getattr(value, "key_pos", {}))
        for key, item in value.items():
            item_pos = out.key_pos.get(key, out.pos)
            out[key] = item if key in skip else substitute(item, context, item_pos)
        return out
    if isinstance(value, list):
        out = LineList()
        out.pos = getattr(value, "pos", pos)
        out.item_pos = list(getattr(value, "item_pos", [])) or [out.pos] * len(value)
        out.extend(substitute(item, context, out.where(i)) for i, item in enumerate(value))
        return out
    return value


def resolve_vars(spec: LineDict) -> dict[str, Any]:
    """The expression context of a spec: `classes` and its `vars:`, each able to use the ones before."""
    context: dict[str, Any] = {}
    if "classes" in spec and not (isinstance(spec["classes"], str) and "${" in spec["classes"]):
        context["classes"] = spec["classes"]
    variables = spec.get("vars") or {}
    if not isinstance(variables, dict):
        raise SpecError("`vars:` must be a mapping of names to values", "e.g. vars: {n: 5, width: 16}", where(variables, spec.where("vars")))
    for name, value in variables.items():
        context[name] = substitute(value, context, variables.key_pos.get(name) if isinstance(variables, LineDict) else None)
    if "classes" in spec and "classes" not in context:
        context["classes"] = substitute(spec["classes"], context, spec.where("classes"))
    return context


def parse(path: str | Path, overrides: list[str] = ()) -> tuple[LineDict, dict[str, Any]]:
    """Read a spec: merge `extends:`, apply overrides, evaluate `${...}` (block bodies wait for expansion).

    Returns the parsed tree and the expression context (vars) that block expansion needs.
    """
    spec = apply_overrides(read_spec_file(path), list(overrides))
    context = resolve_vars(spec)
    return substitute(spec, context, spec.pos, skip=("blocks", "vars")), context
