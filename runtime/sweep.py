"""Sweeps: a spec moved N ways, each way (an *arm*) trained on the same paired seeds, and the answer with its error
bars. `netspec sweep` is the command; this module is its engine (also usable from Python).

- An arm is one assignment of the swept keys (`branches.aux1.from=relu4_1`, or `spec=specs/cnn8_fmnist.yaml`);
  a grid gives every combination, a search space (`--search tpe`) has Optuna's TPE sampler propose them. A sweep
  file may also name explicit arms (`arms: {NAME: {spec: FILE, KEY: VALUE}}`, arms differing in several keys at
  once): their names are the values of the key `arm`, crossed with the grid or sampled as a categorical.
- One Optuna trial is one arm on all its seeds (its value: the mean over the seeds), so seeds stay paired and
  pruning stops whole arms. Each seed is one ordinary run, a `netspec train` subprocess named
  `<arm id>-s<seed>` in `runs/<name>/sweeps/<sweep>/runs/` (apart from the spec's other runs: a sweep never moves
  their `latest`): a finished run is reused, a cut-off one resumed (`--resume`).
- The study lives in an RDB (default SQLite, `runs/<name>/sweeps/<sweep>.db`); any number of workers may run the
  same sweep on it. netspec's own claim on an arm (an `flock` on `sweeps/<sweep>/claims/<arm>.lock`, released
  when its holder dies) makes sure no arm is trained by two workers: Optuna's GridSampler may hand one grid point
  to several workers, and enqueued trials have been handed out twice on SQLite (optuna#4002), so workers pick
  arms themselves and give Optuna the values (`PartialFixedSampler`).
- Selection (the arm's value, pruning, the best arm, the reported epoch) is on `val_top1/main` when the runs have
  a validation split, else on the test split's `top1/main` (the results say so).
"""
from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from netspec.errors import Pos, UserError, did_you_mean
from netspec.limits import Limits
from netspec.project import atomic_write
from netspec.spec import MAIN_HEAD

# --- statistics: paired seeds, 95 % t intervals --------------------------------------------------------------

# two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (any statistics table)
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t: the table to 30 degrees of freedom, then the Cornish-Fisher expansion
    z + (z³ + z)/(4·df) (within 0.001 of the exact value above 30)."""
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df)


def mean_std(values: list[float]) -> str:
    """'mean ± sample std' of fractions, in % (NaN left out)."""
    pct = [100 * v for v in values if not math.isnan(v)]
    if not pct:
        return "–"
    return f"{pct[0]:.2f}" if len(pct) == 1 else f"{statistics.mean(pct):.2f} ± {statistics.stdev(pct):.2f}"


def paired(a: list[float], b: list[float]) -> dict | None:
    """The paired difference a − b (same seeds), in points: mean, sample std and the 95 % t confidence interval."""
    d = [100 * (x - y) for x, y in zip(a, b)]
    if len(d) < 2:
        return None
    mean, sd = statistics.mean(d), statistics.stdev(d)
    half = t975(len(d) - 1) * sd / math.sqrt(len(d))
    return {"n": len(d), "mean": mean, "std": sd, "ci95": [mean - half, mean + half], "per_seed": d}


def fmt_paired(p: dict | None) -> str:
    if p is None:
        return "–"
    lo, hi = p["ci95"]
    return f"{p['mean']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def verdict(p: dict | None, better: str = "better", worse: str = "worse") -> str:
    """What a paired difference says: its 95 % interval above 0, below 0, or across it."""
    if p is None:
        return "not measured"
    lo, hi = p["ci95"]
    return better if lo > 0 else worse if hi < 0 else "not resolved"


# --- the sweep: arms from a grid or a search space -----------------------------------------------------------

SPEC_KEY = "spec"  # a swept key that picks the spec file itself (CNN-8 vs CNDS-8)
ARM_KEY = "arm"  # the key whose values are a sweep file's explicit arms (`arms: {NAME: {spec: ..., KEY: V}}`)


def value_text(value: Any) -> str:
    """A value as the text of a `key=value` override (mappings and lists as one-line YAML flow)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value)
    return yaml.safe_dump(value, default_flow_style=True, width=10 ** 6).strip()


def parse_grid(item: str) -> tuple[str, list[str]]:
    """`KEY=v1,v2,...` (scalars) or `KEY=[v1, {type: x}, ...]` (one YAML flow sequence) → key, override texts."""
    key, sep, text = item.partition("=")
    key, text = key.strip(), text.strip()
    if not sep or not key or not text:
        raise UserError(f"--grid {item!r}: expected KEY=V1,V2,... or KEY=[V1, V2, ...]",
                        "e.g. --grid branches.aux1.from=relu3_1,relu4_1")
    if text.startswith("["):
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise UserError(f"--grid {key}: not a YAML flow sequence: {str(err).splitlines()[0]}",
                            'quote it for the shell: --grid "KEY=[{type: a}, {type: b}]"') from None
        if not isinstance(values, list):
            raise UserError(f"--grid {key}: {text!r} is not a list", "write KEY=[V1, V2, ...]")
        texts = [value_text(v) for v in values]
    else:
        texts = [v.strip() for v in text.split(",")]
    if not texts or any(not t for t in texts):
        raise UserError(f"--grid {key}: an empty value in {text!r}", "give every value, separated by commas")
    if len(set(texts)) != len(texts):
        raise UserError(f"--grid {key}: a value is given twice in {text!r}", "give each value once")
    return key, texts


SPACE_TYPES = ("categorical", "float", "int")


