"""Shared helpers for the compiler tests: small specs written to tmp_path, and the error they raise."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from netspec.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"

# A tiny valid spec: 1x8x8 input, conv-relu-fc. Tests append or override sections.
MINI = """\
name: mini
input: {shape: [1, 8, 8]}
classes: 3
nodes:
  - {name: conv1, op: conv, out: 4, kernel: 3, pad: 1}
  - {name: relu1, op: relu}
  - {name: fc, op: fc, out: 3}
"""

# MINI with one auxiliary branch after relu1 and a loss on each head.
WITH_BRANCH = MINI + """\
branches:
  aux:
    from: relu1
    nodes:
      - {name: pool, op: maxpool, kernel: 2}
      - {name: fc, op: fc, out: 3}
losses:
  main: {type: cross_entropy, head: main}
  aux: {type: cross_entropy, head: aux, weight: 0.3, schedule: cnds}
"""


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def write_spec(tmp_path):
    """write_spec(text, name="spec.yaml") -> path of the dedented text written under tmp_path."""
    return lambda text, name="spec.yaml": write(tmp_path, text, name)


def marked_line(text: str, marker: str = "# <-") -> int:
    """The 1-based line of `text` that carries the marker comment (where an error must point)."""
    lines = textwrap.dedent(text).splitlines()
    found = [i for i, line in enumerate(lines, 1) if marker in line]
    assert len(found) == 1, f"expected one '{marker}' marker, found {len(found)}"
    return found[0]


def error_of(call, *args, **kwargs) -> UserError:
    """Run a compiler call that must fail with a user error; return the error."""
    with pytest.raises(UserError) as info:
        call(*args, **kwargs)
    return info.value


@pytest.fixture
def one_thread(monkeypatch):
    """Tiny models run fastest (and steadiest on a busy machine) on one torch thread; OMP_NUM_THREADS=1 makes
    `train.threads: auto` choose it too, so runs compared bit for bit use the same thread count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(threads)
