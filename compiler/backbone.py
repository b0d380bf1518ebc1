"""Bring your own backbone: a PyTorch module (`backbone:` in the spec) traced with torch.fx into netspec's IR.

`trace_backbone(spec)` builds the module on the meta device, traces it (`leaf_modules:` are not traced into)
and returns one IR node per call, named as torchvision's `get_graph_node_names` names them: a leaf module's
call by its qualified name (`layer1.0.conv1`, `layer1.0.relu_1` for its second call), a function or method
call by its scope and fx's name (`layer1.0.add`, `flatten`). A non-leaf submodule's name (`layer2`) is an
alias of its output. Shapes, parameters and FLOPs come from running the traced calls on the meta device
(torch.fx ShapeProp's way, FLOPs as torch's FlopCounterMode counts them), so no weight is materialised.

`lower` builds the module for real (`BackboneLowering`) and copies the traced calls into the training graph
with the module's own attribute paths, so parameter names are the module's `state_dict()` keys. Calls that do
not depend on the input (`get_attr` of a parameter, constants) are not IR nodes: they are copied in before
their first use, and their parameters and FLOPs are counted on the IR node that uses them first.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import re
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from pydantic import PrivateAttr
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode

from netspec.errors import Pos, SpecError, did_you_mean
from netspec.limits import Limits
from netspec.ops import OpNode
from netspec.spec import Backbone, Spec
from netspec.compiler.ir import Node


class Traced(OpNode):
    """One call of a traced backbone (never written in a spec): `op` is the leaf module's class (`Conv2d`) or
    the function or method (`add`, `flatten`); `call` what it computes (the module's repr, the call's
    constant arguments), so a checkpoint notices when the module changed."""

    op: str
    kind: str
    call: str
    arity: ClassVar[tuple[int, int | None]] = (1, None)
    _measured: tuple = PrivateAttr(default=((), 0, 0))  # (shape, params, flops) from the meta run

    @property
    def measured(self) -> tuple[tuple[int, ...], int, int]:
        return self._measured


class TracedLayer(Traced):
    """A traced call of a weight layer (a module with a weight of 2 or more dimensions: conv, linear): it
    counts in the depth of the heads, as `conv` and `fc` nodes do."""

    weighted: ClassVar[bool] = True


@dataclass(frozen=True)
class TracedBackbone:
    """What expand needs: the IR nodes (input named `input_name`), the aliases (a non-leaf submodule → the node
    giving its output), the main head's node, and the module's submodule and top-level attribute names."""

    nodes: tuple[Node, ...]
    aliases: dict[str, str]
    main: str
    submodules: frozenset[str]
    top_level: frozenset[str]


# --- building the user's module --------------------------------------------------------------------------------

_FILES: dict[tuple[str, str], Any] = {}  # (path, sha256 of its text) -> the loaded Python module (one per version)


def spec_dir(spec: Spec) -> Path:
    """The directory `python:` paths are relative to: that of the spec file that says `python:` (a spec it
    `extends:` may), else (an override, a spec built in Python) the working directory."""
    pos = spec.backbone.where("python") or spec.at
    file = pos.file if pos is not None else ""
    return Path(file).parent if file and not file.startswith("<") else Path.cwd()


def backbone_callable(spec: Spec) -> Callable[..., nn.Module]:
    """The callable `backbone:` names, imported (a file relative to the spec's directory, or a module).
    `trace_backbone` (the expand pass) has checked that the spec may run code; a network exists only after it."""
    bb: Backbone = spec.backbone
    pos = bb.where(bb_key(bb))
    where, name = bb.target.split(":")
    if bb.python:
        path = (spec_dir(spec) / where).resolve()
        if not path.is_file():
            raise SpecError(f"backbone file '{where}' does not exist (looked for {path})",
                            "give the file's path relative to the spec's directory", pos)
        source = _load_file(path, pos)
    else:
        try:
            source = importlib.import_module(where)
        except ImportError as err:
            raise SpecError(f"backbone module '{where}' cannot be imported: {err}",
                            "install the package, or use `python: file.py:Name` for a file of yours", pos) from None
    found = getattr(source, name, None)
    if not callable(found):
        public = [n for n, v in vars(source).items() if callable(v) and not n.startswith("_")]
        raise SpecError(f"'{where}' has no callable '{name}'", did_you_mean(name, public), pos)
    return found


def _load_file(path: Path, pos: Pos | None):
    key = (str(path), hashlib.sha256(path.read_bytes()).hexdigest())
    if key not in _FILES:
        name = "netspec_backbone_" + hashlib.sha256("\0".join(key).encode()).hexdigest()[:12]
        loader = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(loader)
        sys.modules[name] = module  # dataclasses and pickling look classes up there
        try:
            loader.loader.exec_module(module)
        except Exception as err:  # the user's file: any error is theirs, reported in one line
            del sys.modules[name]
            raise SpecError(f"backbone file '{path.name}' fails to load: {_user_frame(err)}{_first_line(err)}",
                            "fix the file (run it with python to see the whole traceback)", pos) from None
        _FILES[key] = module
    return _FILES[key]


def build_backbone(spec: Spec) -> nn.Module:
    """A fresh instance of the spec's backbone module, on torch's current default device (meta inside
    `with torch.device("meta")`)."""
    make, bb = backbone_callable(spec), spec.backbone
    try:
        module = make(**bb.args)
    except Exception as err:  # the user's constructor
        raise SpecError(f"building the backbone {bb.target}(**args) failed: {_user_frame(err)}{_first_line(err)}",
                        "check `backbone.args` against the callable's parameters", bb.where("args")) from None
    if not isinstance(module, nn.Module):
        raise SpecError(f"the backbone {bb.target} returned {type(module).__name__}, not a torch nn.Module",
                        "name a class or a function that returns an nn.Module", bb.where(bb_key(bb)))
    return module


def bb_key(bb: Backbone) -> str:
    return "python" if bb.python else "module"


def copy_maker(spec: Spec, qualname: str) -> Callable[[], nn.Module]:
    """For `op: copy_of`: a function that builds the submodule `qualname` of a fresh instance of the backbone
    (the module's structure, new weights as its own `__init__` makes them)."""
    return lambda: build_backbone(spec).get_submodule(qualname)


# --- tracing ----------------------------------------------------------------------------------------------------

class _Tracer(fx.Tracer):
    """fx's tracer with torchvision's node names (feature_extraction.NodePathTracer's rule) and `leaf_modules`
    by qualified or class name; remembers each non-leaf submodule's output and where tracing failed."""

    def __init__(self, leaves: set[str]):
        super().__init__()
        self.leaves = leaves
        self.qualname = ""
        self.names: dict[fx.Node, str] = {}
        self.outputs: dict[str, fx.Node] = {}
        self.failed_in: str | None = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or type(m).__name__ in self.leaves or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        outer = self.qualname
        qualname = self.path_of_module(m)
        self.qualname = qualname
        try:
            if self.is_leaf_module(m, qualname):
                return self.create_proxy("call_module", qualname, args, kwargs)
            out = forward(*args, **kwargs)
            if isinstance(out, fx.Proxy):
                self.outputs[qualname] = out.node
            return out
        except Exception:
            self.failed_in = self.failed_in if self.failed_in is not None else qualname
            raise
        finally:
            self.qualname = outer

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, *rest, **more):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, *rest, **more)
        self.names[proxy.node] = self._qualname(proxy.node)
        return proxy

    def _qualname(self, node: fx.Node) -> str:
        """torchvision's rule: the scope, plus fx's name for a non-module call; fx's global `_N` suffix replaced
        by a count among the names already given. Ours: a module's own path is kept as it is (torchvision also
        strips a `_N` ending from it, naming a module `fc_1` `fc`), and a name is made unique if the count
        lands on a name already given."""
        name = self.qualname
        if node.op != "call_module":
            name = f"{name}.{node}" if name else str(node)
            if re.match(r".+_[0-9]+$", name):
                name = name.rsplit("_", 1)[0]
        for existing in reversed(self.names.values()):
            match = re.match(rf"{re.escape(name)}(_[0-9]+)?$", existing)
            if match:
                name += f"_{int(match.group(1)[1:]) + 1 if match.group(1) else 1}"
                break
        taken, base, extra = set(self.names.values()), name, 1
        while name in taken:
            name, extra = f"{base}_{extra}", extra + 1
        return name