def check_space(space: Any, where: str, pos: Pos | None = None) -> dict[str, dict]:
    """A search space: `KEY: {type: categorical, choices: [...]}` or `{type: float|int, low, high, log, step}`.
    Errors name `where` (and the key's line when the space was read with positions)."""
    if not isinstance(space, dict) or not space:
        raise UserError(f"{where}: a search space is a mapping KEY: {{type: ..., ...}}",
                        "e.g. losses.aux1.weight: {type: float, low: 0.01, high: 1, log: true}", pos)
    out = {}
    for key, dist in space.items():
        at = space.where(key) if hasattr(space, "where") else pos

        def bad(what: str, fix: str) -> UserError:
            return UserError(f"{where}: {key}: {what}", fix, at)

        kind = dist.get("type") if isinstance(dist, dict) else None
        if kind not in SPACE_TYPES:
            raise bad(f"type must be one of {', '.join(SPACE_TYPES)}",
                      "e.g. {type: categorical, choices: [relu3_2, relu4_1]}")
        allowed = {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log", "step"}
        extra = set(dist) - allowed
        if extra:
            raise bad(f"unknown field {sorted(extra)[0]!r}", f"a {kind} takes {sorted(allowed)}")
        if kind == "categorical":
            if not isinstance(dist.get("choices"), list) or not dist["choices"]:
                raise bad("choices must be a non-empty list", "choices: [a, b]")
            out[key] = {"type": kind, "choices": [value_text(plain(c)) for c in dist["choices"]]}
        else:
            number = float if kind == "float" else int
            try:
                low, high = number(dist["low"]), number(dist["high"])
            except (KeyError, TypeError, ValueError):
                raise bad(f"a {kind} needs numbers low and high", "low: 0.01, high: 1") from None
            if not low < high or (dist.get("log") and low <= 0):
                raise bad("need low < high (and low > 0 with log)", f"low {low}, high {high}")
            out[key] = {"type": kind, "low": low, "high": high, "log": bool(dist.get("log", False)),
                        **({"step": number(dist["step"])} if dist.get("step") is not None else {})}
    return out


def plain(value: Any) -> Any:
    """Parsed YAML (position-keeping mappings and lists) as plain dicts and lists."""
    return json.loads(json.dumps(value))


def slug(text: str, limit: int = 48) -> str:
    """A readable, path-safe piece of a name."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_.")[:limit] or "x"


@dataclass(frozen=True)
class Arm:
    """One assignment of the swept keys, trained once per seed."""

    params: tuple[tuple[str, Any], ...]  # (key, value) in the sweep's key order; values as Optuna holds them

    @property
    def values(self) -> dict[str, str]:
        return {k: value_text(v) for k, v in self.params}

    @property
    def id(self) -> str:
        text = json.dumps(self.values, sort_keys=True)
        short = "-".join(slug(Path(v).stem if k == SPEC_KEY else v, 16) for k, v in self.values.items())
        return f"{slug(short, 40)}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"

    @property
    def label(self) -> str:
        return ", ".join(v if k == ARM_KEY else f"{k}={v}" for k, v in self.values.items())


@dataclass
class Sweep:
    """What `netspec sweep` was asked: the spec, its fixed overrides, the swept keys, the seeds."""

    spec: Path | None
    overrides: list[str]
    grid: dict[str, list[str]] = field(default_factory=dict)
    # explicit arms: NAME -> {"spec": path or None, "values": {KEY: override text}}; swept as the key `arm`
    # (times the grid's combinations, or as one more categorical of a search)
    arms: dict[str, dict] = field(default_factory=dict)
    compare: list[tuple[str, str]] = field(default_factory=list)  # pairs of explicit arms: A - B on each exit
    space: dict[str, dict] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    baseline: dict[str, str] = field(default_factory=dict)
    trials: int | None = None  # search: the number of arms to sample
    pruner: str | None = None  # "median" | "none"; default: median for a search, none for a grid
    prune_startup: int = 5  # Optuna's MedianPruner default: no pruning before 5 arms completed
    name: str | None = None
    storage: str | None = None
    jobs: int = 1  # arms trained at once by this worker (each runs its seeds side by side)
    root: Path | None = None  # the spec's runs folder (filled by `prepare`)
    limits: Limits = field(default_factory=Limits)  # the command's: arms compile within them; `code` → --allow-custom

    @property
    def keys(self) -> list[str]:
        return [ARM_KEY] * bool(self.arms) + list(self.grid or self.space)

    def distributions(self) -> dict[str, dict]:
        """Each swept key's Optuna distribution: the explicit arms' names and a grid's values are categorical."""
        named = {ARM_KEY: list(self.arms)} if self.arms else {}
        named.update(self.grid)
        return {**{k: {"type": "categorical", "choices": v} for k, v in named.items()}, **self.space}

    @property
    def pruning(self) -> bool:
        return (self.pruner or ("median" if self.space else "none")) == "median"

    def definition(self) -> dict:
        """What makes two workers' sweeps the same sweep (recorded in the study)."""
        extra = {"arms": self.arms, "compare": [list(p) for p in self.compare]} if self.arms else {}
        return {"spec": str(self.spec) if self.spec else None, "overrides": self.overrides, "grid": self.grid,
                "space": self.space, "seeds": self.seeds, "trials": self.trials, **extra}

    @property
    def home(self) -> Path:
        return self.root / "sweeps" / self.name

    @property
    def runs(self) -> Path:
        """Where the arms' runs go (`train.out`): beside the sweep's records, apart from the spec's other runs
        (a sweep never moves the spec's `latest`)."""
        return self.home / "runs"

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.root / 'sweeps' / f'{self.name}.db').resolve()}"

    def explicit(self, arm: Arm) -> dict:
        return self.arms.get(arm.values.get(ARM_KEY), {})

    def spec_of(self, arm: Arm) -> Path:
        return Path(self.explicit(arm).get("spec") or arm.values.get(SPEC_KEY) or self.spec)

    def overrides_of(self, arm: Arm) -> list[str]:
        """The fixed overrides, then the explicit arm's keys, then the arm's swept values (`spec` and `arm`
        pick files and keys, they are no overrides)."""
        values = {**self.explicit(arm).get("values", {}),
                  **{k: v for k, v in arm.values.items() if k not in (SPEC_KEY, ARM_KEY)}}
        return self.overrides + [f"{k}={v}" for k, v in values.items()]

    def grid_arms(self) -> list[Arm]:
        """Every explicit arm times every combination of the grid's values (a grid or arms, not a search)."""
        keys = [ARM_KEY] * bool(self.arms) + list(self.grid)
        values = [list(self.arms)] * bool(self.arms) + list(self.grid.values())
        return [Arm(tuple(zip(keys, combo))) for combo in itertools.product(*values)]

    def baseline_of(self, arm: Arm, arms: list[Arm]) -> Arm | None:
        """The arm `arm` is compared with: the baseline's values for the baseline keys, `arm`'s for the others
        (so `--baseline spec=cnn8.yaml` pairs every CNDS-8 arm with the CNN-8 arm of the same init)."""
        if not self.baseline:
            return arms[0] if arms else None
        want = {**arm.values, **self.baseline}
        return next((a for a in arms if a.values == want), None)


