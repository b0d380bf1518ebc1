"""Streaming data benchmark (not a test): `python bench/bench_data.py [--images N] [--batch B] [--steps S]`.

1. Decode rate of the streaming pipeline (runtime/data/stream.py): generated 256-px JPEGs and PNGs (320×256,
   shorter side 256), resize 256 + Caffe's random 227 crop + mirror, uint8 batches out of a DataLoader with
   1 and 2 worker processes, images/s (and per worker).
2. The training step rate of a 227-input CNDS-8 CPU sibling (specs/cnds8.yaml, widths ÷ 8, 10 classes) on this
   machine, and the ratio decode rate ÷ training rate (goal ≥ 20× with 2 workers for the CPU nets).
3. What a GPU would need: images/s = batch ÷ step time, for the stated step times.
"""
from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from netspec.data_spec import DataSpec
from netspec.runtime.data.stream import StreamBatches, index_imagefolder
from netspec.runtime.data.transforms import Transform

WIDTHS = {"64": "8", "128": "16", "256": "32", "512": "64", "4096": "256", "1024": "128"}


def write_images(root: Path, n: int, suffix: str, classes: int = 10) -> Path:
    """n smooth-ish random 320×256 images (JPEG quality 90 or PNG), in `classes` class directories."""
    gen = np.random.default_rng(0)
    base = gen.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    for i in range(n):
        d = root / f"c{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        small = np.roll(base, i, axis=1) ^ np.uint8(i % 251)
        im = Image.fromarray(small).resize((320, 256), Image.Resampling.BILINEAR)
        im.save(d / f"{i:05d}{suffix}", **({"quality": 90} if suffix == ".jpg" else {}))
    return root


def decode_rate(root: Path, workers: int, batch: int) -> float:
    data = index_imagefolder(DataSpec(source="imagefolder"), root, progress=None)
    files = np.concatenate([data.train_files, data.test_files])
    y = torch.cat([data.train_y, data.test_y])
    b = StreamBatches(files, y, batch, train=True, transform=Transform((3, 227, 227), "caffe", 256),
                      mean=[0.5], std=[0.25], workers=workers, drop_last=True, root=root)
    loader = iter(b.loader())
    next(loader)  # workers started, first batches in flight
    start, count = time.perf_counter(), 0
    for x, _ in loader:
        count += len(x)
    return count / (time.perf_counter() - start)


def sibling(folder: Path, path: Path) -> Path:
    """specs/cnds8.yaml with widths ÷ 8 and 10 classes, reading `folder` (resize [256, 256], caffe crop)."""
    text = Path("specs/cnds8.yaml").read_text()
    text = re.sub(r"out: (\d+)\b", lambda m: f"out: {WIDTHS.get(m.group(1), m.group(1))}", text)
    text = text.replace("classes: 1000", "classes: 10").replace("path: data/imagenet", f"path: {folder}")
    path.write_text(text)
    return path


def step_rate(batch: int, steps: int, threads: int) -> tuple[float, float]:
    """(images/s, seconds/step) of training the 227-input CNDS-8 sibling (forward + backward + SGD), all losses."""
    from netspec.compiler import compile_spec
    from netspec.runtime.objective import Objective

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        compiled = compile_spec(sibling(Path(tmp), Path(tmp) / "cnds8_cpu.yaml"))
    model, objective = compiled.module, Objective(compiled.network)
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    x, y = torch.randn(batch, 3, 227, 227), torch.randint(0, 10, (batch,))
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        loss, _ = objective(model(x), y, 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t)
    sec = float(np.median(times))
    return batch / sec, sec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=600)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--train", action="store_true", help="also train the 227-input sibling end to end (3 steps)")
    a = p.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}, "
          f"torch {torch.__version__}")
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        if a.train:  # end to end: `netspec train` of the sibling, streaming the JPEGs with 2 workers
            import resource
            import subprocess
            import sys

            folder = write_images(Path(tmp) / "e2e", a.images, ".jpg")
            spec = sibling(folder, Path(tmp) / "cnds8_cpu.yaml")
            t = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "netspec.cli", "train", str(spec), "train.max_steps=3",
                                   "train.batch_size=32", "train.eval_batch_size=32", "data.test_limit=64",
                                   "data.workers=2", f"train.out={tmp}/runs"], capture_output=True, text=True)
            rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            print(f"netspec train, 227-input sibling, {a.images} JPEGs, 3 steps + eval of 64, 2 workers: exit "
                  f"{done.returncode}, {time.perf_counter() - t:.0f} s, max RSS of a process {rss:.0f} MB")
            if done.returncode:
                print(done.stderr[-2000:])
        for suffix in (".jpg", ".png"):
            root = write_images(Path(tmp) / suffix[1:], a.images, suffix)
            for workers in (1, 2):
                r = decode_rate(root, workers, a.batch)
                rates[suffix, workers] = r
                print(f"decode {suffix[1:]:4s} 320×256 → resize 256 → caffe 227 crop, {workers} worker(s): "
                      f"{r:7.1f} images/s ({r / workers:.1f} per worker)")
    train, sec = step_rate(a.batch, a.steps, torch.get_num_threads())
    print(f"train CNDS-8 CPU sibling (widths ÷ 8), 227 input, batch {a.batch}, {torch.get_num_threads()} threads: "
          f"{sec * 1000:.0f} ms/step = {train:.1f} images/s")
    for suffix in (".jpg", ".png"):
        print(f"ratio decode ({suffix[1:]}, 2 workers) ÷ training: {rates[suffix, 2] / train:.1f}×  (goal ≥ 20×)")
    for batch, ms in ((128, 100), (256, 100), (256, 250)):
        need = batch / (ms / 1000)
        per = rates[".jpg", 1]
        print(f"a GPU at {ms} ms/step of batch {batch} needs {need:.0f} images/s = {need / per:.0f} workers at the "
              f"JPEG rate per worker measured here")


if __name__ == "__main__":
    main()
