"""Issue 10: a seeded mutator over the shipped specs (and the tiny test specs), run for a bounded time.

Each case mutates a spec (its YAML data: values swapped for hostile ones, keys dropped, nodes duplicated or
rewired, names changed; or its bytes: flips, control characters, truncation) and/or adds overrides, then runs
`netspec compile` (in-process, stderr captured; a few `draw -o`). Every case must end in exit 0 or 2 — never an
exception escaping the CLI, never a traceback — must not write outside `build/`, and must stay within the time
and memory bounds below. A failure prints the seed and the case, which reproduces it exactly.

Bounds: FUZZ_SECONDS of cases in-process (default 30, env NETSPEC_FUZZ_SECONDS), one case at most
CASE_SECONDS, the process's peak RSS growing by at most RSS_GROWTH_MB; NETSPEC_MAX_PARAMS is lowered for the
run so a mutated width cannot make lowering allocate gigabytes (the limit itself is what is exercised).
One case also runs as a subprocess under an address-space limit.
"""
from __future__ import annotations

import copy
import io
import os
import random
import resource
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml

from netspec.cli import main
from conftest import MINI, SPECS, WITH_BRANCH

FUZZ_SECONDS = float(os.environ.get("NETSPEC_FUZZ_SECONDS", "30"))
CASE_SECONDS = 20.0
RSS_GROWTH_MB = 1500
SEED = int(os.environ.get("NETSPEC_FUZZ_SEED", "10"))

HOSTILE = [0, -1, 1, 2**31, 2**62, 2**63, 2**70, -(2**70), 1e308, 1e-308, float("inf"), float("-inf"), float("nan"),
           "", " ", "..", ".", "/", "a/b", "../x", "/etc/passwd", "class", "import", "def", "a.b", "x" * 5000,
           "\x00", "\x7f", "é", "${1/0}", "${'x' * 10**9}", "${2**100000}", "${[0]*10**8}", "${undefined}",
           "${''.__class__}", "${'%99999999d' % 1}", "${(['x'*9999]*99)|join}", "same", None, True, False, [],
           {}, [[]], [1, 2, 3], [1, 2], {"a": 1}, {"type": "nope"}, "main", "input", "relu1", "conv1", "fc",
           "cross_entropy", "synergy", "auto", "mps", "cuda:7", "depthwise", "same"]
KEYS = ["name", "op", "from", "out", "kernel", "stride", "pad", "dilation", "groups", "repeat", "block", "head",
        "heads", "weight", "beta", "schedule", "type", "lr", "std", "epochs", "classes", "shape", "extends",
        "output", "nodes", "branches", "losses", "vars", "init", "train", "data", "crop_pad", "temperature"]
OPS = ["conv", "fc", "relu", "maxpool", "avgpool", "gap", "flatten", "add", "concat", "identity", "shortcut",
       "batchnorm", "dropout", "softmax", "lrn", "prelu", "leaky_relu", "custom", "nope"]


def base_specs() -> dict[str, str]:
    out = {p.name: p.read_text() for p in sorted(SPECS.glob("*.yaml"))}
    out["mini.yaml"], out["with_branch.yaml"] = MINI, WITH_BRANCH
    return out


def _paths(data, prefix=()):
    """Every (path, value) in plain YAML data."""
    yield prefix, data
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _paths(value, prefix + (index,))


def _parent(data, path):
    for part in path[:-1]:
        data = data[part]
    return data


def mutate_data(rng: random.Random, data):
    """One structural mutation of parsed YAML data (in place)."""
    paths = [p for p, _ in _paths(data) if p]
    if not paths:
        return
    path = rng.choice(paths)
    parent, last = _parent(data, path), path[-1]
    kind = rng.randrange(8)
    if kind <= 2:  # a hostile value
        parent[last] = copy.deepcopy(rng.choice(HOSTILE))
    elif kind == 3:  # drop it
        del parent[last]
    elif kind == 4 and isinstance(parent, list):  # duplicate a list item (a node twice)
        parent.insert(rng.randrange(len(parent) + 1), copy.deepcopy(parent[last]))
    elif kind == 5 and isinstance(parent, dict):  # a key from the schema, with a hostile value
        parent[rng.choice(KEYS)] = copy.deepcopy(rng.choice(HOSTILE + OPS))
    elif kind == 6 and isinstance(parent, dict) and "op" in parent:  # another op
        parent["op"] = rng.choice(OPS)
    elif kind == 7:  # rewire: point a `from:` at any name in the spec
        names = [v for p, v in _paths(data) if p and p[-1] == "name" and isinstance(v, str)]
        if isinstance(parent, dict) and names:
            parent["from"] = rng.choice(names + ["input", "main"])
    else:
        parent[last] = copy.deepcopy(rng.choice(HOSTILE))


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not data:
            break
        kind, at = rng.randrange(5), rng.randrange(len(data))
        if kind == 0:
            data[at] = rng.randrange(256)
        elif kind == 1:
            data.insert(at, rng.choice([0, 1, 7, 27, 127, 0xC3, 0xE9, 0xFF]))
        elif kind == 2:
            del data[at:]
        elif kind == 3:
            data[at:at] = rng.choice([b"[", b"{", b": ", b"- ", b"&a ", b"*a", b"<<: *a\n", b"\t", b"!!python/object "])
        else:
            line = data.rfind(b"\n", 0, at) + 1
            data[line:line] = data[line:data.find(b"\n", at) + 1 or len(data)]
    return bytes(data)