SWEEP_KEYS = ("spec", "overrides", "grid", "arms", "compare", "space", "seeds", "baseline", "trials", "pruner",
              "prune_startup", "name")


def read_yaml_file(path: Path, what: str) -> Any:
    """A YAML file read with positions (every later error can say file:line)."""
    from netspec.compiler.parse import load_yaml, read_text

    return load_yaml(read_text(path, what), str(path))


def read_sweep_file(path: Path) -> dict:
    """A sweep file: a YAML mapping with a top-level `sweep:` section (spec, overrides, grid | space, arms,
    compare, seeds, baseline, trials, pruner, prune_startup, name). Paths in it are relative to the file; errors
    say file:line."""
    data = read_yaml_file(path, "sweep file")
    body = data.get("sweep") if isinstance(data, dict) else None
    if not isinstance(body, dict):
        raise UserError("a sweep file has one mapping `sweep:`", "see docs/reproduction.md for an example",
                        data.where("sweep") if isinstance(data, dict) else Pos(str(path), 1))
    extra = [k for k in body if k not in SWEEP_KEYS]
    if extra:
        raise UserError(f"sweep: unknown key {extra[0]!r}", did_you_mean(extra[0], SWEEP_KEYS), body.where(extra[0]))
    here = path.resolve().parent
    out = plain(body)
    if out.get("spec"):
        out["spec"] = _relative(here, out["spec"])
    grid = body.get("grid") or {}
    bad = [k for k, v in grid.items() if not isinstance(v, list) or not v] if isinstance(grid, dict) else [None]
    if bad:
        raise UserError("sweep.grid maps each key to a non-empty list of values", "grid: {KEY: [a, b]}",
                        grid.where(bad[0]) if bad[0] is not None else body.where("grid"))
    out["grid"] = {k: [_relative(here, value_text(v)) if k == SPEC_KEY else value_text(v) for v in vs]
                   for k, vs in plain(grid).items()}
    if body.get("space") is not None:
        out["space"] = check_space(body["space"], "sweep.space", body.where("space"))
    out["arms"] = read_arms(body, here)
    out["compare"] = read_compare(body, out["arms"])
    baseline = body.get("baseline")
    if isinstance(baseline, str):  # the name of an explicit arm
        baseline = {ARM_KEY: baseline}
    if baseline is not None and not isinstance(baseline, dict):
        raise UserError("sweep.baseline is an arm's name or a mapping {KEY: VALUE}",
                        "e.g. baseline: plain56, or baseline: {branches.aux1.from: relu3_2}", body.where("baseline"))
    if baseline:
        out["baseline"] = {k: _relative(here, value_text(v)) if k == SPEC_KEY else value_text(v)
                           for k, v in plain(baseline).items()}
    for key, low in (("seeds", 1), ("trials", 1), ("prune_startup", 0)):
        if key in body and (not isinstance(body[key], int) or isinstance(body[key], bool) or body[key] < low):
            raise UserError(f"sweep.{key} must be a whole number >= {low}", f"e.g. {key}: 3", body.where(key))
    if "pruner" in body and body["pruner"] not in ("median", "none"):
        raise UserError("sweep.pruner is median or none", "pruner: median", body.where("pruner"))
    if "name" in body and (not isinstance(body["name"], str) or slug(body["name"], 100) != body["name"]):
        raise UserError(f"sweep.name {body['name']!r} is not a plain file name", "use letters, digits, . _ + -",
                        body.where("name"))
    if not isinstance(out.get("overrides", []), list):
        raise UserError("sweep.overrides is a list of key=value", "overrides: [train.epochs=3]",
                        body.where("overrides"))
    return out


def read_arms(body: dict, here: Path) -> dict[str, dict]:
    """`arms: {NAME: {spec: FILE, KEY: VALUE, ...}}`: arms that differ in several keys at once (a multi-exit
    ResNet-20 vs a plain ResNet-56). An arm without `spec` uses the sweep's."""
    from netspec.compiler.tree import where

    arms = body.get("arms")
    if arms is None:
        return {}
    if not isinstance(arms, dict) or not arms:
        raise UserError("sweep.arms maps each arm's name to {spec: FILE, KEY: VALUE, ...}",
                        "e.g. arms: {plain: {spec: ../cnn8_fmnist.yaml}, branched: {spec: ../cnds8_fmnist.yaml}}",
                        body.where("arms"))
    out = {}
    for name, arm in arms.items():
        at = arms.where(name)
        if not isinstance(name, str) or slug(name, 100) != name:
            raise UserError(f"sweep.arms: the arm name {name!r} is not a plain name", "use letters, digits, . _ + -",
                            at)
        if not isinstance(arm, dict):
            raise UserError(f"sweep.arms.{name}: an arm is a mapping {{spec: FILE, KEY: VALUE, ...}}",
                            "e.g. {spec: ../preresnet56_fmnist.yaml, vars.n: 3}", where(arm, at))
        for key in arm:
            if not isinstance(key, str) or not key or key == ARM_KEY:
                raise UserError(f"sweep.arms.{name}: {key!r} is not a spec key",
                                "an arm sets `spec: FILE` and dotted spec keys, e.g. train.epochs: 3", arm.where(key))
        spec = arm.get(SPEC_KEY)
        if spec is not None and (not isinstance(spec, str) or not spec):
            raise UserError(f"sweep.arms.{name}.spec must be a file name", "e.g. spec: ../cnn8_fmnist.yaml",
                            arm.where(SPEC_KEY))
        out[name] = {"spec": _relative(here, spec) if spec else None,
                     "values": {k: value_text(v) for k, v in plain(arm).items() if k != SPEC_KEY}}
    return out


