"""`netspec export` and `netspec predict`: deployable ONNX models, checked in onnxruntime.

export: checkpoint → training GraphModule → (`--prune-aux` / `--exit NAME`: pruned to one exit) →
ONNX through torch.onnx's dynamo exporter, batch axis dynamic, netspec metadata → `onnx.checker` →
onnxruntime against torch on a random batch and on real test images → the file (written only when
every difference is within `TOLERANCE`).

predict: onnxruntime, numpy and Pillow only — this path never imports torch, so a deployed model
can be checked on a machine without it. Input normalisation and class names come from the metadata.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import warnings
from pathlib import Path

import numpy as np

import netspec
from netspec.cli import add_spec_arguments, load
from netspec.errors import UserError
from netspec.images import IMAGE_SUFFIXES, read_image
from netspec.project import atomic_write

TOLERANCE = 1e-4  # largest |onnxruntime − torch| allowed, times the logit scale max(1, max |torch logit|)
RANDOM_BATCH, TEST_BATCH, PREDICT_BATCH = 8, 64, 256
BATCH_AXIS = "batch"
META = "netspec."  # prefix of every metadata key netspec writes
ALL_HEADS = "all"  # the `exit` metadata of an unpruned model


class ExportMismatch(UserError):
    """onnxruntime and torch disagree beyond the tolerance: the export fails, with exit status 1."""

    exit_code = 1


# --- command line ----------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    if parser.prog.endswith("predict"):
        parser.add_argument("model", metavar="MODEL.onnx", help="a model written by `netspec export`")
        parser.add_argument("inputs", nargs="+", metavar="INPUT",
                            help="images (PNG, JPG, ...) or .npy/.npz arrays: uint8 pixels 0..255, or floats 0..1")
        parser.add_argument("-k", "--top", type=int, default=3, help="classes to show per input (default 3)")
        return
    parser.usage = "netspec export [SPEC] [key=value ...] [options] OUT.onnx"
    parser.epilog = ("OUT.onnx: the file to write (its name must end in .onnx). Without --prune-aux or --exit, "
                     "every head is a named output.")
    add_spec_arguments(parser)
    parser.add_argument("--checkpoint", metavar="CKPT", help="weights to export (default: the run's best.pt, else last.pt)")
    parser.add_argument("--random-init", action="store_true", help="export untrained weights (a smoke test)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--prune-aux", action="store_true", help="deploy the main exit alone, without any branch")
    which.add_argument("--exit", metavar="NAME", help="deploy this exit alone: the backbone up to it and its head")


def run(args: argparse.Namespace) -> int:
    if args.command == "predict":
        return predict(Path(args.model), [Path(p) for p in args.inputs], args.top)
    from netspec.spec import MAIN_HEAD

    out, args.words = _output_path(args.words)
    compiled, _ = load(args)
    head = args.exit or (MAIN_HEAD if args.prune_aux else None)
    export(compiled, out, head=head, checkpoint=args.checkpoint, random_init=args.random_init)
    return 0


def _output_path(words: list[str]) -> tuple[Path, list[str]]:
    """Split `OUT.onnx` from the `[SPEC] [key=value]` words."""
    outs = [w for w in words if w.endswith(".onnx") and "=" not in w]
    if len(outs) != 1:
        raise UserError("give one output file ending in .onnx" + (f", not {len(outs)}" if outs else ""),
                        "e.g. `netspec export --prune-aux model.onnx`")
    return Path(outs[0]), [w for w in words if w != outs[0]]


# --- export ----------------------------------------------------------------------------------

def export(compiled, out: Path, *, head: str | None, checkpoint: str | None = None, random_init: bool = False) -> None:
    """Write `compiled` (one exit when `head` is given, else every head) to `out` as checked ONNX.

    Raises ExportMismatch when onnxruntime and torch differ beyond the tolerance (no file is written)."""
    import onnx

    from compiler.prune import prune

    model = (prune(compiled.module, head) if head else compiled.module).eval()
    weights = apply_checkpoint(compiled, model, checkpoint, random_init)
    outputs = [head] if head else list(compiled.heads)
    spec = compiled.spec
    dataset = _test_data(spec)
    proto = to_onnx(model, spec.input.name, spec.input.shape, outputs)
    onnx.helper.set_model_props(proto, metadata(compiled, head, class_names(spec, dataset), weights))
    onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString()
    exported = f"exit {head}" if head else f"all heads ({', '.join(outputs)})"
    print(f"{spec.name}: {exported}, weights {weights}")
    print(f"onnx.checker: ok — {len(proto.graph.node)} nodes, {_parameter_count(proto):,} parameters, "
          f"input {spec.input.name} [{BATCH_AXIS}, {', '.join(map(str, spec.input.shape))}], outputs {', '.join(outputs)}")
    compare_with_torch(model, data, outputs, _check_batches(spec, dataset))
    atomic_write(out, data)
    print(f"wrote {out} ({len(data) / 1e6:.1f} MB)")


def apply_checkpoint(compiled, model, checkpoint: str | None, random_init: bool) -> str:
    """Load the checkpoint's weights into the module to export (every tensor it needs must be there, with its
    shape; the weights of pruned branches are not needed); return how the metadata describes them."""
    from runtime.checkpoint import best_checkpoint, load_checkpoint, load_weights

    if random_init:
        if checkpoint:
            raise UserError("--checkpoint and --random-init exclude each other", "give one of them")
        return "random-init"
    if checkpoint:
        path = Path(checkpoint)
    else:
        try:
            path = best_checkpoint(compiled.spec)
        except UserError as err:
            raise UserError(err.what, err.fix + ", or pass --random-init to export untrained weights (a smoke test)") from None
    state = load_checkpoint(path)
    trained_from = f"spec '{state.get('spec_name')}' (hash {state.get('spec_hash')})"
    try:
        load_weights(model, state["model"], path, unused_ok=True)
    except UserError as err:
        raise UserError(f"{path} was trained from {trained_from}, whose weights do not fit {compiled.path} with "
                        f"these overrides (hash {compiled.spec_hash}): {err.what}",
                        "export with the spec and overrides it was trained with, or give this spec's checkpoint") from None
    if state.get("spec_hash") != compiled.spec_hash:
        print(f"note: {path} was trained from {trained_from}; every weight this model needs is in it, by name and "
              "shape (a branch moved or a loss changed since?)", file=sys.stderr)
    return f"{path} (epoch {state.get('epoch')})"


@contextlib.contextmanager
def _quiet_exporter():
    """Hide the exporter's own chatter (deprecation notices from torch internals, skipped torchvision ops)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def to_onnx(module, input_name: str, input_shape: tuple[int, ...], output_names: list[str]):
    """An eval-mode module as an `onnx.ModelProto` (dynamo exporter), its batch axis dynamic."""
    import torch

    example = torch.zeros(2, *input_shape)  # batch 2: torch.export specialises sizes 0 and 1
    with _quiet_exporter():
        program = torch.onnx.export(module, (example,), dynamo=True, verbose=False, input_names=[input_name],
                                    output_names=output_names, dynamic_shapes=({0: torch.export.Dim(BATCH_AXIS)},))
    return program.model_proto


