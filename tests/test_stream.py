"""The streaming image pipeline (runtime/data/stream.py, transforms.py): layouts and class checks, crops,
DDP sharding and mid-epoch resume, and a CNDS-8-like sibling trained from 2000 generated PNG files with 2 workers."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from netspec import cli
from netspec.compiler import compile_spec
from netspec.data_spec import DataSpec
from netspec.errors import UserError
from netspec.runtime.data import Batches
from netspec.runtime.distributed import Context
from netspec.runtime.train import make_batches
from netspec.runtime.data.stream import ImageFiles, StreamBatches, StreamData, index_imagefolder, load_data
from netspec.runtime.data.transforms import Transform, random_resized_box, rng

SIBLING = """\
name: cnds8_sibling
input: {{shape: [3, 32, 32], mean: [0.485, 0.456, 0.406], std: [0.25, 0.25, 0.25]}}
classes: {classes}
nodes:
  - {{name: conv1, op: conv, out: 8, kernel: 3, stride: 2, pad: 1}}
  - {{name: relu1, op: relu}}
  - {{name: pool1, op: maxpool, kernel: 2, stride: 2, ceil: true}}
  - {{name: conv3_2, op: conv, out: 16, kernel: 3, pad: 1}}
  - {{name: relu3_2, op: relu}}
  - {{name: pool3, op: maxpool, kernel: 2, stride: 2, ceil: true}}
  - {{name: fc6, op: fc, out: 32}}
  - {{name: relu6, op: relu}}
  - {{name: fc8, op: fc, out: "${{classes}}"}}
branches:
  aux1:
    from: relu3_2
    nodes:
      - {{name: pool, op: avgpool, kernel: 2, stride: 2}}
      - {{name: fc3, op: fc, out: "${{classes}}"}}
losses:
  main: {{head: main}}
  aux1: {{head: aux1, weight: 0.3, schedule: cnds}}
data: {{source: imagefolder, path: {data}, resize: 36, crop: caffe, workers: 2}}
train:
  epochs: 1
  max_steps: 4
  batch_size: 32
  eval_batch_size: 64
  optimizer: {{type: sgd, lr: 0.01, momentum: 0.9}}
  out: {out}