def read_compare(body: dict, arms: dict[str, dict]) -> list[tuple[str, str]]:
    """`compare: [[A, B], ...]`: pairs of explicit arms compared on every exit both have (A − B, paired)."""
    pairs = body.get("compare")
    if pairs is None:
        return []
    if not arms:
        raise UserError("sweep.compare pairs explicit arms, and there are none", "add `arms:` or drop `compare:`",
                        body.where("compare"))
    if not isinstance(pairs, list):
        raise UserError("sweep.compare is a list of pairs [A, B] of arm names", "e.g. compare: [[dks, ds]]",
                        body.where("compare"))
    out = []
    for i, pair in enumerate(pairs):
        at = pairs.where(i)
        if not isinstance(pair, list) or len(pair) != 2 or pair[0] == pair[1]:
            raise UserError(f"sweep.compare: {plain(pair)!r} is not a pair of two arms", "write [A, B] (A − B)", at)
        for name in pair:
            if name not in arms:
                raise UserError(f"sweep.compare: there is no arm {name!r}", did_you_mean(str(name), arms), at)
        out.append((pair[0], pair[1]))
    return out


def _relative(here: Path, value: str) -> str:
    """A spec path in a sweep file, relative to the file, as a path relative to the working directory if inside."""
    path = Path(value) if Path(value).is_absolute() else here / value
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def prepare(sweep: Sweep) -> None:
    """Check the sweep and fill in its runs folder and name. The spec with the fixed overrides (the first
    value of a swept `spec`) must compile: it names the runs folder."""
    from netspec.compiler import analyse

    if sweep.grid and sweep.space:
        raise UserError("a sweep has either a grid (--grid) or a search space (--space), not both",
                        "drop one of them")
    if not sweep.grid and not sweep.space and not sweep.arms:
        raise UserError("nothing to sweep", "add --grid KEY=V1,V2 (or --search tpe --space FILE.yaml)")
    check_arms(sweep)
    if sweep.space and not sweep.trials:
        raise UserError("a search needs a number of trials", "add --trials N")
    if not sweep.seeds:
        raise UserError("no seeds", "--seeds N (N >= 1; 3 or more for an interval)")
    for key in sweep.baseline:
        if key not in sweep.keys:
            raise UserError(f"--baseline {key}: not a swept key", f"the swept keys are {', '.join(sweep.keys)}")
        choices = sweep.distributions()[key].get("choices")
        if choices is not None and sweep.baseline[key] not in choices:
            raise UserError(f"--baseline {key}={sweep.baseline[key]}: not one of the swept values",
                            did_you_mean(sweep.baseline[key], choices))
    if not (sweep.spec or SPEC_KEY in sweep.grid or sweep.arms):
        raise UserError("no spec given", "netspec sweep SPEC --grid KEY=V1,V2 ...")
    spec, _ = analyse(sweep.spec_of(sweep.grid_arms()[0]), sweep.overrides, sweep.limits)
    sweep.root = Path(spec.train.out) if spec.train.out else Path("runs") / spec.name
    if not sweep.name:
        digest = hashlib.sha1(json.dumps(sweep.definition(), sort_keys=True).encode()).hexdigest()[:6]
        sweep.name = f"{slug('+'.join(k.rsplit('.', 1)[-1] for k in sweep.keys), 32)}-{digest}"
    if slug(sweep.name, 100) != sweep.name:
        raise UserError(f"sweep name {sweep.name!r} is not a plain file name", "use letters, digits, . _ + -")


def check_arms(sweep: Sweep) -> None:
    """Explicit arms beside a grid or a space: each arm has a spec, and no key is set both by an arm and by the
    grid (which would win is not obvious)."""
    if ARM_KEY in sweep.grid or ARM_KEY in sweep.space:
        raise UserError(f"the key {ARM_KEY!r} names a sweep file's explicit arms; it cannot be swept itself",
                        "define the arms under `arms:` in the sweep file")
    for name, arm in sweep.arms.items():
        if not (arm.get("spec") or sweep.spec or SPEC_KEY in sweep.grid):
            raise UserError(f"arm {name!r} has no spec", "give the arm `spec: FILE`, or the sweep a spec")
        own = [SPEC_KEY] * bool(arm.get("spec")) + list(arm["values"])
        swept = [k for k in own if k in sweep.grid or k in sweep.space]
        if swept:
            raise UserError(f"arm {name!r} sets {swept[0]!r}, which the sweep also sweeps",
                            f"drop {swept[0]!r} from the arm or from the grid/space")


# --- claims and records --------------------------------------------------------------------------------------

DONE = ("complete", "pruned", "failed")


class Claim:
    """netspec's claim on an arm: an exclusive `flock`, held while a worker trains it, gone when it dies."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a+")

    def take(self, wait: bool = False) -> bool:
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            return True
        except OSError:
            return False

    def release(self) -> None:
        if not self.file.closed:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()


def record_path(sweep: Sweep, arm_id: str) -> Path:
    return sweep.home / "arms" / f"{arm_id}.json"


def read_json_file(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_record(sweep: Sweep, arm: Arm, **fields) -> dict:
    path = record_path(sweep, arm.id)
    record = {**(read_json_file(path) or {}), "id": arm.id, "params": arm.values,
              "native": [[k, v] for k, v in arm.params], **fields}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(record, indent=1) + "\n")
    return record


def read_records(sweep: Sweep) -> dict[str, dict]:
    folder = sweep.home / "arms"
    found = {p.stem: read_json_file(p) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}
    return {k: v for k, v in found.items() if v}


# --- one arm: its seeds as ordinary runs ---------------------------------------------------------------------

def run_name(arm: Arm, seed: int) -> str:
    return f"{arm.id}-s{seed}"


def finished(run: Path) -> bool:
    """A run is finished when `netspec train` wrote its per-exit table (the last thing it does)."""
    return (run / "exits.json").is_file()


def read_metrics(run: Path) -> list[dict]:
    """The epoch records of a run's metrics.jsonl (complete lines only: it may be being written)."""
    try:
        text = (run / "metrics.jsonl").read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines(keepends=True):
        if line.endswith("\n") and line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def selection_key(records: list[dict]) -> str:
    """What arms are chosen on: validation top-1 of the main exit when the runs have a validation split."""
    return f"val_top1/{MAIN_HEAD}" if any(f"val_top1/{MAIN_HEAD}" in r for r in records) else f"top1/{MAIN_HEAD}"


def selected_record(records: list[dict]) -> dict | None:
    """The epoch a run's number is taken from: the best validation epoch (= best.pt) with a validation split,
    else the last evaluated epoch (never the best test epoch)."""
    key = selection_key(records)
    evaluated = [r for r in records if key in r]
    if not evaluated:
        return None
    return max(evaluated, key=lambda r: r[key]) if key.startswith("val_") else evaluated[-1]


