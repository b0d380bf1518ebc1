"""Pass 1, parse: YAML read safely with positions, `extends:` merged, overrides and `${...}` applied.

The result is plain data (`LineDict` / `LineList`, compiler/tree.py) that remembers where every key and
item was written, so that every later error can say `file:line`.
"""
from __future__ import annotations

import codecs
import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

from netspec.errors import Pos, SpecError, did_you_mean
from netspec.compiler.template import Context, substitute
from netspec.compiler.tree import LineDict, LineList, where

MAX_YAML_NODES = 200_000  # expanded size; guards against alias ("billion laughs") bombs
MAX_EXTENDS_DEPTH = 8
MAX_SPEC_BYTES = 4 << 20  # a spec (or an override) larger than this is refused before it is read
MAX_VARS = 1_000  # names under `vars:` (each is evaluated with all before it: the cost grows with the square)
MAX_NESTING = 64  # mappings and lists inside each other, aliases included (deeper would exhaust the stack)
# what YAML refuses as text (PyYAML's Reader.NON_PRINTABLE), found here first to say on which line
_NON_PRINTABLE = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_BOMS = [(codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"), (codecs.BOM_UTF16_LE, "UTF-16"),
         (codecs.BOM_UTF16_BE, "UTF-16")]


class _PosLoader(yaml.SafeLoader):
    """yaml's SafeLoader (no python tags) that records positions and refuses alias bombs."""

    def compose_node(self, parent, index):
        """Compose one node, refusing nesting deeper than MAX_NESTING (counted through aliases too)."""
        self._nesting = getattr(self, "_nesting", 0) + 1
        try:
            if self._nesting > MAX_NESTING:
                raise _too_deep(Pos(self.name, self.peek_event().start_mark.line + 1))
            node = super().compose_node(parent, index)
        finally:
            self._nesting -= 1
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and not hasattr(node, "depth"):
            children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else node.value
            node.depth = 1 + max((getattr(c, "depth", 1) for c in children), default=0)
            if node.depth > MAX_NESTING:
                raise _too_deep(Pos(self.name, node.start_mark.line + 1))
        return node

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


def _too_deep(pos: Pos) -> SpecError:
    return SpecError(f"mappings and lists are nested more than {MAX_NESTING} deep here",
                     "a spec is a few levels deep: check the brackets and the indentation (or the anchors)", pos)


def check_text(text: str, name: str) -> None:
    """Refuse characters YAML cannot hold (NUL, control characters), at their line."""
    bad = _NON_PRINTABLE.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        what = "a NUL byte (a binary file, or UTF-16 text?)" if bad.group() == "\0" else f"the control character {bad.group()!r}"
        raise SpecError(f"{what} is not allowed in a spec", "a spec is plain UTF-8 text: remove the character",
                        Pos(name, line))


def load_yaml(text: str, name: str) -> Any:
    """Parse YAML text safely, keeping positions. Python tags, alias bombs, control characters and very deep
    nesting are refused."""
    check_text(text, name)
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
        raise SpecError(f"cannot read YAML: {str(err).splitlines()[0][:200]}", "fix the YAML syntax", Pos(name, 0)) from None
    except RecursionError:
        raise _too_deep(Pos(name, 0)) from None
    finally:
        loader.dispose()


def _shown(path: Path) -> str:
    return str(path) if len(str(path)) <= 200 else str(path)[:197] + "..."


def read_text(path: Path, what: str = "spec file", pos: Pos | None = None) -> str:
    """A spec file's text: a regular file of at most MAX_SPEC_BYTES, UTF-8. Checked before it is read, so a
    directory, a device (/dev/zero), a FIFO or a huge file is a one-line error, not a hang."""
    shown = _shown(path)
    fix = "give the path of a .yaml spec, e.g. specs/cnds8.yaml"
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file (a device or a pipe?)"
            raise SpecError(f"{what} '{shown}' is {kind}", fix, pos)
        if info.st_size > MAX_SPEC_BYTES:
            raise SpecError(f"{what} '{shown}' is {info.st_size:,} bytes; specs are limited to {MAX_SPEC_BYTES:,}",
                            "is this the right file? use blocks and repeat: for long networks", pos)
        with open(path, "rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise SpecError(f"{what} '{shown}' does not exist", fix, pos) from None
    except (OSError, ValueError) as err:  # ValueError: a NUL in the path
        raise SpecError(f"cannot read {what} '{shown}': {getattr(err, 'strerror', None) or err}",
                        "check the path and its permissions", pos) from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"{what} '{shown}' is larger than {MAX_SPEC_BYTES:,} bytes", "is this the right file?", pos)
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            raise SpecError(f"{what} '{shown}' is {encoding} text", "save it as UTF-8", Pos(str(path), 1))
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        hint = "it looks like a binary file" if b"\0" in data[:4096] else "is it Latin-1 or another encoding?"
        raise SpecError(f"byte 0x{data[err.start]:02x} is not UTF-8 ({hint})", "save the file as UTF-8",
                        Pos(str(path), line)) from None


class _ExtendsError(SpecError):
    """A file named by `extends:` that is not a spec, reported at the `extends:` line that named it."""


def read_spec_file(path: str | Path, _depth: int = 0, _pos: Pos | None = None) -> LineDict:
    """Read one spec file and, recursively, the file it `extends:`, merged below it. A file `extends:` names
    that cannot be read as a spec (binary, not YAML, not a mapping, ...) is an error at the `extends:` line."""
    path = Path(path)
    what = "spec file" if _pos is None else "the file `extends:` names,"
    try:
        text = read_text(path, what, _pos)
        data = load_yaml(text, str(path))
        if not isinstance(data, LineDict):
            raise SpecError("a spec must be a mapping (name:, input:, nodes:, ...)", "see specs/cnds8.yaml for the "
                            "layout", Pos(str(path), 1))
    except SpecError as err:
        if _pos is None or isinstance(err, _ExtendsError):
            raise
        if err.pos == _pos:  # said at the `extends:` line already (missing, a directory, too large, ...)
            raise _ExtendsError(err.what, err.fix, err.pos) from None
        raise _ExtendsError(f"`extends:` names '{_shown(path)}', which is not a spec: {err.pos}: {err.what}",
                            f"{err.fix} (`extends:` takes the path of another spec, relative to this one's folder)",
                            _pos) from None
    base_name = data.pop("extends", None)
    if base_name is None:
        return data
    if _depth >= MAX_EXTENDS_DEPTH:
        raise _ExtendsError("`extends:` goes more than 8 files deep (a loop?)", "make the chain shorter", data.where("extends"))
    at = data.key_pos.get("extends", data.pos)
    if not isinstance(base_name, str) or not base_name:
        raise SpecError("`extends:` must be the path of a spec file", "e.g. extends: cnds8.yaml", at)
    base_path = path.parent / base_name
    try:
        os.stat(base_path)
    except (OSError, ValueError):  # missing, a name too long, a NUL: the file is not there
        raise SpecError(f"`extends: {base_name[:100]}` names a file that does not exist ({str(base_path)[:200]})",
                        "the path is relative to this spec's folder", at) from None
    return merge(read_spec_file(base_path, _depth + 1, at), data)


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
        pos = Pos(f"override '{text if len(text) <= 80 else text[:60] + '...'}'", 0)
        key, sep, raw_value = text.partition("=")
        if not sep or not key:
            raise SpecError("an override must look like key=value", "e.g. train.epochs=3 or branches.aux1.from=conv4_1", pos)
        if len(text) > MAX_SPEC_BYTES:
            raise SpecError(f"the override is longer than {MAX_SPEC_BYTES:,} characters", "put it in the spec", pos)
        check_text(text, pos.file)
        try:
            value = load_yaml(raw_value, pos.file) if raw_value.strip() else ""
        except SpecError as err:
            if "nested" in err.what:
                raise SpecError(err.what, err.fix, pos) from None
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


def resolve_vars(spec: LineDict) -> Context:
    """The expression context of a spec: `classes` and its `vars:`, each able to use the ones before."""
    context = Context()
    if "classes" in spec and not (isinstance(spec["classes"], str) and "${" in spec["classes"]):
        context["classes"] = spec["classes"]
    variables = spec.get("vars") or {}
    if not isinstance(variables, dict):
        raise SpecError("`vars:` must be a mapping of names to values", "e.g. vars: {n: 5, width: 16}", where(variables, spec.where("vars")))
    if len(variables) > MAX_VARS:
        raise SpecError(f"`vars:` defines {len(variables):,} names; the limit is {MAX_VARS:,}",
                        "use lists or blocks with params instead of numbered vars", spec.where("vars"))
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
