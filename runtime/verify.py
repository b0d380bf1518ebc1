"""Checking an exported model: onnxruntime against torch, on a random batch and on real test images."""
from __future__ import annotations

import numpy as np

from netspec.errors import UserError
from netspec.runtime.report import Report

TOLERANCE = 1e-4  # largest |onnxruntime − torch| allowed, times the logit scale max(1, max |torch logit|)
RANDOM_BATCH, TEST_BATCH = 8, 64


class ExportMismatch(UserError):
    """onnxruntime and torch disagree beyond the tolerance: the export fails, with exit status 1."""

    exit_code = 1


def check_batches(spec, dataset) -> list[tuple[str, object, object]]:
    """(description, normalised input, labels or None): a random batch, and real test images if there are any."""
    import torch

    from netspec.runtime.data import Batches

    gen = torch.Generator().manual_seed(0)
    batches = [(f"random batch of {RANDOM_BATCH}", torch.randn(RANDOM_BATCH, *spec.input.shape, generator=gen), None)]
    if dataset is not None and len(dataset.test_y):
        x, y = next(iter(Batches(dataset.test_x[:TEST_BATCH], dataset.test_y[:TEST_BATCH], TEST_BATCH, train=False,
                                 mean=spec.input.mean, std=spec.input.std)))
        batches.append((f"{len(y)} test images", x, y))
    return batches


def compare_with_torch(model, onnx_bytes: bytes, outputs: list[str], batches, report: Report) -> None:
    """Run torch (eval) and onnxruntime on each batch; report the largest difference per output; raise on a
    mismatch."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    failures = []
    report.say(f"onnxruntime vs torch, max |difference| (tolerance {TOLERANCE:g} × max(1, max |logit|)):")
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
        report.say(f"  {description:<18} " + "; ".join(cells))
    if failures:
        raise ExportMismatch("onnxruntime differs from torch beyond the tolerance: " + "; ".join(failures),
                             "no file written; report this with the spec — an op may export wrongly")
