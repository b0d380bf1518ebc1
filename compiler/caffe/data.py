"""A train_val's Data layers → the spec's `data:` section (source lmdb), its input shape and epoch length.

The TRAIN and TEST Data layers name their databases (`data_param.source`, relative to where Caffe ran: tried
as written, then next to the prototxt). When the TRAIN database is there, its first record gives the input's
channels and size (crop_size when the layer crops) and its entry count the epoch's length (the solver's
iterations become epochs without --train-size). Otherwise the spec says where Caffe read, in comments, and the
input's shape must come from --input-shape.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netspec.compiler.caffe.database import DatabaseError, backend_of, first_datum, leveldb_error
from netspec.compiler.caffe.layers import CaffeError, DataParams, data_layer, data_params
from netspec.compiler.caffe.textformat import Message


@dataclass
class DataPlan:
    shape: tuple[int, int, int] | None = None  # the input's (C, H, W) from the TRAIN database
    train_size: int | None = None  # records in the TRAIN database
    eval_batch_size: int | None = None  # the TEST Data layer's batch_size
    section: dict[str, Any] = field(default_factory=dict)  # the spec's data:
    comments: list[str] = field(default_factory=list)


def locate(source: str, net_path: Path) -> Path | None:
    """Where a Data layer's database is: the path as written (Caffe's working directory), else next to the
    prototxt; None when neither exists."""
    for path in (Path(source), net_path.parent / source):
        if path.exists():
            return path
    return None


def _database(d: DataParams, net_path: Path) -> Path | None:
    """The database a Data layer reads, checked to be an LMDB one (a LevelDB one is a one-line error)."""
    path = locate(d.source, net_path) if d.source else None
    if path is None:
        return None
    actual = backend_of(path)
    if actual == "leveldb":
        raise leveldb_error(path, d.pos("backend") if d.backend else d.pos("source"))
    if actual is None:
        raise DatabaseError(f"{path} (data layer '{d.layer.name}') is not an LMDB database: it has no data.mdb",
                            "point source at the LMDB directory Caffe's convert_imageset wrote", d.pos("source"))
    return path


def plan_data(net: Message, net_path: Path) -> DataPlan:
    """The data section for a net whose TRAIN data layer is a Data layer with a readable LMDB database."""
    plan = DataPlan()
    train_layer = data_layer(net, "TRAIN")
    if train_layer is None or train_layer.type != "Data":
        return plan
    train = data_params(train_layer)
    path = _database(train, net_path)
    if path is None:
        return plan
    (c, h, w), plan.train_size, _ = first_datum(path, train.pos("source"))
    if train.crop and (train.crop > h or train.crop > w):
        raise CaffeError(f"data layer '{train_layer.name}' crops {train.crop}x{train.crop} from records of {h}x{w} "
                         f"({path})", "give a crop_size at most the records' size", train.pos("crop_size"))
    plan.shape = (c, train.crop, train.crop) if train.crop else (c, h, w)
    section: dict[str, Any] = {"source": "lmdb", "path": str(path)}
    test_layer = data_layer(net, "TEST")
    test = data_params(test_layer) if test_layer is not None and test_layer.type == "Data" else None
    test_path = _database(test, net_path) if test else None
    if test_path is not None:
        section["test_path"] = str(test_path)
        plan.eval_batch_size = test.batch_size
    else:
        plan.comments.append("no TEST Data layer database found: set data.test_path to the test set's LMDB")
    if train.crop and (train.crop, train.crop) != (h, w):
        section["crop"] = "caffe"
    if train.mean_file:
        mean = locate(train.mean_file, net_path)
        section["mean_file"] = str(mean or train.mean_file)
        if mean is None:
            plan.comments.append(f"the mean image {train.mean_file} is not here: copy it, or fix data.mean_file")
    if train.mirror:
        section["augment"] = {"flip": True}
    plan.section = section
    return plan
