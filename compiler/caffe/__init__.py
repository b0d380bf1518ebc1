"""Caffe interop: a .prototxt (V1 or V2, with its solver and .caffemodel) → a netspec spec and checkpoint.

textformat.py reads the protobuf text format (every field with its line), proto.py lists the fields Caffe's
messages have, layers.py maps layers to netspec nodes (one table), emit.py finds the backbone and branches and
writes the YAML, solver.py maps the solver to `train:`, weights.py reads .caffemodel blobs into a checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from netspec.project import atomic_write
from netspec.compiler import Compiled, compile_spec
from netspec.compiler.caffe.emit import Structure, structure, to_yaml
from netspec.compiler.caffe.layers import Net, read_net
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


def import_caffe(net_path: str | Path, out: str | Path, solver: str | Path | None = None,
                 weights: str | Path | None = None, checkpoint: str | Path | None = None,
                 input_shape: tuple[int, int, int] | None = None, train_size: int | None = None) -> Imported:
    """Write the spec `out` for a Caffe net (and with `weights`, a checkpoint: `checkpoint`, default `out`.pt).
    The spec is compiled before this returns: what it writes compiles."""
    net_path, out = Path(net_path), Path(out)
    net = read_net(parse_file(net_path, "NetParameter"), input_shape)
    shape = structure(net)
    train, comments = {}, []
    if solver is not None:
        train, comments = read_solver(parse_file(solver, "SolverParameter"), net.input.batch_size, train_size)
    elif net.input.batch_size:
        train = {"batch_size": net.input.batch_size}
    sources = [net_path.name] + [Path(p).name for p in (solver, weights) if p is not None]
    name = "".join(c if c.isalnum() or c in "_.-" else "_" for c in out.stem) or "imported"
    atomic_write(out, to_yaml(net, shape, name, sources, train, comments, []))
    compiled = compile_spec(out)
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
    return Imported(out, compiled, net, shape, ckpt, unused)
