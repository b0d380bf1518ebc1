"""`data.source: synthetic`: random images and labels of the spec's shape and classes (Caffe's DummyData), the same
every run, sized by data.train_limit / data.test_limit; every missing-data error points at it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from netspec.cli import main
from netspec.compiler.parse import parse
from netspec.compiler.validate import validate
from netspec.data_spec import SOURCES, SYNTHETIC_SIZES, DataSpec
from netspec.errors import UserError
from netspec.limits import Limits
from netspec.runtime.data import load_dataset
from netspec.runtime.data.stream import load_data
from conftest import MINI, SPECS, write

SHIPPED = sorted(SPECS.glob("*.yaml"))


def _spec(path, *overrides):
    return validate(parse(path, ["data.source=synthetic", *overrides])[0])


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_spec_runs_on_synthetic_data(path):
    """Whatever the spec's own data section (paths, crops, resizes), synthetic data has its input shape and classes."""
    spec = _spec(path, "data.train_limit=6", "data.test_limit=3")
    data = load_data(spec, progress=None)
    assert tuple(data.train_x.shape) == (6, *spec.input.shape) and tuple(data.test_x.shape) == (3, *spec.input.shape)
    assert data.train_x.dtype == torch.uint8 and len(data.classes) == spec.classes
    for labels in (data.train_y, data.test_y):
        assert labels.dtype == torch.int64 and 0 <= int(labels.min()) and int(labels.max()) < spec.classes


@pytest.mark.parametrize("limits,sizes", [((None, None), SYNTHETIC_SIZES), ((10, None), (10, SYNTHETIC_SIZES[1])),
                                          ((None, 7), (SYNTHETIC_SIZES[0], 7)), ((1, 1), (1, 1))])
def test_sizes_follow_the_limits(limits, sizes):
    spec = DataSpec(source="synthetic", train_limit=limits[0], test_limit=limits[1], classes=["a", "b", "c"])
    data = load_dataset(spec, (2, 5, 4))
    assert (len(data.train_y), len(data.test_y)) == sizes and data.classes == ["a", "b", "c"]


def test_the_same_every_run_and_random_within_one(tmp_path):
    path = write(tmp_path, MINI)
    one, two = (load_dataset(_spec(path).data, (1, 8, 8)) for _ in range(2))
    assert torch.equal(one.train_x, two.train_x) and torch.equal(one.test_y, two.test_y)
    assert not torch.equal(one.train_x[:64], one.test_x)  # the test split is not a copy of the training one
    counts = np.bincount(one.train_y.numpy(), minlength=3)
    assert counts.min() > SYNTHETIC_SIZES[0] / 3 / 2  # every class drawn, about evenly
    assert 100 < float(one.train_x.float().mean()) < 155  # uniform over 0..255


def test_bounded_like_every_data_set():
    with pytest.raises(UserError, match="NETSPEC_MAX_DATA_BYTES"):
        load_dataset(DataSpec(source="synthetic", classes=["a", "b"]), (3, 32, 32), Limits(data_bytes=1000))


def test_without_classes_it_says_what_it_needs():
    with pytest.raises(UserError, match="number of classes"):
        load_dataset(DataSpec(source="synthetic"), (1, 4, 4))


FILE_SOURCES = [s for s in SOURCES if s != "synthetic"]


@pytest.mark.parametrize("source", FILE_SOURCES)
def test_missing_data_points_at_synthetic_data(tmp_path, source):
    spec = DataSpec(source=source, path=str(tmp_path / "nope"))
    with pytest.raises(UserError) as err:
        load_data(type("S", (), {"data": spec, "input": type("I", (), {"shape": (3, 32, 32)}), "classes": 3}),
                  progress=None)
    assert "data.source=synthetic" in err.value.fix
    assert ("_fmnist.yaml" in err.value.fix) is (source != "fashion-mnist")


def test_a_training_run_on_synthetic_data(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, MINI)
    assert main(["train", str(path), "data.source=synthetic", "train.epochs=1", "data.train_limit=16",
                 "data.test_limit=8", "train.batch_size=8"]) == 0
    assert "exit  depth" in capsys.readouterr().out  # the per-exit table closes the run
