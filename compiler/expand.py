"""Pass 3, expand: blocks, repeats and branches unrolled into one flat list of named op nodes.

Names are qualified: a block instance `stage1` repeated gives `stage1.0.conv1`, a branch `aux1`
gives `aux1.fc`. These names become the parameter names, so a branch's position never changes
the backbone's names. `from:` is resolved here, innermost scope first.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from netspec.errors import Pos, SpecError, did_you_mean
from netspec.limits import Limits, env_name
from netspec.ops import CopyOf, GradScale, OpNode
from netspec.spec import MAIN_HEAD, BlockNode, Spec
from netspec.compiler.backbone import TracedBackbone, copy_maker, trace_backbone
from netspec.compiler.ir import Node
from netspec.compiler.template import scoped, substitute
from netspec.compiler.tree import LineDict
from netspec.compiler.validate import validate_node


GRAD_SCALE = "grad_scale"  # local name of a branch's gradient-scaling node: <branch>.grad_scale


@dataclass
class _Pending:
    """A node being expanded: its inputs are resolved once every name is known."""

    name: str
    op: OpNode
    refs: list[str]
    scope: "Scope | None"
    branch: str | None
    pos: Pos | None
    via: str
    inputs: list[str] = field(default_factory=list)
    ref_at: Pos | None = None  # where its inputs were named: its `from:`, else the `from:` that led to its entry


@dataclass
class Scope:
    """Names visible where a node is written: local names first, then the enclosing scope's."""

    prefix: str
    names: dict[str, str] = field(default_factory=dict)
    parent: "Scope | None" = None

    def lookup(self, ref: str) -> str | None:
        scope = self
        while scope is not None:
            if ref in scope.names:
                return scope.names[ref]
            scope = scope.parent
        return None

    def visible(self) -> set[str]:
        scope, out = self, set()
        while scope is not None:
            out |= set(scope.names)
            scope = scope.parent
        return out


@dataclass(frozen=True)
class Expanded:
    """What expand returns: flat nodes in spec order, the heads, the input's name."""

    nodes: tuple[Node, ...]
    heads: dict[str, str]  # head name -> node that produces its logits
    input_name: str


