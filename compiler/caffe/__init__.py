"""Caffe interop: a .prototxt (V1 or V2, with its solver and .caffemodel) → a netspec spec and checkpoint.

textformat.py reads the protobuf text format (every field with its line), proto.py lists the fields Caffe's
messages have, layers.py maps layers to netspec nodes (one table), emit.py finds the backbone and branches and
writes the YAML, solver.py maps the solver to `train:`, weights.py reads .caffemodel blobs into a checkpoint, data.py and
database.py turn the Data layers and their LMDB databases into `data:`.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from netspec.errors import Pos, SpecErrors, UserError
from netspec.project import atomic_write
from netspec.compiler import Compiled, compile_spec
from netspec.compiler.caffe.data import DataPlan, plan_data
from netspec.compiler.caffe.emit import Structure, structure, to_yaml
from netspec.compiler.caffe.layers import CaffeError, Net, read_net
from netspec.compiler.caffe.solver import read_solver
from netspec.compiler.caffe.textformat import parse_file
from netspec.compiler.caffe.weights import read_caffemodel, state_dict, write_checkpoint


@dataclass
class Imported:
    spec_path: Path
    compiled: Compiled
    net: Net
    structure: Structure
    checkpoint: Path | None
    unused_blobs: list[str]
    data: DataPlan


def import_caffe(net_path: str | Path, out: str | Path, solver: str | Path | None = None,
                 weights: str | Path | None = None, checkpoint: str | Path | None = None,
                 input_shape: tuple[int, int, int] | None = None, train_size: int | None = None) -> Imported:
    """Write the spec `out` for a Caffe net (and with `weights`, a checkpoint: `checkpoint`, default `out`.pt).
    The spec is compiled before this returns: what it writes compiles."""
    net_path, out = Path(net_path), Path(out)
    message = parse_file(net_path, "NetParameter")
    plan = plan_data(message, net_path)
    net = read_net(message, input_shape or plan.shape)
    shape = structure(net)
    train, comments = {}, []
    if solver is not None:
        train, comments = read_solver(parse_file(solver, "SolverParameter"), net.input.batch_size,
                                      train_size or plan.train_size)
    elif net.input.batch_size:
        train = {"batch_size": net.input.batch_size}
    if plan.eval_batch_size:
        train["eval_batch_size"] = plan.eval_batch_size
    sources = [net_path.name] + [Path(p).name for p in (solver, weights) if p is not None]
    name = "".join(c if c.isalnum() or c in "_.-" else "_" for c in out.stem) or "imported"
    text, origin = to_yaml(net, shape, name, sources, train, comments, [], plan.section, plan.comments)
    compiled = _compile(text, out, origin, Pos(str(net_path), 0), Pos(str(solver or net_path), 0))
    ckpt, unused = None, []
    if weights is not None:
        layers = []
        for head in shape.heads:
            prefix = "" if head.name == "main" else head.name + "."
            for node in (shape.backbone if head.name == "main" else head.nodes):
                if node.spec["op"] in ("conv", "fc", "batchnorm", "prelu"):
                    extra = {"scale": node.scale_layer,
                             "transpose": any("transpose" in n for n in node.notes)}
                    layers.append((prefix + node.name, node.spec["op"], node.caffe, extra))
        model, unused = state_dict(compiled.module, layers, read_caffemodel(weights), Path(weights))
        ckpt = Path(checkpoint) if checkpoint else out.with_suffix(".pt")
        write_checkpoint(ckpt, model, compiled.spec.name, compiled.spec_hash, f"caffe:{Path(weights).name}")
    return Imported(out, compiled, net, shape, ckpt, unused, plan)


def _compile(text: str, out: Path, origin: dict[int, Pos], head: Pos, tail: Pos) -> Compiled:
    """Compile the generated spec before it is written to `out`: an error in it is reported at the prototxt
    line the spec's line came from (`origin`, else the line before it that has one; lines before the first,
    at `head`; after the last — the train: section — at `tail`, the solver), and `out` is left as it was."""
    trial = out.with_name(f".{out.name}.importing")
    atomic_write(trial, text)
    try:
        compiled = compile_spec(trial)
    except UserError as err:
        trial.unlink(missing_ok=True)
        raise _at_prototxt(err, trial, origin, head, tail) from None
    except BaseException:
        trial.unlink(missing_ok=True)
        raise
    os.replace(trial, out)
    return dataclasses.replace(compiled, path=out)


def _at_prototxt(err: UserError, spec: Path, origin: dict[int, Pos], head: Pos, tail: Pos) -> UserError:
    if isinstance(err, SpecErrors):
        return SpecErrors([_at_prototxt(e, spec, origin, head, tail) for e in err.errors])
    if err.pos is not None and Path(err.pos.file) != spec:
        return err
    line = err.pos.line if err.pos else 0
    before = [n for n in origin if n <= line]
    if not before:
        pos = head
    elif line > max(origin):
        pos = tail
    else:
        pos = origin[max(before)]
    return CaffeError(err.what, err.fix, pos)