@dataclass
class _Trace:
    root: nn.Module
    graph: fx.Graph
    names: dict[fx.Node, str]
    outputs: dict[str, fx.Node]
    calls: list[fx.Node] = field(default_factory=list)  # the IR nodes: calls that depend on the input, in order


def trace(spec: Spec, module: nn.Module) -> _Trace:
    """Trace `module` (the spec's backbone) and sort its calls into IR nodes and the rest."""
    bb = spec.backbone
    known = {name for name, _ in module.named_modules() if name}
    classes = {type(m).__name__ for m in module.modules()}
    for leaf in bb.leaf_modules:
        if leaf not in known and leaf not in classes:
            raise SpecError(f"leaf_modules: '{leaf}' is neither a submodule nor a submodule class of the backbone",
                            did_you_mean(leaf, known | classes), bb.where("leaf_modules"))
    tracer = _Tracer(set(bb.leaf_modules))
    try:
        graph = tracer.trace(module)
    except Exception as err:  # fx's reasons are TraceError, TypeError, NotImplementedError, AttributeError...
        where = f"'{tracer.failed_in}' ({type(module.get_submodule(tracer.failed_in)).__name__})" \
            if tracer.failed_in else f"the forward of {type(module).__name__}"
        fix = (f"list it under `leaf_modules: [{tracer.failed_in}]` (it then runs as one call, untraced)"
               if tracer.failed_in else "fx traces the top module's forward itself: move the untraceable part "
               "into a submodule and list it under `leaf_modules:`")
        raise SpecError(f"the backbone does not trace: fx stops in {where}{_user_frame(err, ' at ')}: "
                        f"{_first_line(err)}", fix, bb.where(bb_key(bb))) from None
    out = _Trace(module, graph, tracer.names, tracer.outputs)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise SpecError(f"the backbone's forward takes {len(placeholders)} inputs; netspec feeds it one (the image)",
                        "give the module a forward(x)", bb.where(bb_key(bb)))
    needed, stack = set(), [n for n in graph.nodes if n.op == "output"]
    while stack:  # what the output depends on (a result nothing uses is left out, as fx's dead-code pass would)
        node = stack.pop()
        if node not in needed:
            needed.add(node)
            stack.extend(node.all_input_nodes)
    live = {placeholders[0]}
    for node in graph.nodes:
        if node in needed and node.op in ("call_module", "call_function", "call_method") \
                and live & set(node.all_input_nodes):
            live.add(node)
            out.calls.append(node)
    return out