def netspec_command() -> list[str]:
    exe = Path(sys.executable).with_name("netspec")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "netspec.cli"]


def seed_command(sweep: Sweep, arm: Arm, seed: int, resume: bool) -> list[str]:
    return [*netspec_command(), "train", str(sweep.spec_of(arm)), *sweep.overrides_of(arm),
            f"train.seed={seed}", f"train.run_name={run_name(arm, seed)}", f"train.out={sweep.runs}"] \
        + ["--resume"] * resume + ["--allow-custom"] * sweep.limits.code


def _die_with_parent() -> None:
    """In a training child: SIGTERM (save and stop) when the sweep that started it dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def wait_unlocked(run: Path, seconds: float = 120) -> None:
    """Wait until no process holds the run's lock (a training child of a killed worker still saving)."""
    from netspec.runtime.run import LOCK

    lock = run / LOCK
    end = time.monotonic() + seconds
    while lock.is_file() and time.monotonic() < end:
        with open(lock, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
                return
            except OSError:
                time.sleep(0.5)


def last_line(path: Path) -> str:
    try:
        lines = [x.strip() for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def compile_arm(sweep: Sweep, arm: Arm) -> dict:
    """Compile an arm's spec: its exits (depth, params, FLOPs) and the position of each swept attach point in
    the network (for plots in depth order); {"error": one line} when it does not compile."""
    from netspec.compiler import analyse
    from netspec.compiler.summary import summarise

    try:
        _, network = analyse(sweep.spec_of(arm), sweep.overrides_of(arm), sweep.limits)
    except UserError as err:
        return {"error": str(err).splitlines()[0]}
    summary = summarise(network)
    names = [n["name"] for n in summary["nodes"]]
    order = {k: names.index(v) for k, v in arm.values.items() if k.endswith(".from") and v in names}
    exits = [{"exit": h["head"], "depth": h["depth"], "params": h["params"], "flops": h["flops"]}
             for h in sorted(summary["heads"], key=lambda h: h["depth"])]
    return {"exits": exits, "order": order}


def train_arm(sweep: Sweep, arm: Arm, trial, stop: threading.Event, say: Callable[[str], None]) -> dict:
    """Train an arm's seeds side by side; report the mean selection top-1 per epoch to the trial and stop every
    seed when it is pruned. Returns the outcome: state complete | pruned | failed | interrupted."""
    runs = {s: sweep.runs / run_name(arm, s) for s in sweep.seeds}
    logs = sweep.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // (len(runs) * sweep.jobs))))
    procs: dict[int, subprocess.Popen] = {}
    how = {}
    for seed, run in runs.items():
        if finished(run):
            how[seed] = "reused"
            continue
        resume = run.is_dir()
        if resume:
            wait_unlocked(run)
        how[seed] = "resumed" if resume else "trained"
        with open(logs / f"{run.name}.log", "a") as log:
            procs[seed] = subprocess.Popen(seed_command(sweep, arm, seed, resume), stdout=log,
                                           stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
    doing = {"trained": "training", "resumed": "resuming", "reused": "finished before"}  # `how` is the outcome
    say(f"{arm.label}: " + ", ".join(f"seed {s} {doing[h]}" for s, h in how.items()))
    reported = 0
    outcome = None
    while outcome is None:
        if stop.is_set():
            outcome = {"state": "interrupted"}
            break
        done = all(p.poll() is not None for p in procs.values())
        records = {s: read_metrics(r) for s, r in runs.items()}
        key = selection_key([r for rs in records.values() for r in rs])
        common = set.intersection(*({r["epoch"] for r in rs if key in r} for rs in records.values()))
        for epoch in sorted(e for e in common if e > reported):
            value = statistics.mean(next(r[key] for r in rs if r["epoch"] == epoch) for rs in records.values())
            trial.report(value, epoch)
            reported = epoch
            if sweep.pruning and not done and trial.should_prune():  # finished runs are not cut short
                outcome = {"state": "pruned", "epoch": epoch, "value_at_prune": value}
                break
        crashed = any(p.poll() not in (None, 0) for p in procs.values())  # one seed failed: the arm has failed
        if outcome is None and (done or crashed):
            bad = {s: p.returncode for s, p in procs.items()
                   if p.returncode is not None and (p.returncode != 0 or not finished(runs[s]))}
            if bad:
                seed = min(bad)
                line = last_line(logs / f"{runs[seed].name}.log")
                outcome = {"state": "failed", "error": f"seed {seed}: exit {bad[seed]}: {line}"}
            else:
                outcome = {"state": "complete"}
        if outcome is None:
            stop.wait(1.0)
    for p in procs.values():  # pruned or interrupted: every seed saves a checkpoint and stops (exit 143)
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs.values():
        try:
            p.wait(timeout=300)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if outcome["state"] == "complete":
        chosen = [selected_record(read_metrics(r)) for r in runs.values()]
        if any(c is None for c in chosen):
            return {"state": "failed", "error": "a run has no evaluated epoch (train.eval_every > train.epochs?)"}
        outcome["value"] = statistics.mean(c[selection_key([c])] for c in chosen)
    outcome["how"] = how
    return outcome


# --- workers on one study ------------------------------------------------------------------------------------

def open_study(sweep: Sweep, sampler=None):
    """The sweep's Optuna study (made on first use), refusing a study made by another sweep definition."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = sweep.storage_url()
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=sweep.prune_startup) if sweep.pruning
              else optuna.pruners.NopPruner())
    guard = None
    if url.startswith("sqlite:///"):  # workers on one machine make the SQLite schema one at a time
        db = Path(url.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        guard = Claim(db.with_name(db.name + ".lock"))
        guard.take(wait=True)
    try:
        for attempt in range(5):  # workers on several machines making one RDB schema at once: the late retry
            try:
                storage = (optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})
                           if guard is not None else url)
                study = optuna.create_study(storage=storage, study_name=sweep.name, direction="maximize",
                                            sampler=sampler, pruner=pruner, load_if_exists=True)
                break
            except Exception:  # noqa: BLE001 - SQLAlchemy's errors of a concurrent schema creation
                if attempt == 4:
                    raise
                time.sleep(1 + attempt)
    finally:
        if guard is not None:
            guard.release()
    recorded = study.user_attrs.get("sweep")
    if recorded is None:
        study.set_user_attr("sweep", sweep.definition())
    elif recorded != json.loads(json.dumps(sweep.definition())):
        raise UserError(f"the study {sweep.name!r} in {url} belongs to another sweep (other spec, keys or seeds)",
                        "give this sweep another --name, or the same arguments as the study's first worker")
    return study


def next_arm(sweep: Sweep, arms: list[Arm]) -> tuple[Arm, Claim] | None:
    """The first arm not done whose claim this worker gets (grid order; then search arms left running)."""
    for arm in arms:
        if (read_json_file(record_path(sweep, arm.id)) or {}).get("state") in DONE:
            continue
        claim = Claim(sweep.home / "claims" / f"{arm.id}.lock")
        if claim.take():
            if (read_json_file(record_path(sweep, arm.id)) or {}).get("state") not in DONE:
                return arm, claim
        claim.release()
    return None


def left_running(sweep: Sweep) -> list[Arm]:
    """Arms of a search whose worker died: recorded, not done."""
    return [Arm(tuple((k, v) for k, v in r["native"])) for r in read_records(sweep).values()
            if r.get("state") not in DONE]


def new_search_arm(sweep: Sweep, study) -> tuple[Arm, Claim, Any] | None:
    """Take the next free slot of a search's budget (an exclusive file per slot: exactly `trials` arms over all
    workers), sample its arm with TPE, and claim it."""
    import optuna

    slots = sweep.home / "slots"
    slots.mkdir(parents=True, exist_ok=True)
    for k in range(sweep.trials):
        try:
            fd = os.open(slots / str(k), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        study.sampler = optuna.samplers.TPESampler(seed=k)
        trial = study.ask()
        arm = Arm(tuple((key, _suggest(trial, key, d)) for key, d in sweep.distributions().items()))
        os.write(fd, (arm.id + "\n").encode())
        os.close(fd)
        claim = Claim(sweep.home / "claims" / f"{arm.id}.lock")
        claim.take(wait=True)  # the same arm sampled twice: wait for the other worker, then reuse its result
        return arm, claim, trial
    return None


def _suggest(trial, key: str, dist: dict):
    if dist["type"] == "categorical":
        return trial.suggest_categorical(key, dist["choices"])
    suggest = trial.suggest_float if dist["type"] == "float" else trial.suggest_int
    return suggest(key, dist["low"], dist["high"], log=dist["log"], **({"step": dist["step"]} if "step" in dist else {}))


def fixed_trial(sweep: Sweep, study, arm: Arm):
    """An Optuna trial with exactly this arm's values (the worker chose the arm, not the sampler)."""
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # PartialFixedSampler
    study.sampler = optuna.samplers.PartialFixedSampler(dict(arm.params), optuna.samplers.RandomSampler())
    trial = study.ask()
    dists = sweep.distributions()
    for key, _ in arm.params:
        _suggest(trial, key, dists[key])
    return trial


def run_one(sweep: Sweep, study, arm: Arm, claim: Claim, trial, stop: threading.Event, say) -> None:
    """Train (or reuse) one claimed arm as one trial and record its outcome in the study and the arm record."""
    from optuna.trial import TrialState

    try:
        old = read_json_file(record_path(sweep, arm.id)) or {}
        if old.get("state") in DONE:  # a search sampled an arm already trained: its result, not a second run
            if old["state"] == "complete":
                study.tell(trial, old["value"])
            else:
                study.tell(trial, state=TrialState.PRUNED if old["state"] == "pruned" else TrialState.FAIL)
            say(f"{arm.label}: {old['state']} before (trial {old.get('trial')}), reused")
            return
        if old.get("trial") is not None:  # a worker died with this arm: close its trial
            study.tell(old["trial"], state=TrialState.FAIL, skip_if_finished=True)
        trial.set_user_attr("arm", arm.id)
        compiled = compile_arm(sweep, arm)
        write_record(sweep, arm, state="running", trial=trial.number, **compiled)
        if "error" in compiled:
            trial.set_user_attr("error", compiled["error"])
            study.tell(trial, state=TrialState.FAIL)
            write_record(sweep, arm, state="failed", error=compiled["error"])
            say(f"{arm.label}: FAILED (does not compile): {compiled['error']}")
            return
        outcome = train_arm(sweep, arm, trial, stop, say)
        state = outcome["state"]
        if state == "interrupted":
            study.tell(trial, state=TrialState.FAIL)
            write_record(sweep, arm, state="running", trial=None, how=outcome["how"])
            return
        if state == "complete":
            study.tell(trial, outcome["value"])
        else:
            if state == "failed":
                trial.set_user_attr("error", outcome["error"])
            study.tell(trial, state=TrialState.PRUNED if state == "pruned" else TrialState.FAIL)
        write_record(sweep, arm, **{k: v for k, v in outcome.items() if k != "state"}, state=state)
        detail = {"complete": f"value {100 * outcome.get('value', 0):.2f} %",
                  "pruned": f"pruned after epoch {outcome.get('epoch')}", "failed": outcome.get("error")}[state]
        say(f"{arm.label}: {state}: {detail}")
    finally:
        claim.release()


def work(sweep: Sweep, stop: threading.Event, say: Callable[[str], None]) -> None:
    """One worker: `sweep.jobs` threads, each taking arms until none is left for it."""
    study_lock = threading.Lock()

    def loop() -> None:
        study = open_study(sweep)
        while not stop.is_set():
            with study_lock:  # picking an arm and making its trial is quick; training is not under the lock
                if not sweep.space:
                    picked = next_arm(sweep, sweep.grid_arms())
                    job = (*picked, fixed_trial(sweep, study, picked[0])) if picked else None
                else:
                    picked = next_arm(sweep, left_running(sweep))
                    job = (*picked, fixed_trial(sweep, study, picked[0])) if picked else new_search_arm(sweep, study)
            if job is None:
                return
            run_one(sweep, study, *job, stop, say)

    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            loop()
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            errors.append(err)
            stop.set()

    threads = [threading.Thread(target=guarded, daemon=True) for _ in range(max(1, sweep.jobs))]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(timeout=0.5)
    if errors:
        raise errors[0]


# --- the answer ----------------------------------------------------------------------------------------------

def seed_numbers(sweep: Sweep, arm: Arm, metric: str = "top1") -> dict[int, dict[str, float]]:
    """Per seed, each exit's `metric` (test `top1`, or `val_top1`) at the selected epoch (only finished runs)."""
    out = {}
    for seed in sweep.seeds:
        run = sweep.runs / run_name(arm, seed)
        chosen = selected_record(read_metrics(run)) if finished(run) else None
        if chosen is not None:
            out[seed] = {k.removeprefix(f"{metric}/"): v for k, v in chosen.items() if k.startswith(f"{metric}/")}
    return out


def arm_order(sweep: Sweep, arms: list[Arm], records: dict[str, dict]) -> list[Arm]:
    """Arms in the order of the swept keys' values: attach points (`*.from`) in network depth order, numbers
    ascending, other values in the order given."""
    def rank(arm: Arm):
        rec = records.get(arm.id) or {}
        out = []
        for key, value in arm.params:
            if key.endswith(".from"):
                out.append(rec.get("order", {}).get(key, 10 ** 9))
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                out.append(value)
            else:
                choices = sweep.distributions().get(key, {}).get("choices") or []
                out.append(choices.index(value_text(value)) if value_text(value) in choices else 10 ** 9)
        return out
    return sorted(arms, key=rank)


def results(sweep: Sweep) -> dict:
    """Every arm of the sweep with its per-exit numbers, paired differences against its baseline and the
    sweep's other comparisons, the best arm."""
    records = read_records(sweep)
    arms = sweep.grid_arms() if not sweep.space else [Arm(tuple((k, v) for k, v in r["native"]))
                                                      for r in records.values()]
    arms = arm_order(sweep, arms, records)
    evaluated = [rs for rs in (read_metrics(sweep.runs / run_name(a, s)) for a in arms for s in sweep.seeds)
                 if any(f"top1/{MAIN_HEAD}" in r for r in rs)]  # a run before its first evaluation tells nothing
    on_val = {selection_key(rs) for rs in evaluated} == {f"val_top1/{MAIN_HEAD}"}
    out_arms = []
    for arm in arms:
        rec = records.get(arm.id, {})
        test, val = seed_numbers(sweep, arm), seed_numbers(sweep, arm, "val_top1")
        exits = {}
        for e in rec.get("exits", []):
            seeds = [s for s in sweep.seeds if e["exit"] in test.get(s, {})]
            exits[e["exit"]] = {**e, "seeds": seeds, "top1": [test[s][e["exit"]] for s in seeds],
                                "val_top1": [val.get(s, {}).get(e["exit"]) for s in seeds]}
        base = sweep.baseline_of(arm, arms)
        out_arms.append({"id": arm.id, "label": arm.label, "params": arm.values,
                         "state": rec.get("state", "not started"),
                         "error": rec.get("error"), "pruned_after_epoch": rec.get("epoch"),
                         "value": rec.get("value"), "baseline": base.id if base else None,
                         "is_baseline": base is not None and base.id == arm.id, "trial": rec.get("trial"),
                         "runs": [str(sweep.runs / run_name(arm, s)) for s in sweep.seeds], "exits": exits})
    by_id = {a["id"]: a for a in out_arms}
    for a in out_arms:
        base = by_id.get(a["baseline"])
        for head, e in a["exits"].items():
            mine = a["state"] == "complete" and base is not None and base is not a and head in base["exits"]
            e["vs_baseline"] = pair_exits(a, head, base, head) if mine else None
            e["verdict"] = verdict(e["vs_baseline"]) if e["vs_baseline"] else None
    complete = [a for a in out_arms if a["state"] == "complete" and a["value"] is not None]
    best = max(complete, key=lambda a: a["value"])["id"] if complete else None
    return {"sweep": sweep.name, "definition": sweep.definition(), "baseline": sweep.baseline,
            "storage": sweep.storage_url(), "runs": str(sweep.runs),
            "selection": f"val_top1/{MAIN_HEAD}" if on_val else f"top1/{MAIN_HEAD}",
            "selected_on": "validation" if on_val else "test", "best": best, "arms": out_arms,
            "comparisons": comparisons(sweep, out_arms, on_val)}


def pair_exits(a: dict, head_a: str, b: dict, head_b: str) -> dict | None:
    """The paired difference of two arms' test top-1 (exit `head_a` of a − exit `head_b` of b) over their common
    seeds."""
    ea, eb = a["exits"][head_a], b["exits"][head_b]
    mine, theirs = dict(zip(ea["seeds"], ea["top1"])), dict(zip(eb["seeds"], eb["top1"]))
    both = [s for s in mine if s in theirs]
    return paired([mine[s] for s in both], [theirs[s] for s in both])


def comparisons(sweep: Sweep, arms: list[dict], on_val: bool) -> list[dict]:
    """The paired differences beyond the per-exit tables:
    - each `compare: [A, B]` pair of explicit arms (at the same values of the other swept keys), on every exit
      both have;
    - for an arm with exits its baseline lacks (a multi-exit net against a plain one), its best exit against the
      baseline's main exit. The best exit is the one with the highest mean over seeds of validation top-1 at the
      runs' selected epochs (test top-1 when the runs have no validation split: results.md says so)."""
    by_values = {json.dumps(a["params"], sort_keys=True): a for a in arms}
    out = []

    def add(a: dict, head_a: str, b: dict, head_b: str, kind: str) -> None:
        diff = pair_exits(a, head_a, b, head_b)
        out.append({"kind": kind, "a": a["id"], "a_label": a["label"], "a_exit": head_a, "b": b["id"],
                    "b_label": b["label"], "b_exit": head_b, "diff": diff, "verdict": verdict(diff)})

    for first, second in sweep.compare:
        for a in arms:
            b = by_values.get(json.dumps({**a["params"], ARM_KEY: second}, sort_keys=True))
            if a["params"].get(ARM_KEY) == first and b is not None:
                for head in [h for h in a["exits"] if h in b["exits"]]:
                    add(a, head, b, head, "compare")
    score = "val_top1" if on_val else "top1"
    for a in arms:
        base = next((b for b in arms if b["id"] == a["baseline"]), None)
        if (base is None or base is a or a["state"] != "complete" or MAIN_HEAD not in base["exits"]
                or set(a["exits"]) <= set(base["exits"]) or not all(e["top1"] for e in a["exits"].values())):
            continue
        best = max(a["exits"], key=lambda h: statistics.mean(a["exits"][h][score]))
        add(a, best, base, MAIN_HEAD, "best exit")
    return out


def markdown(data: dict) -> str:
    """results.md: one table per exit, then the failed and pruned arms and the best arm."""
    from netspec.compiler.summary import human

    arms = data["arms"]
    by_id = {a["id"]: a for a in arms}
    heads = list(dict.fromkeys(h for a in arms for h in a["exits"]))
    if data["selected_on"] == "validation":
        said = ("numbers: test top-1 at each run's best validation epoch (best.pt); arms chosen on validation "
                "top-1 of the main exit")
    else:
        said = ("numbers: test top-1 at each run's last epoch; the runs have no validation split, so the best arm "
                "was chosen on the **test split** (add data.val_split for an unbiased choice)")
    lines = [f"### sweep `{data['sweep']}`", "", said + "; Δ: paired over seeds, mean [95 % t interval], points", ""]
    for head in heads:
        lines += [f"**exit {head}**", "",
                  "| arm | state | top-1 % (mean ± std) | per seed | params | FLOPs | Δ vs baseline | verdict |",
                  "|---|---|---|---|---|---|---|---|"]
        for a in arms:
            e = a["exits"].get(head)
            if e is None:
                continue
            base = " (baseline)" if a["is_baseline"] else ""
            lines.append(f"| {a['label']}{base} | {a['state']} | {mean_std(e['top1'])} | "
                         f"{', '.join(f'{100 * v:.2f}' for v in e['top1']) or '–'} | {human(e['params'])} | "
                         f"{human(e['flops'])} | {fmt_paired(e['vs_baseline'])} | {e['verdict'] or '–'} |")
        lines.append("")
    if data.get("comparisons"):
        chosen = "validation" if data["selected_on"] == "validation" else "**test**"
        lines += ["**paired comparisons** (test top-1; a best exit is chosen on the mean " + chosen + " top-1 of "
                  "the arm's exits)", "", "| A − B | Δ points, mean [95 % CI] | per seed | verdict |",
                  "|---|---|---|---|"]
        for c in data["comparisons"]:
            a_exit = f"best exit {c['a_exit']}" if c["kind"] == "best exit" else c["a_exit"]
            per_seed = ", ".join(f"{d:+.2f}" for d in c["diff"]["per_seed"]) if c["diff"] else "–"
            lines.append(f"| {c['a_label']} ({a_exit}) − {c['b_label']} ({c['b_exit']}) | {fmt_paired(c['diff'])} | "
                         f"{per_seed} | {c['verdict']} |")
        lines.append("")
    for a in arms:
        if a["state"] == "failed":
            lines.append(f"- failed: {a['label']}: {a['error']}")
        elif a["state"] == "pruned":
            lines.append(f"- pruned: {a['label']} after epoch {a['pruned_after_epoch']}")
        elif a["state"] != "complete":
            lines.append(f"- {a['state']}: {a['label']}")
    if data["best"]:
        best = by_id[data["best"]]
        lines.append(f"- best arm (on {data['selected_on']} top-1 of {MAIN_HEAD}, mean over seeds): {best['label']} "
                     f"({100 * best['value']:.2f} %); its spec: {data.get('best_spec', '–')}")
    return "\n".join(lines) + "\n"


def plot(data: dict, keys: list[str], path: Path) -> Path | None:
    """Per exit, test top-1 vs the swept key with the most values (in the table's order: attach points by depth),
    one line per combination of the other keys; bars = std, dots = seeds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    arms = [a for a in data["arms"] if any(e["top1"] for e in a["exits"].values())]
    if not arms:
        return None
    heads = list(dict.fromkeys(h for a in arms for h in a["exits"]))
    first = max(keys, key=lambda k: len({a["params"][k] for a in arms}))  # the key with the most values
    xs = list(dict.fromkeys(a["params"][first] for a in arms))
    fig = Figure(figsize=(max(4.0, 3.2 * len(heads)), 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(heads), squeeze=False)[0]
    for ax, head in zip(axes, heads):
        groups: dict[str, list[dict]] = {}
        for a in arms:
            rest = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in a["params"].items() if k != first)
            groups.setdefault(rest, []).append(a)
        for rest, members in groups.items():
            pts = [(xs.index(a["params"][first]), [100 * v for v in a["exits"][head]["top1"]]) for a in members
                   if head in a["exits"] and a["exits"][head]["top1"]]
            if not pts:
                continue
            mean = [statistics.mean(v) for _, v in pts]
            std = [statistics.stdev(v) if len(v) > 1 else 0 for _, v in pts]
            line = ax.errorbar([x for x, _ in pts], mean, yerr=std, capsize=3, marker="o", label=rest or None)
            for x, v in pts:
                ax.scatter([x] * len(v), v, s=8, color=line[0].get_color(), alpha=0.6, zorder=3)
        ax.set_xticks(range(len(xs)), [Path(x).stem if first == SPEC_KEY else x for x in xs], rotation=30,
                      ha="right", fontsize=7)
        ax.set(title=f"exit {head}", xlabel=first, ylabel="test top-1 %")
        ax.grid(alpha=0.3)
        if any(ax.get_legend_handles_labels()[1]):
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def write_results(sweep: Sweep) -> dict:
    """results.json, results.md, the plot and the best arm's spec (best.yaml) in the sweep's folder."""
    data = results(sweep)
    home = sweep.home
    home.mkdir(parents=True, exist_ok=True)
    if data["best"]:
        best = next(a for a in data["arms"] if a["id"] == data["best"])
        resolved = yaml.safe_load((Path(best["runs"][0]) / "spec.yaml").read_text())
        for key in ("seed", "run_name", "out"):
            resolved.get("train", {}).pop(key, None)
        header = (f"# The best arm of sweep {sweep.name}: {best['label']}\n# (resolved spec of "
                  f"{best['runs'][0]}; train.seed / run_name / out left to their defaults)\n")
        atomic_write(home / "best.yaml", header + yaml.safe_dump(resolved, sort_keys=False))
        data["best_spec"] = str(home / "best.yaml")
    picture = plot(data, sweep.keys, home / "sweep.png")
    data["plot"] = str(picture) if picture else None
    atomic_write(home / "results.json", json.dumps(data, indent=1) + "\n")
    atomic_write(home / "results.md", markdown(data))
    return data
