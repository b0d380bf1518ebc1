"""data.source: lmdb — Caffe's LMDB databases of Datum records (made here with the `lmdb` package), imported
from a LeNet-style train_val and trained with no edits; pixels equal a numpy re-implementation of Caffe's
DataTransformer; streamed, sharded over 2 gloo ranks, resumed mid-epoch bitwise."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from netspec import cli
from netspec.compiler import compile_spec
from netspec.compiler.caffe.database import datum_pixels, read_mean
from netspec.compiler.caffe.weights import message_class
from netspec.runtime.data.caffe_lmdb import DatumRecords, index_lmdb, lmdb_batches
from netspec.runtime.data.stream import load_data, stream_batches
from netspec.runtime.data.transforms import rng

SIZE, CROP, CLASSES = 12, 8, 3
SCALE = 0.00390625


def datum(pixels: np.ndarray | None = None, label: int = 0, encoded: bytes | None = None) -> bytes:
    d = message_class("Datum")(label=label)
    if encoded is not None:
        d.encoded, d.data = True, encoded
    else:
        d.channels, d.height, d.width = pixels.shape
        d.data = np.ascontiguousarray(pixels, np.uint8).tobytes()
    return d.SerializeToString()


def write_lmdb(path: Path, values: list[bytes]) -> None:
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i, value in enumerate(values):
            txn.put(f"{i:08d}_img{i}.png".encode(), value)  # convert_imageset's keys
    env.close()


def write_mean(path: Path, mean: np.ndarray) -> None:
    blob = message_class("BlobProto")(num=1, channels=mean.shape[0], height=mean.shape[1], width=mean.shape[2])
    blob.data.extend(mean.ravel().tolist())
    path.write_bytes(blob.SerializeToString())


def png(bgr: np.ndarray) -> bytes:
    """A colour PNG of (C, H, W) BGR pixels (as Caffe's cv::imencode would write them)."""
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(bgr[::-1].transpose(1, 2, 0))).save(out, "PNG")
    return out.getvalue()


def records(n: int, seed: int) -> tuple[list[np.ndarray], list[int]]:
    gen = np.random.default_rng(seed)
    return [gen.integers(0, 256, (3, SIZE, SIZE), np.uint8) for _ in range(n)], [i % CLASSES for i in range(n)]


TRAIN_VAL = """\
name: "LeNet-like"
layer {{
  name: "mnist" type: "Data" top: "data" top: "label"
  include {{ phase: TRAIN }}
  transform_param {{ scale: 0.00390625 crop_size: 8 mirror: true mean_file: "mean.binaryproto" }}
  data_param {{ source: "{train}" batch_size: 8 backend: LMDB }}
}}
layer {{
  name: "mnist" type: "Data" top: "data" top: "label"
  include {{ phase: TEST }}
  transform_param {{ scale: 0.00390625 crop_size: 8 mean_file: "mean.binaryproto" }}
  data_param {{ source: "{test}" batch_size: 10 backend: LMDB }}
}}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param {{ lr_mult: 1 }} param {{ lr_mult: 2 }}
  convolution_param {{ num_output: 4 kernel_size: 3 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1" inner_product_param {{ num_output: 3 }} }}
layer {{ name: "accuracy" type: "Accuracy" bottom: "ip1" bottom: "label" top: "accuracy" include {{ phase: TEST }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }}
"""
SOLVER = 'net: "train_val.prototxt"\nbase_lr: 0.01\nmomentum: 0.9\nlr_policy: "step"\ngamma: 0.1\nstepsize: 4\n' \
         'max_iter: 8\nrandom_seed: 5\n'


@pytest.fixture
def caffe_dir(tmp_path, monkeypatch):
    """A Caffe working directory: train (32 raw records) and test (20, half PNG-encoded) LMDBs, the mean
    image, the train_val and the solver; the tests run in it, as Caffe would."""
    monkeypatch.chdir(tmp_path)
    xs, ys = records(32, 0)
    write_lmdb(tmp_path / "train_lmdb", [datum(x, y) for x, y in zip(xs, ys)])
    vx, vy = records(20, 1)
    write_lmdb(tmp_path / "test_lmdb", [datum(x, y) if i % 2 else datum(label=y, encoded=png(x))
                                        for i, (x, y) in enumerate(zip(vx, vy))])
    mean = np.mean(xs, axis=0).astype(np.float32)
    write_mean(tmp_path / "mean.binaryproto", mean)
    (tmp_path / "train_val.prototxt").write_text(TRAIN_VAL.format(train="train_lmdb", test="test_lmdb"))
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    return tmp_path, xs, ys, vx, vy, mean