# --- the IR ----------------------------------------------------------------------------------------------------

class _Measure(fx.Interpreter):
    """Runs the traced graph, recording each node's output and FLOPs (torch's FlopCounterMode)."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.values: dict[fx.Node, Any] = {}
        self.flops: dict[fx.Node, int] = {}

    def run_node(self, n):
        with FlopCounterMode(display=False) as counter:
            value = super().run_node(n)
        self.values[n], self.flops[n] = value, counter.get_total_flops()
        return value


def _measure(spec: Spec, device: str) -> tuple[nn.Module, _Trace, _Measure]:
    """The module built on `device`, traced, and run once on an example of the input's shape (eval mode)."""
    with torch.device(device):
        module = build_backbone(spec)
    tr = trace(spec, module)
    measure = _Measure(fx.GraphModule(module, tr.graph).eval())
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            measure.run(torch.zeros((1, *spec.input.shape), device=device))
    except Exception as err:  # the user's code on the spec's input shape
        if device == "meta":
            raise
        failed = next((n for n in tr.graph.nodes if n.op != "placeholder" and n not in measure.values), None)
        raise SpecError(f"the backbone fails on the input {tuple(spec.input.shape)} at call "
                        f"'{tr.names.get(failed, str(failed))}'{_user_frame(err, ' at ')}: {_first_line(err)}",
                        "check `input.shape` against what the module expects", spec.where("input")) from None
    finally:
        module.train()
    return module, tr, measure