def overrides(rng: random.Random) -> list[str]:
    out = []
    for _ in range(rng.choice([0, 0, 1, 2])):
        key = ".".join(rng.choice(KEYS + ["nodes.0", "nodes.conv1", "branches.aux", "losses.main", "0", "-1"])
                       for _ in range(rng.randint(1, 3)))
        value = rng.choice(HOSTILE)
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip() \
            if not isinstance(value, str) else value
        out.append(f"{key}={text}")
    return out


def make_case(rng: random.Random, bases: dict[str, str]) -> tuple[str, bytes, list[str]]:
    """(spec file name, its bytes, overrides) — the shipped spec it started from keeps its name (extends: works)."""
    name = rng.choice(sorted(bases))
    text = bases[name]
    if rng.random() < 0.75:
        data = yaml.safe_load(text)
        for _ in range(rng.randint(1, 3)):
            mutate_data(rng, data)
        try:
            raw = yaml.safe_dump(data, sort_keys=False, allow_unicode=rng.random() < 0.5).encode()
        except Exception:  # a value yaml cannot write (a lone control character): write the original
            raw = text.encode()
    else:
        raw = text.encode()
    if rng.random() < 0.25:
        raw = mutate_bytes(rng, raw)
    return name, raw, overrides(rng)


def outside_build(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*")
            if p.is_file() and p.relative_to(root).parts[0] not in ("build",)}


def run_case(workdir: Path, name: str, raw: bytes, extra: list[str], draw: bool) -> tuple[int, str]:
    (workdir / "case.yaml").write_bytes(raw)  # beside the shipped specs: `extends: resnet32.yaml` resolves
    argv = (["draw", "case.yaml", "-o", "g.dot"] if draw else ["compile", "case.yaml"]) + extra
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        code = main(argv)
    return code, err.getvalue()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    for name, text in base_specs().items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NETSPEC_BUILD", raising=False)
    monkeypatch.setenv("NETSPEC_MAX_PARAMS", str(1 << 22))
    monkeypatch.setenv("NETSPEC_MAX_NODES", "6000")
    return tmp_path


def test_fuzz_compile(workdir):
    rng = random.Random(SEED)
    bases = base_specs()
    allowed = set(outside_build(workdir)) | {"case.yaml", "g.dot"}
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    deadline = time.monotonic() + FUZZ_SECONDS
    counts = {0: 0, 2: 0}
    index = 0
    while time.monotonic() < deadline:
        name, raw, extra = make_case(rng, bases)
        draw = rng.random() < 0.1
        started = time.monotonic()
        label = f"seed {SEED} case {index} (from {name}, overrides {extra!r}, draw={draw})"
        try:
            code, err = run_case(workdir, name, raw, extra, draw)
        except BaseException as exc:  # an exception escaping the CLI is exactly what must not happen
            (workdir.parent / "fuzz_failure.yaml").write_bytes(raw)
            raise AssertionError(f"{label}: {type(exc).__name__}: {str(exc)[:300]} "
                                 f"(spec kept in {workdir.parent / 'fuzz_failure.yaml'})") from exc
        elapsed = time.monotonic() - started
        assert code in (0, 2), f"{label}: exit {code}: {err[:300]}"
        assert "Traceback" not in err, f"{label}: {err[:500]}"
        if code == 2:
            lines = err.strip().splitlines()
            assert 1 <= len(lines) <= 10 and all(len(line) < 1000 for line in lines), f"{label}: {err[:500]}"
        assert elapsed < CASE_SECONDS, f"{label}: took {elapsed:.1f}s"
        written = set(outside_build(workdir)) - allowed
        assert not written, f"{label}: wrote outside build/: {sorted(written)[:5]}"
        counts[code] += 1
        index += 1
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024 - rss_before
    assert growth < RSS_GROWTH_MB, f"peak RSS grew by {growth} MB over {index} cases"
    assert index >= 30, f"only {index} cases in {FUZZ_SECONDS}s"
    assert counts[2] > 0 and counts[0] > 0, counts  # the mutator makes both kinds (else it tests nothing)
    print(f"fuzz: {index} cases in {FUZZ_SECONDS:.0f}s, {counts[0]} compiled, {counts[2]} refused cleanly, "
          f"peak RSS +{growth} MB")


def _limit_memory():
    limit = 6 << 30  # address space: torch maps a lot, but a runaway allocation fails instead of swapping
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@pytest.mark.parametrize("seed", [1])
def test_fuzz_subprocess(workdir, seed):
    """The same through the real command line, in a process bounded in memory and time."""
    rng = random.Random(seed)
    name, raw, extra = make_case(rng, base_specs())
    (workdir / "case.yaml").write_bytes(raw)
    result = subprocess.run([sys.executable, "-m", "netspec.cli", "compile", "case.yaml", *extra],
                            capture_output=True, text=True, timeout=120, preexec_fn=_limit_memory, cwd=workdir)
    assert result.returncode in (0, 2), result.stderr[-500:]
    assert "Traceback" not in result.stderr, result.stderr[-1000:]