"""


def write_folder(root: Path, classes: int = 10, per_class: int = 200, size=(40, 40), suffix=".png") -> Path:
    """root/<class>/i.png: each class a colour, plus noise."""
    gen = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"class{c:02d}"
        d.mkdir(parents=True)
        colour = np.array([(37 * c) % 256, (91 * c) % 256, (151 * c) % 256], np.uint8)
        for i in range(per_class):
            a = (colour + gen.integers(0, 40, (*size, 3))).astype(np.uint8)
            Image.fromarray(a).save(d / f"{i:04d}{suffix}", compress_level=0) if suffix == ".png" else \
                Image.fromarray(a).save(d / f"{i:04d}{suffix}")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("stream") / "images")


def spec_for(tmp_path: Path, data: Path, classes: int = 10, extra: str = "") -> Path:
    path = tmp_path / "sibling.yaml"
    path.write_text(SIBLING.format(classes=classes, data=data, out=tmp_path / "runs") + extra)
    return path


# ---------------------------------------------------------------- schema


def test_schema_bounds_and_needs():
    assert DataSpec(source="imagefolder", crop="caffe", resize=256).stream == "auto"
    assert DataSpec(source="imagefolder", resize=[256, 300], crop="random_resized").resize == [256, 300]
    for bad, match in [({"workers": -1}, "greater than or equal"), ({"workers": 65}, "less than or equal"),
                       ({"source": "imagefolder", "resize": 0, "crop": "caffe"}, "1..8192"),
                       ({"source": "imagefolder", "resize": [1, 2, 3], "crop": "caffe"}, "shorter side or"),
                       ({"source": "imagefolder", "crop": "centre"}, "caffe"),
                       ({"source": "cifar10", "stream": True}, "imagefolder"),
                       ({"source": "cifar10", "crop": "caffe"}, "streaming pipeline"),
                       ({"source": "imagefolder", "stream": False, "crop": "caffe"}, "streaming pipeline")]:
        with pytest.raises(ValidationError, match=match):
            DataSpec.model_validate({"source": "imagefolder", **bad})


# ---------------------------------------------------------------- layouts and class counts


def test_index_layouts_sorted_paths_only(folder, tmp_path):
    spec = DataSpec(source="imagefolder", path=str(folder))
    data = index_imagefolder(spec, folder, progress=None)
    assert (len(data.train_files), len(data.test_files)) == (1800, 200)  # root/<class>/* split 90/10
    assert data.classes == [f"class{c:02d}" for c in range(10)]
    assert list(data.train_files) == sorted(data.train_files) and data.train_files[0] == b"class00/0000.png"
    assert data.train_y.bincount().tolist() == [int(np.char.startswith(data.train_files, f"class{c:02d}/".encode()).sum())
                                                for c in range(10)]
    # train/ and test/
    write_folder(tmp_path / "tt" / "train", classes=3, per_class=4)
    write_folder(tmp_path / "tt" / "test", classes=3, per_class=2)
    tt = index_imagefolder(spec, tmp_path / "tt", progress=None)
    assert (len(tt.train_files), len(tt.test_files), tt.classes) == (12, 6, ["class00", "class01", "class02"])


def run_cli(args, capsys) -> tuple[int, str]:
    code = cli.main(args)
    return code, capsys.readouterr().err


def test_class_count_and_layout_errors_are_one_line(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(["train", str(spec_for(tmp_path, folder, classes=1000))], capsys)
    line = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"{folder} has 10 class directories but the spec has classes: 1000" in line
    assert "set classes: 10" in line and "root/train/<class>/*" in line and "sibling.yaml:" in line
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "a.png")  # images without class directories
    code, err = run_cli(["train", str(spec_for(tmp_path, flat))], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"no class directories in {flat}" in err and "root/<class>/*" in err
    code, err = run_cli(["train", str(spec_for(tmp_path, tmp_path / "nowhere"))], capsys)
    assert code == 2 and f"{tmp_path / 'nowhere'}" in err and "set data.path" in err


def test_bad_image_is_one_line(tmp_path):
    root = write_folder(tmp_path / "img", classes=2, per_class=3)
    (root / "class00" / "0001.png").write_bytes(b"not a png")
    data = index_imagefolder(DataSpec(source="imagefolder"), root, progress=None)
    b = StreamBatches(data.train_files, data.train_y, 5, train=True, transform=Transform((3, 32, 32), "caffe", 36),
                      mean=[0.5], std=[0.25], workers=0, drop_last=False, root=root)
    with pytest.raises(UserError, match=r"cannot read image .*0001.png"):
        list(b)


# ---------------------------------------------------------------- crops


def test_crops_shapes_and_determinism(folder):
    path = str(sorted(folder.glob("class03/*.png"))[0])
    big = folder.parent / "wide.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 80, 3), dtype=np.uint8)).save(big)
    caffe = Transform((3, 32, 32), "caffe", 36, train=True)
    for p in (path, str(big)):
        x = caffe(p, rng(0, 0, 5))
        assert x.shape == (3, 32, 32) and x.dtype == torch.uint8
        assert torch.equal(x, caffe(p, rng(0, 0, 5)))  # same (seed, epoch, index), same crop
    draws = {caffe(str(big), rng(0, e, 5)).sum().item() for e in range(8)}
    assert len(draws) > 1  # other epochs, other crops
    test = Transform((3, 32, 32), "caffe", 36, train=False)
    centre = test(str(big), None)  # 50×80 → 36×58, centre 32×32 at (2, 13)
    full = torch.from_numpy(np.array(Image.open(big).resize((58, 36), Image.Resampling.BILINEAR))).permute(2, 0, 1)
    assert torch.equal(centre, full[:, 2:34, 13:45])
    rrc = Transform((3, 32, 32), "random_resized", 36, train=True)
    assert rrc(str(big), rng(1, 2, 3)).shape == (3, 32, 32) and torch.equal(rrc(str(big), rng(1, 2, 3)), rrc(str(big), rng(1, 2, 3)))
    assert Transform((3, 32, 32), "random_resized", 36, train=False)(str(big), None).shape == (3, 32, 32)
    assert Transform((1, 20, 24))(str(big), None).shape == (1, 20, 24)  # crop none: resized to the input
    for i in range(200):
        top, left, h, w = random_resized_box(50, 80, rng(0, 0, i))
        assert 0 <= top and top + h <= 50 and 0 <= left and left + w <= 80
        assert 0.08 * 4000 * 0.9 <= h * w <= 4000 and 3 / 4 * 0.8 <= w / h <= 4 / 3 * 1.25


# ---------------------------------------------------------------- order: DDP shards, resume


def stream(files, y, rank=0, world=1, batch=8, workers=0, root=None):
    return StreamBatches(files, y, batch, train=True, transform=Transform((3, 32, 32), "caffe", 36), mean=[0.5],
                         std=[0.25], seed=3, rank=rank, world_size=world, workers=workers, root=root)


def test_ddp_shards_match_one_process_and_batches(folder):
    data = index_imagefolder(DataSpec(source="imagefolder"), folder, progress=None)
    files, y = data.train_files[:203], data.train_y[:203]
    one = stream(files, y, batch=8, root=folder)
    ranks = [stream(files, y, r, 2, batch=4, root=folder) for r in range(2)]
    for b in [one, *ranks]:
        b.set_epoch(2)
    whole = one.indices()
    shards = [r.indices() for r in ranks]
    assert len(shards[0]) == len(shards[1]) == len(whole) == 25
    flat = [set(i for batch in s for i in batch) for s in shards]
    assert not flat[0] & flat[1] and len(flat[0] | flat[1]) == 200  # disjoint; the epoch less the drop_last rest
    for b, batch in enumerate(whole):  # the ranks' b-th batches together are the one process's b-th batch
        assert sorted(batch) == sorted(shards[0][b] + shards[1][b])
    # the same order as the in-memory Batches
    mem = Batches(torch.zeros(203, 1, 1, 1, dtype=torch.uint8), torch.arange(203), 8, train=True, mean=[0], std=[1], seed=3)
    mem.set_epoch(2)
    assert [yb.tolist() for _, yb in mem] == whole
    # and the same pixels: one process's batch = the two ranks' batches (crops keyed by example, not rank)
    x1, y1 = next(iter(one))
    parts = [next(iter(r)) for r in ranks]
    key = lambda x, yy: sorted(zip(yy.tolist(), x.flatten(1).sum(1).tolist()))
    assert key(x1, y1) == key(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))


def test_resume_mid_epoch_gives_the_same_remaining_batches(folder):
    data = index_imagefolder(DataSpec(source="imagefolder"), folder, progress=None)
    files, y = data.train_files[:96], data.train_y[:96]
    full = stream(files, y, batch=16, workers=2, root=folder)
    full.set_epoch(1)
    everything = list(full)
    resumed = stream(files, y, batch=16, workers=2, root=folder)
    resumed.set_epoch(1, skip=4)
    rest = list(resumed)
    assert len(everything) == 6 and len(rest) == 2
    for (xa, ya), (xb, yb) in zip(everything[4:], rest):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


# ---------------------------------------------------------------- the sibling trains, memory bounded


def test_sibling_trains_streaming_with_workers_paths_only(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = spec_for(tmp_path, folder)
    compiled = compile_spec(spec)
    data = load_data(compiled.spec, progress=None)
    assert isinstance(data, StreamData)
    train_b, _, _ = make_batches(compiled.spec, data, Context(0, 1, 0, torch.device("cpu")))
    assert isinstance(train_b, StreamBatches) and train_b.workers == 2
    # the reader holds paths and labels only: under 40 bytes an image here, nothing like 3×32×32 decoded
    assert isinstance(train_b.dataset, ImageFiles)
    assert len(pickle.dumps(train_b.dataset)) < 40 * len(train_b.dataset)
    assert not any(isinstance(v, torch.Tensor) and v.dtype == torch.uint8 for v in vars(train_b.dataset).values())
    assert cli.main(["train", str(spec), "train.eval_batch_size=100", "data.test_limit=200"]) == 0
    out, err = capsys.readouterr()
    assert "training cnds8_sibling for 1 epoch of" in err and "main" in out


def test_indexing_prints_progress_on_large_folders(folder, monkeypatch):
    import io

    from netspec.runtime.data import stream as stream_mod
    monkeypatch.setattr(stream_mod, "PROGRESS_EVERY", 0.0)
    out = io.StringIO()
    index_imagefolder(DataSpec(source="imagefolder"), folder, progress=out)
    text = out.getvalue()
    assert f"indexing {folder}: 200 files" in text and text.endswith(f"indexed {folder}: 2000 files\n")


RANK_READS = """\
import json, os, sys
import torch, torch.distributed as dist
from netspec.runtime.data import transforms
from netspec.runtime.data.stream import StreamBatches, index_imagefolder
from netspec.data_spec import DataSpec

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
opened = []
call = transforms.Transform.__call__
transforms.Transform.__call__ = lambda self, path, gen: (opened.append(os.path.basename(os.path.dirname(path)) + "/"
                                                        + os.path.basename(path)), call(self, path, gen))[1]