def imported(caffe_dir) -> Path:
    root = caffe_dir[0]
    assert cli.main(["import-caffe", "train_val.prototxt", "--solver", "solver.prototxt", "-o", "lenet.yaml"]) == 0
    return root / "lenet.yaml"


def caffe_transform(datum_: np.ndarray, mean: np.ndarray, crop: int, h_off: int, w_off: int, mirror: bool,
                    scale: float) -> np.ndarray:
    """Caffe's DataTransformer<Dtype>::Transform(const Datum&, Dtype*) (data_transformer.cpp), loop for loop."""
    channels, height, width = datum_.shape
    flat, mean_flat = datum_.ravel(), mean.ravel()
    out = np.zeros(channels * crop * crop, np.float32)
    for c in range(channels):
        for h in range(crop):
            for w in range(crop):
                data_index = (c * height + h_off + h) * width + w_off + w
                top_index = (c * crop + h) * crop + ((crop - 1 - w) if mirror else w)
                out[top_index] = (np.float32(flat[data_index]) - mean_flat[data_index]) * np.float32(scale)
    return out.reshape(channels, crop, crop)


def test_import_writes_data_from_both_phases_and_the_databases(caffe_dir):
    spec = yaml.safe_load(imported(caffe_dir).read_text())
    assert spec["input"]["shape"] == [3, CROP, CROP]  # the first Datum's channels, crop_size
    assert spec["data"] == {"source": "lmdb", "path": "train_lmdb", "test_path": "test_lmdb", "crop": "caffe",
                            "mean_file": "mean.binaryproto", "augment": {"flip": True}}
    train = spec["train"]
    # 32 records / batch 8 = 4 iterations an epoch: max_iter 8 → 2 epochs, stepsize 4 → 1 epoch, no --train-size
    assert train["epochs"] == 2 and train["lr_schedule"] == {"type": "step", "step_size": 1, "gamma": 0.1}
    assert train["batch_size"] == 8 and train["eval_batch_size"] == 10


def test_pixels_equal_caffes_data_transformer(caffe_dir):
    root, xs, ys, vx, vy, mean = caffe_dir
    compiled = compile_spec(imported(caffe_dir), ["data.workers=0"])
    spec = compiled.spec
    data = load_data(spec, progress=None)
    assert np.array_equal(read_mean(root / "mean.binaryproto"), mean)
    train, _, test = stream_batches(spec, data, "cpu")
    flips = 0
    for split, batches, pixels, labels in (("train", train, xs, ys), ("test", test, vx, vy)):
        batches.set_epoch(3)
        for indices, (x, y) in zip(batches.indices(), batches):
            assert y.tolist() == [labels[i] for i in indices]
            for row, i in enumerate(indices):
                transform = batches.dataset.transform
                top, left, mirror = transform.window(SIZE, SIZE, rng(spec.train.seed, 3, i) if split == "train"
                                                     else None)
                flips += mirror
                want = caffe_transform(pixels[i], mean, CROP, top, left, mirror, SCALE)
                np.testing.assert_allclose(x[row].numpy(), want, rtol=1e-6, atol=1e-7)
    assert 0 < flips < len(xs)  # some training crops mirrored, not all; none in test
    centre = (SIZE - CROP) // 2
    assert test.dataset.transform.window(SIZE, SIZE, None) == (centre, centre, False)


def test_encoded_records_decode_to_bgr_like_caffes_opencv(tmp_path):
    bgr = np.zeros((3, 4, 5), np.uint8)
    bgr[0], bgr[1], bgr[2] = 10, 20, 200  # blue, green, red planes
    d = message_class("Datum").FromString(datum(label=1, encoded=png(bgr)))
    assert np.array_equal(datum_pixels(d), bgr)  # a red image: channel 2 is the bright one, as in Caffe
    rgb_file = io.BytesIO()
    Image.new("RGB", (5, 4), (200, 20, 10)).save(rgb_file, "PNG")  # the same red, written by an RGB tool
    assert np.array_equal(datum_pixels(message_class("Datum")(encoded=True, data=rgb_file.getvalue())), bgr)
    gray = io.BytesIO()
    Image.new("L", (5, 4), 77).save(gray, "PNG")
    assert datum_pixels(message_class("Datum")(encoded=True, data=gray.getvalue())).shape == (1, 4, 5)


def test_the_imported_train_val_trains_with_no_edits(caffe_dir, capsys):
    spec = imported(caffe_dir)
    assert cli.main(["train", str(spec)]) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "for 2 epochs" in err and "Traceback" not in err


