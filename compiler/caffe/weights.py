"""Caffe's binary .caffemodel (protobuf wire format) → tensors by layer name → a netspec checkpoint.

The messages are declared here with only the fields needed, numbered as in BVLC caffe's caffe.proto
(NetParameter.layer = 100 and V1 `layers` = 2; LayerParameter name 1, type 2, blobs 7; V1LayerParameter name 4,
type 5, blobs 6; BlobProto num/channels/height/width 1-4, data 5, shape 7, double_data 8; BlobShape dim 1; Datum
channels 1, height 2, width 3, data 4, label 5, float_data 6, encoded 7 — the records of Caffe's LMDB databases).
Every other field of the file is skipped by the protobuf parser.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from netspec.errors import UserError
from netspec.project import atomic_write

F = descriptor_pb2.FieldDescriptorProto


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name="netspec_caffe_min.proto", package="netspec_caffe", syntax="proto2")

    def message(name: str, fields: list[tuple]) -> None:
        m = proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name, packed in fields:
            f = m.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                f.type_name = f".netspec_caffe.{type_name}"
            if packed:
                f.options.packed = True

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BlobShape", [("dim", 1, F.TYPE_INT64, rep, None, True)])
    message("BlobProto", [("shape", 7, F.TYPE_MESSAGE, opt, "BlobShape", False),
                          ("data", 5, F.TYPE_FLOAT, rep, None, True),
                          ("double_data", 8, F.TYPE_DOUBLE, rep, None, True),
                          ("num", 1, F.TYPE_INT64, opt, None, False), ("channels", 2, F.TYPE_INT64, opt, None, False),
                          ("height", 3, F.TYPE_INT64, opt, None, False), ("width", 4, F.TYPE_INT64, opt, None, False)])
    message("LayerParameter", [("name", 1, F.TYPE_STRING, opt, None, False),
                               ("type", 2, F.TYPE_STRING, opt, None, False),
                               ("blobs", 7, F.TYPE_MESSAGE, rep, "BlobProto", False)])
    message("V1LayerParameter", [("name", 4, F.TYPE_STRING, opt, None, False),
                                 ("type", 5, F.TYPE_INT32, opt, None, False),  # an enum on the wire: a varint
                                 ("blobs", 6, F.TYPE_MESSAGE, rep, "BlobProto", False)])
    message("Datum", [("channels", 1, F.TYPE_INT32, opt, None, False), ("height", 2, F.TYPE_INT32, opt, None, False),
                      ("width", 3, F.TYPE_INT32, opt, None, False), ("data", 4, F.TYPE_BYTES, opt, None, False),
                      ("label", 5, F.TYPE_INT32, opt, None, False),
                      ("float_data", 6, F.TYPE_FLOAT, rep, None, False),  # not packed in caffe.proto
                      ("encoded", 7, F.TYPE_BOOL, opt, None, False)])
    message("NetParameter", [("name", 1, F.TYPE_STRING, opt, None, False),
                             ("layer", 100, F.TYPE_MESSAGE, rep, "LayerParameter", False),
                             ("layers", 2, F.TYPE_MESSAGE, rep, "V1LayerParameter", False)])
    return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())


def message_class(name: str):
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"netspec_caffe.{name}"))


def blob_array(blob) -> np.ndarray:
    """A BlobProto's values with its shape (`shape.dim`, else the legacy num/channels/height/width)."""
    values = np.asarray(blob.data, dtype=np.float32) if len(blob.data) else np.asarray(blob.double_data, np.float64)
    if blob.HasField("shape"):
        shape = tuple(blob.shape.dim)
    else:
        shape = tuple(d for d in (blob.num, blob.channels, blob.height, blob.width))
    if int(np.prod(shape)) != values.size:
        shape = (values.size,)
    return values.astype(np.float32).reshape(shape)


