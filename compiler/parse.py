"""Pass 1, parse: YAML read safely with positions, `extends:` merged, overrides and `${...}` applied.

The result is plain data (`LineDict` / `LineList`, compiler/tree.py) that remembers where every key and
item was written, so that every later error can say `file:line`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from netspec.errors import Pos, SpecError, did_you_mean
from netspec.compiler.template import substitute
from netspec.compiler.tree import LineDict, LineList, where

MAX_YAML_NODES = 200_000  # expanded size; guards against alias ("billion laughs") bombs
MAX_EXTENDS_DEPTH = 8


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
    """Deep-merge `top` over `base`: mappings merge key by key, `null` deletes, anything else replaces.
    A mapping whose `type:` differs from the base's is another kind of thing: it replaces the base whole."""
    if not (isinstance(base, dict) and isinstance(top, dict)) or base.get("type", top.get("type")) != top.get("type", base.get("type")):
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
    if isinstance(node[head], str) and node[head].isidentifier():  # a shorthand (`weight: kaiming`) expands
        node[head] = _with_pos({"type": node[head]}, pos)                # to its mapping: `weight.mode=fan_in` fits
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