def test_resume_mid_epoch_gives_the_same_batches_bitwise(caffe_dir):
    spec = compile_spec(imported(caffe_dir), ["data.workers=2"]).spec
    data = load_data(spec, progress=None)
    full, _, _ = stream_batches(spec, data, "cpu")
    full.set_epoch(1)
    everything = list(full)
    resumed, _, _ = stream_batches(spec, data, "cpu")
    resumed.set_epoch(1, skip=2)
    rest = list(resumed)
    assert len(everything) == 4 and len(rest) == 2
    for (xa, ya), (xb, yb) in zip(everything[2:], rest):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    full.set_epoch(2)
    assert not torch.equal(next(iter(full))[0], everything[0][0])  # another epoch: another order and crops


def test_the_reader_holds_keys_not_records(caffe_dir):
    spec = compile_spec(imported(caffe_dir)).spec
    data = index_lmdb(spec, progress=None)
    assert len(data.train_files) == 32 and len(data.test_files) == 20 and data.record_shape == (3, SIZE, SIZE)
    train, val, _ = lmdb_batches(spec, data, "cpu")
    assert isinstance(train.dataset, DatumRecords) and train.workers == 2 and val is None
    import pickle
    assert len(pickle.dumps(train.dataset)) < 4096 + 60 * 32  # keys, the transform and the mean image only


RANK_SCRIPT = """\
import json, sys
import torch, torch.distributed as dist
from netspec.compiler import compile_spec
from netspec.runtime.data.stream import load_data, stream_batches

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
spec = compile_spec(sys.argv[1], ["data.workers=1"]).spec
train, _, _ = stream_batches(spec, load_data(spec, progress=None), "cpu", rank, world)
train.set_epoch(1)
got = [{"indices": i, "x": x.flatten(1).tolist()} for i, (x, _) in zip(train.indices(), train)]
gathered = [None] * world
dist.all_gather_object(gathered, got)
if rank == 0:
    json.dump(gathered, open(sys.argv[2], "w"))
dist.destroy_process_group()
"""


def test_two_gloo_ranks_read_disjoint_shards_of_the_one_process_batches(caffe_dir):
    root = caffe_dir[0]
    spec_path = imported(caffe_dir)
    (root / "ranks.py").write_text(RANK_SCRIPT)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "ranks.py", str(spec_path), "ranks.json"], cwd=root, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = json.loads((root / "ranks.json").read_text())
    spec = compile_spec(spec_path, ["data.workers=0"]).spec
    one, _, _ = stream_batches(spec, load_data(spec, progress=None), "cpu")
    one.set_epoch(1)
    by_index = {}
    for indices, (x, _) in zip(one.indices(), one):
        by_index.update({i: row for i, row in zip(indices, x.flatten(1).tolist())})
    seen = [set(), set()]
    for b, batch in enumerate(one.indices()):
        assert sorted(batch) == sorted(ranks[0][b]["indices"] + ranks[1][b]["indices"])
        for r in range(2):
            for i, row in zip(ranks[r][b]["indices"], ranks[r][b]["x"]):
                assert row == by_index[i]  # the same crop and mirror on whichever rank reads the record
                seen[r].add(i)
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 32


def test_commands_that_read_the_set_whole_get_the_centre_crops(caffe_dir):
    from netspec.errors import UserError
    from netspec.runtime.data import load_dataset

    root, xs, ys, vx, vy, _ = caffe_dir
    spec = compile_spec(imported(caffe_dir), ["data.mean_file=null"]).spec
    data = load_dataset(spec.data, spec.input.shape)
    c = (SIZE - CROP) // 2
    assert data.train_x.shape == (32, 3, CROP, CROP) and data.test_y.tolist() == vy
    assert np.array_equal(data.train_x.numpy(), np.stack(xs)[:, :, c:c + CROP, c:c + CROP])
    assert np.array_equal(data.test_x.numpy(), np.stack(vx)[:, :, c:c + CROP, c:c + CROP])  # PNG records too
    with pytest.raises(UserError, match="mean_file"):
        load_dataset(compile_spec(root / "lenet.yaml").spec.data, (3, CROP, CROP))


def test_the_command_says_where_the_data_came_from(caffe_dir, capsys):
    imported(caffe_dir)
    assert "data: source lmdb, train_lmdb (32 records) and test_lmdb; input 3x8x8 from its first record" in \
        capsys.readouterr().out


