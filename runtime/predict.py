"""`netspec predict`: onnxruntime, numpy and Pillow only — this module never imports torch, so a deployed
model can be checked on a machine without it. Input normalisation and class names come from the metadata."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from netspec.errors import UserError
from netspec.runtime.images import IMAGE_SUFFIXES, read_image

META = "netspec."  # prefix of every metadata key `netspec export` writes
PREDICT_BATCH = 256


def predict(model: Path, inputs: list[Path], top: int) -> int:
    """Print the top-`top` classes of every image or array in `inputs`, by the exported `model`."""
    import onnxruntime as ort

    if not model.is_file():
        raise UserError(f"no model at {model}", "export one with `netspec export --prune-aux MODEL.onnx`")
    try:
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for unreadable models
        raise UserError(f"cannot load {model}: {err}", "give a .onnx file written by `netspec export`") from None
    meta = session.get_modelmeta().custom_metadata_map
    if META + "input_shape" not in meta:
        raise UserError(f"{model} carries no netspec metadata", "give a model written by `netspec export`")
    shape = tuple(json.loads(meta[META + "input_shape"]))
    mean = np.asarray(json.loads(meta[META + "mean"]), np.float32).reshape(-1, 1, 1)
    std = np.asarray(json.loads(meta[META + "std"]), np.float32).reshape(-1, 1, 1)
    classes = json.loads(meta[META + "classes"])
    output = session.get_outputs()[0].name
    top = max(1, min(top, len(classes)))
    labels, pixels = [], []
    for path in inputs:
        for label, image in read_input(path, shape):
            labels.append(label)
            pixels.append(image)
    if not pixels:
        raise UserError(f"{', '.join(map(str, inputs))} hold(s) no image", "give images, or arrays with at least one")
    print(f"{model}: exit {output} of spec {meta.get(META + 'spec_name')}, top {top} of {len(classes)} classes")
    width = max(map(len, labels))
    for start in range(0, len(pixels), PREDICT_BATCH):
        x = ((np.stack(pixels[start:start + PREDICT_BATCH]) - mean) / std).astype(np.float32)
        logits = session.run([output], {session.get_inputs()[0].name: x})[0]
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        for label, p in zip(labels[start:], probs):
            best = np.argsort(-p)[:top]
            print(f"{label:<{width}}  " + "  ".join(f"{classes[i]} {p[i]:.3f}" for i in best))
    return 0


def read_input(path: Path, shape: tuple[int, int, int]) -> list[tuple[str, np.ndarray]]:
    """(label, C×H×W float pixels in 0..1) for an image file or each image of a .npy/.npz array."""
    if not path.is_file():
        raise UserError(f"no input file {path}", "give images (PNG, JPG, ...) or .npy/.npz arrays")
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        images = _as_images(_read_array(path), shape, path)
        return [(str(path), images[0])] if len(images) == 1 else [(f"{path}[{i}]", im) for i, im in enumerate(images)]
    if suffix in IMAGE_SUFFIXES:
        return [(str(path), read_image(path, shape).transpose(2, 0, 1) / np.float32(255.0))]
    raise UserError(f"cannot classify {path}: unknown file type '{suffix}'",
                    f"give an image ({', '.join(sorted(IMAGE_SUFFIXES))}) or a .npy/.npz array")


def _read_array(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as z:
            key = next((k for k in ("x", "x_test") if k in z.files), z.files[0] if len(z.files) == 1 else None)
            if key is None:
                raise UserError(f"{path} holds several arrays ({', '.join(z.files)})", "name the images 'x' (or 'x_test')")
            return z[key]
    except (OSError, ValueError, EOFError) as err:
        raise UserError(f"cannot read {path}: {err}", "save it with numpy.save / numpy.savez of a plain array") from None


def _as_images(a: np.ndarray, shape: tuple[int, int, int], path: Path) -> np.ndarray:
    """An array of one or many images (C×H×W, H×W×C, or H×W when C is 1) as N×C×H×W pixels in 0..1."""
    c, h, w = shape
    if a.dtype.kind not in "uif":
        raise UserError(f"{path} holds {a.dtype} values", "store pixels as uint8 0..255 or floats 0..1")
    if a.shape[-3:] == (h, w, c) and a.shape[-3:] != shape:
        a = np.moveaxis(a, -1, -3)
    elif c == 1 and a.shape[-2:] == (h, w) and a.shape[-3:] != shape:
        a = a[..., None, :, :]
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[1:] != shape:
        raise UserError(f"{path} has shape {'×'.join(map(str, a.shape))}, which is not one or many "
                        f"{'×'.join(map(str, shape))} images (C×H×W)", "give arrays of the model's input shape")
    return a.astype(np.float32) / (1.0 if a.dtype.kind == "f" else 255.0)


def predict_cascade(folder: Path, inputs: list[Path], top: int) -> int:
    """Like `predict`, by an early-exit cascade directory (`netspec export --cascade`): per input also the exit it
    left at and the FLOPs it cost (the cumulative FLOPs of that exit, from the manifest)."""
    from netspec.runtime.cascade import Cascade, softmax

    cascade = Cascade.load(folder)
    manifest = cascade.manifest
    shape = tuple(manifest["input"]["shape"])
    mean = np.asarray(manifest["input"]["mean"], np.float32).reshape(-1, 1, 1)
    std = np.asarray(manifest["input"]["std"], np.float32).reshape(-1, 1, 1)
    classes, segments = manifest["classes"], manifest["segments"]
    top = max(1, min(top, len(classes)))
    labels, pixels = [], []
    for path in inputs:
        for label, image in read_input(path, shape):
            labels.append(label)
            pixels.append(image)
    if not pixels:
        raise UserError(f"{', '.join(map(str, inputs))} hold(s) no image", "give images, or arrays with at least one")
    thresholds = ", ".join(f"{s['exit']} {s['threshold']:g}" for s in segments[:-1])
    print(f"{folder}: cascade of spec {manifest.get('spec_name')} ({' → '.join(cascade.exits)}; leave when max "
          f"softmax > threshold: {thresholds}), top {top} of {len(classes)} classes")
    width = max(map(len, labels))
    full = manifest["full_flops"]
    for start in range(0, len(pixels), PREDICT_BATCH):
        x = ((np.stack(pixels[start:start + PREDICT_BATCH]) - mean) / std).astype(np.float32)
        logits, where = cascade.run(x)
        for label, p, k in zip(labels[start:], softmax(logits), where):
            best = np.argsort(-p)[:top]
            cost = segments[k]["cumulative_flops"]
            print(f"{label:<{width}}  " + "  ".join(f"{classes[i]} {p[i]:.3f}" for i in best)
                  + f"  exit {segments[k]['exit']}, {cost / 1e6:.3g} MFLOPs ({cost / full:.0%} of the full net)")
    return 0