class _Expander:
    def __init__(self, spec: Spec, context: dict[str, Any], limits: Limits):
        self.spec, self.context, self.limits = spec, context, limits
        self.nodes: list[_Pending] = []  # refs resolved once all names exist
        self.all_names: dict[str, str] = {}  # every qualified name and alias -> node name
        self.defined_at: dict[str, Pos | None] = {spec.input.name: spec.input.at}
        self.expanding: list[str] = []  # blocks being instantiated, innermost last (to refuse recursion)
        self.deadline = time.monotonic() + limits.expand_seconds

    def run(self) -> Expanded:
        spec = self.spec
        root = Scope("", {spec.input.name: spec.input.name})
        self.all_names[spec.input.name] = spec.input.name
        self.traced = trace_backbone(spec, self.limits) if spec.backbone is not None else None
        main = self.chain(spec.nodes, root, spec.input.name, None, "", spec.input.at) if self.traced is None \
            else self.backbone(self.traced, root)
        if spec.output:
            branch = spec.output.split(".", 1)[0]
            if branch in spec.branches and spec.output not in self.all_names:
                raise SpecError(f"`output:` names '{spec.output}', a node of branch '{branch}'", "the main head is a "
                                "backbone node: name one (or leave `output:` out: the last backbone node)",
                                spec.where("output"))
            main = self._resolve(spec.output, root, spec.where("output"), what="`output:` names")
            if main == spec.input.name:
                raise SpecError(f"`output:` names the network input '{main}', not a node",
                                "name the backbone node whose output is the main head's logits (or leave `output:` "
                                "out: the last backbone node)", spec.where("output"))
        heads = {MAIN_HEAD: main}
        for branch_name, branch in spec.branches.items():
            if self.traced is not None and branch_name in self.traced.top_level:
                raise SpecError(f"branch '{branch_name}' has the name of the backbone's top-level '{branch_name}'",
                                f"rename the branch (e.g. 'aux_{branch_name}'): its parameters are named "
                                f"<branch>.<node>.weight and would mix with the module's '{branch_name}.*'", branch.at)
            if branch_name in heads or branch_name in root.names:
                raise SpecError(f"branch '{branch_name}' has the name of a head or backbone node",
                                "give the branch its own name", branch.at)
            attach_at = branch.where("from")
            attach = self._resolve(branch.from_, root, attach_at, what=f"branch '{branch_name}' attaches to")
            scope = Scope(branch_name + ".", {"input": attach}, parent=root)
            if branch.grad_scale is not None:  # the gradient-scaling edge: a node at the branch's start
                attach = self.emit(GradScale(name=GRAD_SCALE, op="grad_scale", scale=branch.grad_scale,
                                             _at=branch.where("grad_scale")), scope, attach, branch_name, "", attach_at)
                scope.names["input"] = attach
            heads[branch_name] = self.chain(branch.nodes, scope, attach, branch_name, "", attach_at)
        for n in self.nodes:
            if n.refs:
                n.inputs = [self._resolve(ref, n.scope, n.ref_at, n) for ref in n.refs]
        self._check_branch_inputs()
        nodes = tuple(Node(n.name, n.op, tuple(n.inputs), n.branch, n.pos, n.via) for n in self.nodes)
        return Expanded(nodes, heads, spec.input.name)

    def _check_branch_inputs(self) -> None:
        """The backbone and each branch read the backbone (and themselves) only: a branch is cut off at export.
        A violation is reported where the input is named: the reading node's `from:` (or the `from:` of the
        branch or block instance that it starts)."""
        owner = {n.name: n.branch for n in self.nodes}
        for n in self.nodes:
            for source in n.inputs:
                other = owner.get(source)
                if other is not None and other != n.branch:
                    who = "backbone node" if n.branch is None else f"node '{n.name}' of branch"
                    raise SpecError(f"{who} '{n.name if n.branch is None else n.branch}' takes input from "
                                    f"'{source}', a node of branch '{other}'",
                                    "the backbone (and each branch) may read the backbone only: a branch is cut off "
                                    "at export, so nothing else can depend on it", n.ref_at or n.pos)

    def chain(self, nodes: list, scope: Scope, previous: str, branch: str | None, via: str, entry_at: Pos | None) -> str:
        """Emit nodes one after another; each defaults to the previous one's output (the first to `previous`,
        named at `entry_at`). Returns the last."""
        for node in nodes:
            previous = self.emit(node, scope, previous, branch, via, entry_at)
            entry_at = node.at
        return previous

    def backbone(self, traced: TracedBackbone, root: Scope) -> str:
        """The traced backbone's nodes (inputs already resolved), its submodules' aliases; returns the main head."""
        for node in traced.nodes:
            self.nodes.append(_Pending(node.name, node.op, [], None, None, node.pos, node.via, list(node.inputs)))
            self._define(node.name, node.name, root, node.pos)
        for alias, target in traced.aliases.items():
            self._define(alias, target, root, self.spec.backbone.at)
        return traced.main

    def emit(self, node, scope: Scope, previous: str, branch: str | None, via: str, entry_at: Pos | None) -> str:
        self._claim(node.name, scope, node.at)
        self._check_budget(node, via)
        if isinstance(node, CopyOf):
            node = self._bind_copy(node)
        if isinstance(node, BlockNode):
            return self.instantiate(node, scope, previous, branch, via, entry_at)
        qualified = scope.prefix + node.name
        # without `from:` the input is `previous`, already qualified
        ref_at = node.where("from") if node.inputs else entry_at
        self.nodes.append(_Pending(qualified, node, node.inputs, scope, branch, node.at, via, [previous], ref_at))
        self._define(node.name, qualified, scope, node.at)
        return qualified

    def instantiate(self, node: BlockNode, scope: Scope, previous: str, branch: str | None, via: str,
                    entry_at: Pos | None) -> str:
        """Unroll `repeat` copies of a block; returns the output of the last copy."""
        if node.block in self.expanding:
            chain = " → ".join([*self.expanding, node.block])
            raise SpecError(f"block '{node.block}' uses itself: {chain}", "a block cannot contain itself", node.at)
        block = self.spec.blocks.get(node.block)
        if block is None:
            raise SpecError(f"node '{node.name}' uses block '{node.block}', which is not defined",
                            did_you_mean(node.block, self.spec.blocks), node.at)
        unknown = set(node.params) | set(node.first)
        unknown -= set(block.params)
        if unknown:
            key = sorted(unknown)[0]
            raise SpecError(f"block '{node.block}' has no param '{key}'", did_you_mean(key, block.params), node.at)
        base = scope.prefix + node.name
        source = node.inputs[0] if node.inputs else None
        entry_at = node.where("from") if source else entry_at
        entry = self._resolve(source, scope, entry_at) if source else previous
        for index in range(node.repeat):
            params = {**block.params, **node.params, **(node.first if index == 0 else {})}
            missing = [k for k, v in params.items() if v is None]
            if missing:
                raise SpecError(f"block '{node.block}' needs param '{missing[0]}'", f"add {missing[0]}: ... to node '{node.name}'", node.at)
            prefix = f"{base}.{index}." if node.repeat > 1 else base + "."
            inner = Scope(prefix, {"input": entry}, parent=scope)
            here = f"{via} " if via else ""
            copy_via = f"{here}in {prefix[:-1]} ({node.at})"
            body = [validate_node(substitute(raw, scoped(self.context, {**params, "index": index}), _pos(raw)))
                    for raw in block.nodes]
            self.expanding.append(node.block)
            entry = self.chain(body, inner, entry, branch, copy_via, entry_at)
            entry_at = node.at
            self.expanding.pop()
            if node.repeat > 1:
                self.all_names[prefix[:-1]] = entry
                scope.names.setdefault(f"{node.name}.{index}", entry)
        self._define(node.name, entry, scope, node.at)
        return entry

    def _bind_copy(self, node: CopyOf) -> CopyOf:
        if self.traced is None:
            raise SpecError(f"node '{node.name}' copies '{node.module}' of the backbone, but the spec has no "
                            "`backbone:`", "copy_of is for specs whose backbone is a PyTorch module", node.at)
        if node.module not in self.traced.submodules:
            raise SpecError(f"node '{node.name}' copies '{node.module}', which is not a submodule of the backbone",
                            did_you_mean(node.module, self.traced.submodules), node.where("module"))
        return node.bind(copy_maker(self.spec, node.module))

    def _check_budget(self, node, via: str) -> None:
        """The unrolled network stays within the limits' op nodes and seconds (nested repeats multiply)."""
        where = f" ({via.strip()})" if via else ""
        if len(self.nodes) >= self.limits.nodes:
            raise SpecError(f"the network unrolls to more than {self.limits.nodes:,} nodes at node '{node.name}'{where}",
                            "lower `repeat:` (repeats inside repeated blocks multiply), or raise the limit with "
                            f"{env_name('nodes')}", node.at)
        if time.monotonic() > self.deadline:
            raise SpecError(f"unrolling blocks took longer than {self.limits.expand_seconds:g}"
                            f" s (at node '{node.name}'{where})", "make the network smaller, or raise the limit with "
                            f"{env_name('expand_seconds')}", node.at)

    def _claim(self, name: str, scope: Scope, pos: Pos | None) -> None:
        if name in scope.names and name != "input":
            first = self.defined_at.get(scope.prefix + name)
            raise SpecError(f"node name '{name}' is used twice", f"first defined at {first}; rename one of them", pos)
        if name == "input" and scope.prefix:
            raise SpecError("'input' is reserved inside blocks and branches (it names their input)", "rename the node", pos)

    def _define(self, local: str, qualified: str, scope: Scope, pos: Pos | None) -> None:
        scope.names[local] = qualified
        self.all_names[scope.prefix + local] = qualified
        self.defined_at[scope.prefix + local] = pos

    def _resolve(self, ref: str, scope: Scope, pos: Pos | None, node: _Pending | None = None, what: str = "") -> str:
        found = scope.lookup(ref) or self.all_names.get(ref)
        if found is None:
            who = what or (f"node '{node.name}' takes input from" if node else "this refers to")
            raise SpecError(f"{who} '{ref}', which does not exist",
                            did_you_mean(ref, scope.visible() | set(self.all_names)), pos)
        return found


def _pos(raw: Any) -> Pos | None:
    return raw.pos if isinstance(raw, LineDict) else None


def expand(spec: Spec, context: dict[str, Any], limits: Limits = Limits()) -> Expanded:
    """Unroll blocks and branches into flat, fully named nodes with resolved inputs, within `limits`."""
    return _Expander(spec, context, limits).run()