def metadata(compiled, head: str | None, classes: list[str], weights: str) -> dict[str, str]:
    """The `metadata_props` of an exported model: what `predict` (or anyone) needs to use it."""
    spec = compiled.spec
    values = {
        "version": netspec.__version__, "spec_name": spec.name, "spec_hash": compiled.spec_hash,
        "exit": head or ALL_HEADS, "weights": weights,
        "input_shape": list(spec.input.shape), "mean": spec.input.mean, "std": spec.input.std,
        "normalisation": "(pixel / 255 - mean) / std, per channel", "classes": classes,
    }
    return {META + key: value if isinstance(value, str) else json.dumps(value) for key, value in values.items()}


def _parameter_count(proto) -> int:
    return sum(int(np.prod(t.dims)) for t in proto.graph.initializer)


def _test_data(spec):
    """The spec's data set, or None (saying why) when it is not available."""
    from runtime.data import load_dataset

    try:
        return load_dataset(spec.data, spec.input.shape)
    except UserError as err:
        print(f"no test data ({err.what}): comparing on a random batch only", file=sys.stderr)
        return None


def class_names(spec, dataset) -> list[str]:
    """The data set's class names when they fit the spec's class count, else `data.classes`, else 0, 1, ..."""
    if dataset is not None and len(dataset.classes) == spec.classes:
        return list(dataset.classes)
    if spec.data.classes and len(spec.data.classes) == spec.classes:
        return list(spec.data.classes)
    return [str(i) for i in range(spec.classes)]


def _check_batches(spec, dataset) -> list[tuple[str, object, object]]:
    """(description, normalised input, labels or None): a random batch, and real test images if there are any."""
    import torch

    from runtime.data import Batches

    gen = torch.Generator().manual_seed(0)
    batches = [(f"random batch of {RANDOM_BATCH}", torch.randn(RANDOM_BATCH, *spec.input.shape, generator=gen), None)]
    if dataset is not None and len(dataset.test_y):
        x, y = next(iter(Batches(dataset.test_x[:TEST_BATCH], dataset.test_y[:TEST_BATCH], TEST_BATCH, train=False,
                                 mean=spec.input.mean, std=spec.input.std)))
        batches.append((f"{len(y)} test images", x, y))
    return batches


def compare_with_torch(model, onnx_bytes: bytes, outputs: list[str], batches) -> None:
    """Run torch (eval) and onnxruntime on each batch; print the largest difference per output; raise on a mismatch."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    failures = []
    print(f"onnxruntime vs torch, max |difference| (tolerance {TOLERANCE:g} × max(1, max |logit|)):")
    for description, x, labels in batches:
        with torch.no_grad():
            expected = model(x)
        expected = expected if isinstance(expected, dict) else {outputs[0]: expected}
        got = dict(zip(outputs, session.run(outputs, {input_name: x.numpy()})))
        cells = []
        for name in outputs:
            reference = expected[name].numpy()
            diff = float(np.abs(got[name] - reference).max())
            limit = TOLERANCE * max(1.0, float(np.abs(reference).max()))
            cells.append(f"{name} {diff:.1e} (limit {limit:.1e})")
            if labels is not None:
                agree = (got[name].argmax(1) == reference.argmax(1)).mean()
                cells[-1] += f", top-1 {(got[name].argmax(1) == labels.numpy()).mean():.3f}, argmax agreement {agree:.3f}"
            if not diff <= limit:  # also catches NaN
                failures.append(f"{name} on the {description}: {diff:.2e} > {limit:.2e}")
        print(f"  {description:<18} " + "; ".join(cells))
    if failures:
        raise ExportMismatch("onnxruntime differs from torch beyond the tolerance: " + "; ".join(failures),
                             "no file written; report this with the spec — an op may export wrongly")


# --- predict (onnxruntime only: no torch import on this path) --------------------------------

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