def read_caffemodel(path: str | Path) -> dict[str, list[np.ndarray]]:
    """{layer name: [blob arrays]} of the layers that have blobs."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}", "give the path of a .caffemodel") from None
    net = message_class("NetParameter")()
    try:
        net.ParseFromString(data)
    except DecodeError as e:
        raise UserError(f"{path} is not a Caffe model (protobuf NetParameter): {e}",
                        "give the binary .caffemodel written by Caffe (not a .prototxt or an HDF5 snapshot)") from None
    out = {}
    for layer in list(net.layer) + list(net.layers):
        if len(layer.blobs):
            out[layer.name] = [blob_array(b) for b in layer.blobs]
    if not out:
        raise UserError(f"{path} holds no layer with weights", "give a trained .caffemodel")
    return out


# --- into a state_dict ------------------------------------------------------------------------

def _put(state: dict, key: str, array: np.ndarray, layer: str, what: str, path: Path) -> None:
    target = state[key]
    if array.size != target.numel():
        raise UserError(f"{path}: layer '{layer}' has a {what} blob of {array.size} values ({array.shape}), the "
                        f"imported spec needs {tuple(target.shape)}", "use the .caffemodel of this prototxt")
    state[key] = torch.from_numpy(np.ascontiguousarray(array)).reshape(target.shape).to(target.dtype)


def state_dict(module: torch.nn.Module, layers: list[tuple[str, str, str, dict]], blobs: dict[str, list[np.ndarray]],
               path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The module's state_dict filled from the Caffe blobs. `layers`: (qualified node name, op, Caffe layer name,
    extra) for every node with parameters; extra may name a folded `scale` layer or `transpose`. Returns the state
    and the Caffe layers with blobs that were not used."""
    state = {k: v.clone() for k, v in module.state_dict().items()}
    used, missing = set(), []
    for node, op, caffe, extra in layers:
        if caffe not in blobs:
            missing.append(caffe)
            continue
        used.add(caffe)
        b = blobs[caffe]
        if op in ("conv", "fc"):
            weight = b[0]
            if extra.get("transpose"):
                weight = weight.reshape(-1, state[f"{node}.weight"].shape[0]).T
            _put(state, f"{node}.weight", weight, caffe, "weight", path)
            if f"{node}.bias" in state:
                if len(b) < 2:
                    raise UserError(f"{path}: layer '{caffe}' has no bias blob", "the prototxt says bias_term: true")
                _put(state, f"{node}.bias", b[1], caffe, "bias", path)
        elif op == "prelu":
            _put(state, f"{node}.weight", b[0], caffe, "slope", path)
        elif op == "batchnorm":
            if len(b) < 3:
                raise UserError(f"{path}: BatchNorm '{caffe}' has {len(b)} blobs, not 3 (mean, variance, factor)",
                                "use the .caffemodel of this prototxt")
            factor = float(b[2].ravel()[0])
            scale = 0.0 if factor == 0 else 1.0 / factor
            _put(state, f"{node}.running_mean", b[0] * scale, caffe, "mean", path)
            _put(state, f"{node}.running_var", b[1] * scale, caffe, "variance", path)
            scale_layer = extra.get("scale")
            if scale_layer:
                if scale_layer not in blobs:
                    missing.append(scale_layer)
                    continue
                used.add(scale_layer)
                s = blobs[scale_layer]
                _put(state, f"{node}.weight", s[0], scale_layer, "scale", path)
                if len(s) > 1:
                    _put(state, f"{node}.bias", s[1], scale_layer, "bias", path)
                else:
                    state[f"{node}.bias"].zero_()
    if missing:
        raise UserError(f"{path} has no weights for layer(s) {', '.join(missing)}",
                        "use the .caffemodel trained with this prototxt")
    return state, sorted(set(blobs) - used)


def write_checkpoint(path: str | Path, model: dict[str, torch.Tensor], spec_name: str, spec_hash: str,
                     source: str) -> None:
    """A checkpoint as `netspec train` writes one (model, epoch, step, best, spec_name, spec_hash), epoch 0;
    `netspec eval`/`export --checkpoint` and `init.from` read it."""
    state = {"model": model, "epoch": 0, "step": 0, "best": -1.0, "spec_name": spec_name, "spec_hash": spec_hash,
             "source": source}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(Path(path), buffer.getvalue())
