"""`netspec probe --apply`: write a spec with a branch after each suggested layer, keeping the file's text
(comments, layout) and checking that the new spec compiles before it is written."""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import yaml

from netspec.errors import SpecError, UserError
from netspec.limits import Limits
from netspec.project import atomic_write
from netspec.spec import MAIN_HEAD
from netspec.compiler import Compiled, analyse
from netspec.compiler.parse import load_yaml, read_spec_file
from netspec.runtime.placement import attach_node, branch_attach

BRANCH_LOSS = {"weight": 0.3, "schedule": "cnds"}  # CNDS: α_0 = 0.3, eq. 2

def add_branches(compiled: Compiled, overrides: list[str], points: list[str], target: Path,
                 template_branch: str | None = None) -> str:
    """Write the spec, with a branch after each point, to `target` (the spec itself keeps a `.bak`: see
    `apply_target`); the branches copy the nodes of `template_branch` (default: the spec's first branch, else
    a CNDS head). Returns what was done."""
    if not points:
        raise UserError("--apply: there is no attach point to add a branch at",
                        "raise --threshold (the table shows each layer's gradient and where it would go)")
    path, net = compiled.path, compiled.network
    in_place = target == path
    existing = branch_attach(net)
    wanted = [attach_node(net, p) for p in points]
    skipped = [a for a in wanted if a in existing]
    wanted = [a for a in wanted if a not in existing]
    if not wanted:
        return "\n--apply: nothing to do, the spec already has a branch at " + ", ".join(
            f"{a} ({', '.join(existing[a])})" for a in skipped)
    text = path.read_text()
    merged, own, base = _sections(path, text)
    source, template = branch_template(merged, template_branch)
    taken = set(net.nodes) | {k for part in (merged, own, base) for s in ("branches", "losses") for k in (part.get(s) or {})}
    names = _fresh_names(taken, len(wanted))
    branches = {name: {"from": a, "nodes": template or default_head(net.shape(a))} for name, a in zip(names, wanted)}
    losses = {name: {"type": "cross_entropy", "head": name, **BRANCH_LOSS} for name in names}
    if not merged.get("losses"):
        losses = {MAIN_HEAD: {"type": "cross_entropy", "head": MAIN_HEAD}, **losses}
    new_text = add_entries(add_entries(text, "branches", branches, base), "losses", losses, base)
    if target != path:  # its own build directory
        new_text = set_name(new_text, target.stem)
    _check_and_write(new_text, target, overrides, compiled.limits, backup=path.with_name(path.name + ".bak") if in_place else None)
    done = "\n".join(f"  {name}: from {a}, {source}, loss weight {BRANCH_LOSS['weight']} schedule {BRANCH_LOSS['schedule']}"
                     for name, a in zip(names, wanted))
    kept = f" (kept {path.name}.bak)" if in_place else ""
    already = "".join(f"\n  {a}: already has {', '.join(existing[a])}" for a in skipped)
    return f"\n--apply: wrote {target}{kept}:\n{done}{already}"


def apply_target(path: Path, in_place: bool = False, output: str | None = None) -> Path:
    """Where --apply writes: the spec itself (`in_place`), `output`, or <spec>_probed.yaml; never an existing file."""
    target = path if in_place else Path(output) if output else path.with_name(f"{path.stem}_probed{path.suffix}")
    if target.exists() and not in_place:
        raise UserError(f"{target} exists; --apply never overwrites a spec",
                        "give another -o, delete it, or use --in-place (which keeps a .bak)")
    return target


def _plain(value):
    """Parsed YAML (LineDict/LineList) as plain dicts and lists, for yaml.safe_dump."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _sections(path: Path, text: str) -> tuple[dict, dict, dict]:
    """The spec as merged with what it `extends:`, the file's own mapping, and the merged base ({} if none)."""
    own = _plain(load_yaml(text, str(path)))
    base = _plain(read_spec_file(path.parent / own["extends"])) if own.get("extends") else {}
    return _plain(read_spec_file(path)), own, base


def branch_template(merged: dict, name: str | None) -> tuple[str, list[dict] | None]:
    """(description, nodes) of the named branch (checked by `settings`), or of the first; nodes None: the spec has
    none, use `default_head`."""
    branches = merged.get("branches") or {}
    if name is None and not branches:
        return "default CNDS head", None
    name = name or next(iter(branches))
    return f"nodes of {name}", branches[name]["nodes"]