def trace_backbone(spec: Spec, limits: Limits) -> TracedBackbone:
    """The backbone's IR nodes with shapes, parameters and FLOPs (module built and run on the meta device), when
    `limits` allow a spec's code to run."""
    bb, pos = spec.backbone, spec.backbone.at
    if not limits.code:
        raise SpecError(f"`backbone: {{{bb_key(bb)}: {bb.target}}}` runs Python code",
                        "run with --allow-custom (or NETSPEC_ALLOW_CUSTOM=1) if you trust this spec", bb.where(bb_key(bb)))
    try:
        module, tr, measure = _measure(spec, "meta")
    except SpecError:
        raise
    except Exception:  # e.g. a leaf module that looks at values (`if x.sum() > 0`): run it for real, on zeros
        module, tr, measure = _measure(spec, "cpu")
    placeholder = next(n for n in tr.graph.nodes if n.op == "placeholder")
    name_of = {**{n: tr.names[n] for n in tr.calls}, placeholder: spec.input.name}
    counted: set[int] = set()
    called: set[str] = set()  # modules called already: a second call is not a weight layer of its own
    nodes = []
    for call in tr.calls:
        name = tr.names[call]
        if name == spec.input.name:
            raise SpecError(f"the input's name '{name}' is also a call of the backbone",
                            f"rename the input: input.name: {name}_in", spec.where("input"))
        params, flops = 0, measure.flops[call]
        for hidden in _hidden_inputs(call, name_of):
            flops += measure.flops.get(hidden, 0) if id(hidden) not in counted else 0
            counted.add(id(hidden))
            if hidden.op == "get_attr":
                params += _new_params([attrgetter(hidden.target)(module)], counted)
        if call.op == "call_module":
            params += _new_params(module.get_submodule(call.target).parameters(), counted)
        value = measure.values[call]
        shape = tuple(value.shape[1:]) if isinstance(value, torch.Tensor) else ()
        op = _op(call, module, first=call.op != "call_module" or call.target not in called)
        called.add(call.target)
        op._measured = (shape, params, flops)
        inputs = tuple(dict.fromkeys(name_of[i] for i in call.all_input_nodes if i in name_of))
        nodes.append(Node(name, op, inputs, None, pos, "in backbone"))
    result = next(n for n in tr.graph.nodes if n.op == "output").args[0]
    if not isinstance(result, fx.Node) or result not in name_of or result is placeholder:
        what = "its input" if result is placeholder else type(result).__name__
        raise SpecError(f"the backbone's forward returns {what}, not one tensor computed from the input", "the module's output is the main head: return the logits tensor alone",
                        bb.where(bb_key(bb)))
    aliases = {q: tr.names[n] for q, n in tr.outputs.items() if n in tr.names and n in name_of and q not in name_of.values()}
    submodules = frozenset(name for name, _ in module.named_modules() if name)
    top = {name for name, _ in module.named_children()} | {name for name, _ in module.named_parameters(recurse=False)}
    top |= {name for name, _ in module.named_buffers(recurse=False)} | {n.name.split(".")[0] for n in nodes}
    return TracedBackbone(tuple(nodes), aliases, name_of[result], submodules, frozenset(top))


def _hidden_inputs(call: fx.Node, ir: dict) -> list[fx.Node]:
    """The nodes `call` reads that are not IR nodes (get_attr, constants), transitively."""
    out, stack = [], [i for i in call.all_input_nodes if i not in ir]
    while stack:
        node = stack.pop()
        if node not in out:
            out.append(node)
            stack.extend(i for i in node.all_input_nodes if i not in ir)
    return out


def _new_params(tensors, counted: set[int]) -> int:
    total = 0
    for tensor in tensors:
        if isinstance(tensor, nn.Parameter) and id(tensor) not in counted:
            counted.add(id(tensor))
            total += tensor.numel()
    return total