@pytest.mark.parametrize("backend", ["", "backend: LEVELDB "])
def test_a_leveldb_database_is_one_line_naming_the_backend(caffe_dir, capsys, backend):
    root = caffe_dir[0]
    (root / "train_leveldb").mkdir()
    (root / "train_leveldb" / "CURRENT").write_text("MANIFEST-000001\n")
    (root / "train_leveldb" / "LOCK").write_text("")
    text = TRAIN_VAL.format(train="train_leveldb", test="test_lmdb").replace("batch_size: 8 backend: LMDB",
                                                                              f"batch_size: 8 {backend}")
    (root / "train_val.prototxt").write_text(text)
    assert cli.main(["import-caffe", "train_val.prototxt", "-o", "x.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("train_val.prototxt:6: train_leveldb is a LevelDB database") and "LMDB" in err
    assert len(err.strip().splitlines()) == 1


def new_test_set(root: Path, values: list[bytes]) -> None:
    import shutil
    shutil.rmtree(root / "test_lmdb")
    write_lmdb(root / "test_lmdb", values)


@pytest.mark.parametrize("damage, message", [
    (lambda root: (root / "mean.binaryproto").write_bytes(b"\x08\x01"), "not a 1×C×H×W mean image"),
    (lambda root: new_test_set(root, [b"\xff\xff"]), "is not a Caffe Datum record"),
    (lambda root: new_test_set(root, [datum(np.zeros((3, 6, 6), np.uint8))]), "are 3×6×6"),
    (lambda root: new_test_set(root, [datum(np.zeros((1, SIZE, SIZE), np.uint8))]), "are 1×12×12"),
    (lambda root: new_test_set(root, [datum(np.zeros((3, SIZE, SIZE), np.uint8), label=7)]), "label 7"),
], ids=["mean file", "not a Datum", "smaller", "channels", "label"])
def test_bad_databases_are_one_line_errors_at_train(caffe_dir, capsys, damage, message):
    spec = imported(caffe_dir)
    damage(caffe_dir[0])
    capsys.readouterr()
    assert cli.main(["train", str(spec)]) == 2
    err = capsys.readouterr().err
    assert message in err.strip().splitlines()[-1] and "Traceback" not in err, err  # (a run that started says so)


def test_float_records_and_v1_data_layers(caffe_dir):
    root = caffe_dir[0]
    values = np.arange(3 * SIZE * SIZE, dtype=np.float32).reshape(3, SIZE, SIZE) / 7
    d = message_class("Datum")(channels=3, height=SIZE, width=SIZE, label=2)
    d.float_data.extend(values.ravel().tolist())
    assert np.array_equal(datum_pixels(message_class("Datum").FromString(d.SerializeToString())), values)
    v1 = TRAIN_VAL.format(train="train_lmdb", test="test_lmdb")
    v1 = v1.replace('layer {\n  name: "mnist" type: "Data"', 'layers {\n  name: "mnist" type: DATA')
    v1 = v1.split('layer { name: "conv1"')[0]
    v1 += ('layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1" convolution_param { num_output: 4 '
           'kernel_size: 3 } }\nlayers { name: "ip1" type: INNER_PRODUCT bottom: "conv1" top: "ip1" '
           'inner_product_param { num_output: 3 } }\nlayers { name: "loss" type: SOFTMAX_LOSS bottom: "ip1" '
           'bottom: "label" top: "loss" }\n')
    (root / "v1.prototxt").write_text(v1)
    assert cli.main(["import-caffe", "v1.prototxt", "-o", "v1.yaml"]) == 0
    spec = yaml.safe_load((root / "v1.yaml").read_text())
    assert spec["input"]["shape"] == [3, CROP, CROP] and spec["data"]["test_path"] == "test_lmdb"


def test_a_validation_split_is_held_out_of_the_training_database(caffe_dir):
    root, xs, ys, *_ = caffe_dir
    spec = compile_spec(imported(caffe_dir), ["data.val_split=8", "data.workers=0"]).spec
    data = load_data(spec, progress=None)
    assert len(data.val_files) == 8 and len(data.train_files) == 24
    assert not set(data.val_files.tolist()) & set(data.train_files.tolist())
    train, val, test = stream_batches(spec, data, "cpu")
    keys = [f"{i:08d}_img{i}.png".encode() for i in range(32)]
    c = (SIZE - CROP) // 2
    for indices, (x, y) in zip(val.indices(), val):  # centre crops of the held-out training records
        for row, i in enumerate(indices):
            k = keys.index(data.val_files[i])
            assert y[row] == ys[k]
            want = caffe_transform(xs[k], data.mean, CROP, c, c, False, SCALE)
            np.testing.assert_allclose(x[row].numpy(), want, rtol=1e-6, atol=1e-7)