def default_head(shape: tuple[int, int, int]) -> list[dict]:
    """CNDS's branch (Fig. 1) for a C×H×W map: average pool, 1x1 conv, relu, fc-relu, fc-relu, fc classifier."""
    kernel = min(5, *shape[1:])
    return [{"name": "pool", "op": "avgpool", "kernel": kernel, "stride": min(2, kernel), "ceil": True},
            {"name": "conv", "op": "conv", "out": 128, "kernel": 1}, {"name": "relu", "op": "relu"},
            {"name": "fc1", "op": "fc", "out": 1024}, {"name": "relu_fc1", "op": "relu"},
            {"name": "drop_fc1", "op": "dropout", "p": 0.5},
            {"name": "fc2", "op": "fc", "out": 1024}, {"name": "relu_fc2", "op": "relu"},
            {"name": "fc3", "op": "fc", "out": "${classes}"}]


def _fresh_names(taken: set[str], count: int) -> list[str]:
    names, i = [], 1
    while len(names) < count:
        if f"aux{i}" not in taken:
            names.append(f"aux{i}")
        i += 1
    return names


def add_entries(text: str, key: str, entries: dict, base: dict) -> str:
    """Add `entries` to the top-level mapping `key` of the spec text, keeping everything else (comments too).
    `base`: the spec it `extends:` ({} if none).

    A block mapping gets the entries appended after its last line, a flow mapping gets them in flow
    style, a `null` becomes a block mapping (a `null` that deletes an `extends:`-ed section keeps
    deleting its entries), and a missing key is appended at the end of the file."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    value = next((v for k, v in root.value if k.value == key), None)
    if value is None:
        return text.rstrip("\n") + f"\n\n{key}:\n" + _block(entries, "  ")
    if isinstance(value, yaml.MappingNode) and not value.flow_style and value.value:
        indent = " " * value.value[0][0].start_mark.column
        end = _last_mark(value)
        lines = text.splitlines(keepends=True)
        at = end.line + 1 if end.column > 0 else end.line
        if at >= len(lines) and lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        return "".join(lines[:at]) + _block(entries, indent) + "".join(lines[at:])
    start, stop = value.start_mark.index, value.end_mark.index
    if isinstance(value, yaml.MappingNode):
        return text[:start] + _flow({**yaml.safe_load(text[start:stop]), **entries}) + text[stop:]
    deleted = {name: None for name in base.get(key) or {}}  # `key: null` deletes what the base has
    return text[:start].rstrip(" ") + "\n" + _block({**deleted, **entries}, "  ").rstrip("\n") + text[stop:]


def set_name(text: str, name: str) -> str:
    """The spec text with `name: <name>` (replaced where it is written, else added before the first key)."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    value = next((v for k, v in root.value if k.value == "name"), None)
    if value is None:
        at = root.value[0][0].start_mark.index
        return text[:at] + f"name: {_flow(name)}\n" + text[at:]
    return text[:value.start_mark.index] + _flow(name) + text[value.end_mark.index:]


def _last_mark(node):
    """Where the last scalar or flow collection inside a block collection ends (a block's own end is the next token)."""
    while isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and not node.flow_style and node.value:
        last = node.value[-1]
        node = last[1] if isinstance(node, yaml.MappingNode) else last
    return node.end_mark


def _flow(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=math.inf).removesuffix("\n...\n").strip()


def _block(entries: dict, indent: str) -> str:
    """Entries in block style, one node or loss per line: the layout of specs/*.yaml."""
    lines = []
    for name, value in entries.items():
        if isinstance(value, dict) and "nodes" in value:
            lines += [f"{indent}{name}:", f"{indent}  from: {_flow(value['from'])}", f"{indent}  nodes:"]
            lines += [f"{indent}    - {_flow(node)}" for node in value["nodes"]]
        else:
            lines.append(f"{indent}{name}: {_flow(value)}")
    return "\n".join(lines) + "\n"


def _check_and_write(text: str, target: Path, overrides: list[str], limits: Limits, backup: Path | None) -> None:
    """Compile the new spec from a temporary file beside the target, then move it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=".yaml")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        try:
            analyse(tmp, overrides, limits)
        except SpecError as err:
            raise UserError(f"the spec with the new branch(es) does not compile: {err}",
                            "check the message: a template must fit the feature map it attaches to (--branch-template), "
                            "and `extends:` paths are relative to the new file's folder") from None
        if backup is not None:
            atomic_write(backup, target.read_text())
        atomic_write(target, text)
    finally:
        Path(tmp).unlink(missing_ok=True)
