"""`netspec predict`: onnxruntime, numpy and Pillow only — this module never imports torch, so a deployed
model can be checked on a machine without it. Input normalisation and class names come from the metadata."""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from netspec.errors import UserError
from netspec.limits import Limits
from netspec.runtime.arrays import load_arrays
from netspec.runtime.images import IMAGE_SUFFIXES, read_image
from netspec.runtime.report import QUIET, Report

META = "netspec."  # prefix of every metadata key `netspec export` writes
PREDICT_BATCH = 256
MAX_MODEL_BYTES = 2 << 30  # protobuf's own limit on an .onnx file
MAX_INPUT_ELEMENTS = 1 << 26  # C×H×W of one input, as the metadata states it
MAX_CLASSES = 1 << 20


@dataclass(frozen=True)
class Metadata:
    """What `predict` needs from an exported model's metadata, checked."""

    shape: tuple[int, int, int]
    mean: np.ndarray
    std: np.ndarray
    classes: list[str]
    spec_name: str


def read_metadata(model: Path, meta: dict[str, str]) -> Metadata:
    """The netspec metadata of an exported model, each entry checked: a model not written by `netspec export`
    (or edited since) is one error naming the file and the entry."""
    fix = "give a model written by `netspec export` (its metadata says how to feed it)"
    if META + "input_shape" not in meta:
        raise UserError(f"{model} carries no netspec metadata", fix)

    def entry(key: str):
        if META + key not in meta:
            raise UserError(f"{model}: the metadata has no '{META + key}'", fix)
        text = meta[META + key]
        try:
            if len(text) > 64 << 20:
                raise ValueError("too long")
            return json.loads(text)
        except (ValueError, RecursionError):
            raise UserError(f"{model}: the metadata '{META + key}' is not valid JSON", fix) from None

    def bad(key: str, want: str) -> UserError:
        return UserError(f"{model}: the metadata '{META + key}' must be {want}", fix)

    shape = entry("input_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(type(d) is int and 0 < d <= MAX_INPUT_ELEMENTS
                                                                 for d in shape)
            and math.prod(shape) <= MAX_INPUT_ELEMENTS):
        raise bad("input_shape", f"[C, H, W]: three positive integers, at most {MAX_INPUT_ELEMENTS:,} elements")
    channels = shape[0]
    norms = {}
    for key in ("mean", "std"):
        values = entry(key)
        if not (isinstance(values, list) and len(values) in (1, channels) and all(
                type(v) in (int, float) and math.isfinite(v) for v in values)):
            raise bad(key, f"a list of 1 or {channels} finite numbers")
        norms[key] = np.asarray(values, np.float32).reshape(-1, 1, 1)
    if not (norms["std"] > 0).all():
        raise bad("std", "positive numbers")
    classes = entry("classes")
    if not (isinstance(classes, list) and 0 < len(classes) <= MAX_CLASSES and all(isinstance(c, str) for c in classes)):
        raise bad("classes", f"a list of 1 to {MAX_CLASSES:,} class names")
    name = meta.get(META + "spec_name", "?")
    return Metadata(tuple(shape), norms["mean"], norms["std"], classes, name[:100])


def predict(model: Path, inputs: list[Path], top: int, limits: Limits = Limits(), report: Report = QUIET) -> int:
    """Report the top-`top` classes of every image or array in `inputs`, by the exported `model`."""
    import onnxruntime as ort

    if not model.is_file():
        raise UserError(f"no model at {model}", "export one with `netspec export --prune-aux MODEL.onnx`")
    if model.stat().st_size > MAX_MODEL_BYTES:
        raise UserError(f"{model} is {model.stat().st_size:,} bytes, larger than an ONNX file can be",
                        "give a .onnx file written by `netspec export`")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for unreadable models
        raise UserError(f"cannot load {model}: {str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__}",
                        "give a .onnx file written by `netspec export`") from None
    info = read_metadata(model, session.get_modelmeta().custom_metadata_map)
    shape, mean, std, classes = info.shape, info.mean, info.std, info.classes
    ins, outs = session.get_inputs(), session.get_outputs()
    fixed = [d for d in (ins[0].shape[1:] if ins else []) if isinstance(d, int)]
    if len(ins) != 1 or not outs or len(ins[0].shape) != 4 or (len(fixed) == 3 and tuple(fixed) != shape):
        raise UserError(f"{model} takes {len(ins)} input(s) of shape {ins[0].shape if ins else '-'}, not one batch of "
                        f"{'×'.join(map(str, shape))} images as its metadata says", "give a model written by `netspec export`")
    output = outs[0].name
    top = max(1, min(top, len(classes)))
    labels, pixels = read_inputs(inputs, shape, limits)
    report.say(f"{model}: exit {output} of spec {info.spec_name}, top {top} of {len(classes)} classes")
    width = max(map(len, labels))
    for start in range(0, len(pixels), PREDICT_BATCH):
        x = ((np.stack(pixels[start:start + PREDICT_BATCH]) - mean) / std).astype(np.float32)
        try:
            logits = session.run([output], {ins[0].name: x})[0]
        except Exception as err:  # onnxruntime's own exception types
            raise UserError(f"{model} fails on these inputs: {str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__}",
                            "give a model written by `netspec export`") from None
        if not (isinstance(logits, np.ndarray) and logits.shape == (len(x), len(classes))):
            raise UserError(f"{model} outputs {getattr(logits, 'shape', '?')} for {len(x)} inputs, but its metadata names "
                            f"{len(classes)} classes", "give a model written by `netspec export`")
        for label, p in zip(labels[start:], softmax(logits)):
            best = np.argsort(-p)[:top]
            report.say(f"{label:<{width}}  " + "  ".join(f"{classes[i]} {p[i]:.3f}" for i in best))
    return 0