root = sys.argv[1]
data = index_imagefolder(DataSpec(source="imagefolder"), __import__("pathlib").Path(root), progress=None)
b = StreamBatches(data.train_files[:100], data.train_y[:100], 5, train=True, workers=0, seed=3, rank=rank,
                  world_size=world, transform=transforms.Transform((3, 32, 32), "caffe", 36), mean=[0.5], std=[0.25],
                  root=root)
b.set_epoch(1)
batches = [y.tolist() for _, y in b]
gathered = [None] * world
dist.all_gather_object(gathered, {"opened": opened, "indices": b.indices()})
if rank == 0:
    json.dump(gathered, open(sys.argv[2], "w"))
dist.destroy_process_group()
"""


def test_gloo_two_processes_each_read_only_their_shard(folder, tmp_path):
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "reads.py"
    script.write_text(RANK_READS)
    out = tmp_path / "reads.json"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(script), str(folder), str(out)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = json.loads(out.read_text())
    data = index_imagefolder(DataSpec(source="imagefolder"), folder, progress=None)
    names = [f.decode() for f in data.train_files[:100]]
    one = stream(data.train_files[:100], data.train_y[:100], batch=10, root=folder)
    one.set_epoch(1)
    for r, got in enumerate(ranks):
        mine = [i for batch in got["indices"] for i in batch]
        assert got["opened"] == [names[i] for i in mine]  # each rank decoded exactly its shard, in order
    assert not set(ranks[0]["opened"]) & set(ranks[1]["opened"])
    assert len(ranks[0]["opened"]) + len(ranks[1]["opened"]) == 100
    for b, batch in enumerate(one.indices()):
        assert sorted(batch) == sorted(ranks[0]["indices"][b] + ranks[1]["indices"][b])


def test_stream_auto_and_false_choose_the_path(folder, tmp_path, monkeypatch):
    from netspec.runtime.data import Dataset
    from netspec.runtime.data import stream as stream_mod

    base = ["data.crop=none", "data.resize=null", "data.train_limit=50", "data.test_limit=10"]
    small = compile_spec(spec_for(tmp_path, folder), base).spec
    assert small.data.stream == "auto" and isinstance(load_data(small, progress=None), Dataset)  # small: in memory
    monkeypatch.setattr(stream_mod, "STREAM_AUTO_BYTES", 1000)
    assert isinstance(load_data(small, progress=None), StreamData)  # over the size: streamed
    off = compile_spec(spec_for(tmp_path, folder), [*base, "data.stream=false"]).spec
    assert isinstance(load_data(off, progress=None), Dataset)
    with pytest.raises(UserError, match="has 10 class directories but the spec has classes: 3"):
        load_data(compile_spec(spec_for(tmp_path, folder, classes=3), [*base, "data.stream=false"]).spec)