def _op(call: fx.Node, module: nn.Module, first: bool) -> Traced:
    """The op record of a call; a module's first call of a weight layer is a `TracedLayer` (its node name is the
    module's path, which `probe` and `init:` look the layer up by)."""
    if call.op == "call_module":
        sub = module.get_submodule(call.target)
        weight = getattr(sub, "weight", None)
        cls = TracedLayer if first and isinstance(weight, torch.Tensor) and weight.dim() >= 2 else Traced
        text = " ".join(repr(sub).split())
        return cls.model_construct(name=str(call.target), op=type(sub).__name__, kind=call.op, call=text)
    op = call.target if isinstance(call.target, str) else getattr(call.target, "__name__", str(call.target))
    args = fx.node.map_arg((call.args, call.kwargs), lambda n: "·")
    return Traced.model_construct(name=call.name, op=op, kind=call.op, call=f"{op}{args}")


# --- lowering ---------------------------------------------------------------------------------------------------

class BackboneLowering:
    """The real backbone for one `lower` call: built on the CPU (from the seed `build_modules` set), traced, and
    copied call by call into the graph being lowered, with its submodules and tensors at their own paths."""

    def __init__(self, spec: Spec):
        self.spec = spec
        module = build_backbone(spec)
        self.trace = trace(spec, module)
        self.by_name = {self.trace.names[n]: n for n in self.trace.calls}
        self.copied: dict[fx.Node, fx.Node] = {}
        self.transient: list[str] = []  # non-persistent buffers read by get_attr: not in the state dict

    def finish(self, gm: fx.GraphModule) -> None:
        """Mark the non-persistent buffers of the lowered module as such (GraphModule registers every tensor it
        is given as a buffer that is saved), so its state dict keys are the module's own."""
        for target in self.transient:
            owner, _, name = target.rpartition(".")
            gm.get_submodule(owner)._non_persistent_buffers_set.add(name)

    def copy(self, name: str, graph: fx.Graph, values: dict[str, fx.Node], modules: dict[str, Any]) -> fx.Node:
        """Copy the call `name` (and the non-IR nodes it reads) into `graph`; its IR inputs are in `values`."""
        def arg(old: fx.Node) -> fx.Node:
            if old.op == "placeholder":
                return values[self.spec.input.name]
            if old in self.copied:
                return self.copied[old]
            if old in self.trace.calls:
                return values[self.trace.names[old]]
            return self._copy(old, graph, modules, arg)
        return self._copy(self.by_name[name], graph, modules, arg)

    def _copy(self, old: fx.Node, graph: fx.Graph, modules: dict, arg) -> fx.Node:
        name = self.trace.names[old].replace(".", "_") if old in self.trace.calls else old.name  # as `lower` names
        new = graph.create_node(old.op, old.target, fx.node.map_arg(old.args, arg), fx.node.map_arg(old.kwargs, arg),
                                name=name, type_expr=old.type)
        new.meta = dict(old.meta)
        if old.op in ("call_module", "get_attr"):
            modules[old.target] = attrgetter(old.target)(self.trace.root)
            owner, _, name = old.target.rpartition(".")
            if name in self.trace.root.get_submodule(owner)._non_persistent_buffers_set:
                self.transient.append(old.target)
        self.copied[old] = new
        return new


# --- messages ---------------------------------------------------------------------------------------------------

def _first_line(err: Exception) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()] or [type(err).__name__]
    return lines[0][:300]


@functools.cache
def _installed_homes() -> tuple[Path, ...]:
    """Where torch and netspec's own packages are installed."""
    import netspec
    import netspec.compiler

    return tuple(Path(m.__file__).resolve().parent for m in (torch, netspec, netspec.compiler))


def _ours_or_torchs(filename: str) -> bool:
    """Whether a traceback frame's file belongs to torch or to netspec's own packages (by where they are installed,
    not by a folder name: a user's checkout may well be called `netspec/`)."""
    path = Path(filename).resolve()
    return any(path.is_relative_to(home) for home in _installed_homes())


def _user_frame(err: Exception, prefix: str = "") -> str:
    """`file.py:LINE` of the deepest frame of the traceback outside torch and netspec (the user's code), with
    `prefix`; '' when there is none. For `backbone file fails to load`, a trailing ': '."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if not _ours_or_torchs(f.filename)]
    if not frames:
        return ""
    text = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}"
    return f"{prefix}{text}" if prefix else f"{text}: "