def softmax(logits: np.ndarray) -> np.ndarray:
    probs = np.exp(logits - logits.max(1, keepdims=True))
    return probs / probs.sum(1, keepdims=True)


def read_inputs(inputs: list[Path], shape: tuple[int, int, int],
                limits: Limits) -> tuple[list[str], list[np.ndarray]]:
    """(labels, C×H×W float pixels) of every image in `inputs` (image files, or each image of an array)."""
    labels, pixels = [], []
    for path in inputs:
        for label, image in read_input(path, shape, limits):
            labels.append(label)
            pixels.append(image)
    if not pixels:
        raise UserError(f"{', '.join(map(str, inputs))} hold(s) no image", "give images, or arrays with at least one")
    return labels, pixels


def read_input(path: Path, shape: tuple[int, int, int], limits: Limits) -> list[tuple[str, np.ndarray]]:
    """(label, C×H×W float pixels in 0..1) for an image file or each image of a .npy/.npz array."""
    if not path.is_file():
        raise UserError(f"no input file {path}", "give images (PNG, JPG, ...) or .npy/.npz arrays")
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        images = _as_images(_read_array(path, limits.data_bytes), shape, path)
        return [(str(path), images[0])] if len(images) == 1 else [(f"{path}[{i}]", im) for i, im in enumerate(images)]
    if suffix in IMAGE_SUFFIXES:
        return [(str(path), read_image(path, shape, limits.image_pixels).transpose(2, 0, 1) / np.float32(255.0))]
    raise UserError(f"cannot classify {path}: unknown file type '{suffix}'",
                    f"give an image ({', '.join(sorted(IMAGE_SUFFIXES))}) or a .npy/.npz array")


def _read_array(path: Path, max_bytes: int) -> np.ndarray:
    arrays = load_arrays(path, max_bytes, scale=4)  # the pixels become float32
    if path.suffix.lower() == ".npy":
        return arrays[""]
    names = [n for n in arrays]
    key = next((k for k in ("x", "x_test") if k in arrays), names[0] if len(names) == 1 else None)
    if key is None:
        shown = ", ".join(n[:40] for n in names[:10]) or "none"
        raise UserError(f"{path} holds {len(names)} arrays ({shown})", "name the images 'x' (or 'x_test')")
    return arrays[key]


def _as_images(a: np.ndarray, shape: tuple[int, int, int], path: Path) -> np.ndarray:
    """An array of one or many images (C×H×W, H×W×C, or H×W when C is 1) as N×C×H×W pixels in 0..1."""
    c, h, w = shape
    if a.dtype.kind not in "uif":
        raise UserError(f"{path} holds {a.dtype} values", "store pixels as uint8 0..255 or floats 0..1")
    if a.dtype.kind == "f" and a.size and not np.isfinite(a).all():
        raise UserError(f"{path} holds NaN or infinite values", "store pixels as uint8 0..255 or finite floats 0..1")
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


def predict_cascade(folder: Path, inputs: list[Path], top: int, limits: Limits = Limits(),
                    report: Report = QUIET) -> int:
    """Like `predict`, by an early-exit cascade directory (`netspec export --cascade`): per input also the exit it
    left at and the FLOPs it cost (the cumulative FLOPs of that exit, from the manifest)."""
    from netspec.runtime.cascade import Cascade

    cascade = Cascade.load(folder)
    manifest = cascade.manifest
    shape = tuple(manifest["input"]["shape"])
    mean = np.asarray(manifest["input"]["mean"], np.float32).reshape(-1, 1, 1)
    std = np.asarray(manifest["input"]["std"], np.float32).reshape(-1, 1, 1)
    classes, segments = manifest["classes"], manifest["segments"]
    top = max(1, min(top, len(classes)))
    labels, pixels = read_inputs(inputs, shape, limits)
    thresholds = ", ".join(f"{s['exit']} {s['threshold']:g}" for s in segments[:-1])
    report.say(f"{folder}: cascade of spec {manifest.get('spec_name')} ({' → '.join(cascade.exits)}; leave when the "
               f"confidence ({cascade.criterion}) > threshold: {thresholds}), top {top} of {len(classes)} classes")
    width = max(map(len, labels))
    full = manifest["full_flops"]
    for start in range(0, len(pixels), PREDICT_BATCH):
        x = ((np.stack(pixels[start:start + PREDICT_BATCH]) - mean) / std).astype(np.float32)
        logits, where, costs = cascade.run(x)
        for label, p, k, cost in zip(labels[start:], softmax(logits), where, costs):
            best = np.argsort(-p)[:top]
            report.say(f"{label:<{width}}  " + "  ".join(f"{classes[i]} {p[i]:.3f}" for i in best)
                       + f"  exit {segments[k]['exit']}, {cost / 1e6:.3g} MFLOPs ({cost / full:.0%} of the full net)")
    return 0
