"""`netspec sweep`: grid and space parsing, the paired statistics, and whole sweeps of a tiny net (1-2 epochs on
128 Fashion-MNIST images): the table, two workers on one SQLite study, a killed sweep resumed, pruning, and an
arm that does not compile."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netspec.errors import UserError
from netspec.runtime import sweep as sw

TINY = """\
name: tiny
input: {shape: [1, 28, 28], mean: [0.286], std: [0.353]}
classes: 10
nodes:
  - {name: conv1, op: conv, out: 4, kernel: 3, pad: 1}
  - {name: relu1, op: relu}
  - {name: pool1, op: maxpool, kernel: 2, stride: 2}
  - {name: conv2, op: conv, out: 4, kernel: 3, pad: 1}
  - {name: relu2, op: relu}
  - {name: pool2, op: maxpool, kernel: 2, stride: 2}
  - {name: fc, op: fc, out: 10}
branches:
  aux1:
    from: relu1
    nodes:
      - {name: pool, op: avgpool, kernel: 4, stride: 4}
      - {name: fc, op: fc, out: 10}
losses:
  main: {type: cross_entropy, head: main}
  aux1: {type: cross_entropy, head: aux1, weight: 0.3}
data: {source: fashion-mnist, train_limit: 128, test_limit: 128}
train: {epochs: 1, batch_size: 64, device: cpu, optimizer: {type: sgd, lr: 0.05, momentum: 0.9}}
"""
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_data = pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST (dataset-fashion-mnist) not installed")


# --- parsing and statistics ----------------------------------------------------------------------------------

def test_grid_values_are_scalars_or_one_yaml_flow_sequence():
    assert sw.parse_grid("branches.aux1.from=relu3_1, relu4_1") == ("branches.aux1.from", ["relu3_1", "relu4_1"])
    key, values = sw.parse_grid("losses.aux1.schedule=[{type: cnds}, {type: constant}]")
    assert key == "losses.aux1.schedule" and values == ["{type: cnds}", "{type: constant}"]
    assert sw.parse_grid("init.weight=[kaiming, {type: gaussian, std: 0.01}]")[1] == [
        "kaiming", "{std: 0.01, type: gaussian}"]
    for bad in ("nokey", "k=", "=a,b", "k=a,,b", "k=a,a", "k=[a, {b: ]", "k=[]"):
        with pytest.raises(UserError):
            sw.parse_grid(bad)


@pytest.mark.parametrize("space, fragment", [
    ({"k": {"type": "normal"}}, "type must be one of"),
    ({"k": {"type": "float", "low": 1, "high": 0.1}}, "low < high"),
    ({"k": {"type": "float", "low": 0, "high": 1, "log": True}}, "low > 0"),
    ({"k": {"type": "int", "low": "a", "high": 3}}, "numbers low and high"),
    ({"k": {"type": "categorical", "choices": []}}, "non-empty"),
    ({"k": {"type": "categorical", "choices": [1], "low": 0}}, "unknown field 'low'"),
    ([], "a search space is a mapping"),
])
def test_a_bad_search_space_is_one_line_naming_the_key(space, fragment):
    with pytest.raises(UserError, match=fragment):
        sw.check_space(space, "space.yaml")


def test_paired_difference_and_its_t_interval():
    p = sw.paired([0.80, 0.82, 0.84], [0.79, 0.80, 0.81])  # differences 1, 2, 3 points
    assert p["per_seed"] == pytest.approx([1, 2, 3]) and p["mean"] == pytest.approx(2) and p["std"] == pytest.approx(1)
    half = 4.303 / 3 ** 0.5  # t(0.975, 2 df) · s / √n
    assert p["ci95"] == pytest.approx([2 - half, 2 + half])
    assert sw.verdict(p) == "not resolved"  # 2 − 2.48 < 0 < 2 + 2.48
    assert sw.verdict(sw.paired([0.82, 0.83, 0.84], [0.8, 0.8, 0.8])) == "better"
    assert sw.verdict(sw.paired([0.7, 0.71], [0.8, 0.8])) == "worse"
    assert sw.paired([0.8], [0.7]) is None and sw.verdict(None) == "not measured"
    assert sw.t975(30) == 2.042 and sw.t975(60) == pytest.approx(2.000, abs=1e-3)  # tables: 2.000 at 60 df
    assert sw.t975(1000) == pytest.approx(1.962, abs=1e-3)


def test_each_arm_is_compared_with_the_arm_differing_only_in_the_baseline_keys():
    sweep = sw.Sweep(spec=None, overrides=[], grid={"spec": ["cnn8.yaml", "cnds8.yaml"], "init.weight": ["a", "b"]},
                     baseline={"spec": "cnn8.yaml"})
    arms = sweep.grid_arms()
    for arm in arms:
        base = sweep.baseline_of(arm, arms)
        assert base.values == {"spec": "cnn8.yaml", "init.weight": arm.values["init.weight"]}
    assert sw.Sweep(spec=None, overrides=[], grid={"k": ["a", "b"]}).baseline_of(arms[1], arms) == arms[0]


def test_arm_names_are_stable_path_components():
    arm = sw.Arm((("init.weight", "{type: gaussian, std: 0.01}"), ("spec", "specs/../specs/cnn8.yaml")))
    assert arm.id == sw.Arm(arm.params).id and "/" not in arm.id and " " not in arm.id and len(arm.id) < 60
    assert arm.id != sw.Arm((("init.weight", "{type: gaussian, std: 0.02}"), arm.params[1])).id
    assert arm.overrides() == ["init.weight={type: gaussian, std: 0.01}"]  # `spec` picks the file, no override


def test_the_number_is_taken_at_the_best_validation_epoch_else_the_last_epoch():
    val = [{"epoch": 1, "val_top1/main": 0.5, "top1/main": 0.9}, {"epoch": 2, "val_top1/main": 0.6, "top1/main": 0.7},
           {"epoch": 3, "val_top1/main": 0.55, "top1/main": 0.8}]
    assert sw.selection_key(val) == "val_top1/main" and sw.selected_record(val)["epoch"] == 2
    test = [{"epoch": 1, "top1/main": 0.9}, {"epoch": 2}, {"epoch": 3, "top1/main": 0.8}, {"epoch": 4}]
    assert sw.selection_key(test) == "top1/main" and sw.selected_record(test)["epoch"] == 3  # not the best test
    assert sw.selected_record([{"epoch": 1}]) is None


# --- whole sweeps --------------------------------------------------------------------------------------------

def netspec(args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NETSPEC_BUILD": str(cwd / "build")}
    return subprocess.Popen([sys.executable, "-m", "netspec.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def trials(db: Path, name: str) -> list:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}").get_trials(deepcopy=False)


def epochs(home: Path, arm_id: str, seed: int = 0) -> list[int]:
    """The epochs a run's metrics.jsonl records: an epoch trained twice would be there twice."""
    return [r["epoch"] for r in sw.read_metrics(home / "runs" / f"{arm_id}-s{seed}")]


@needs_data
def test_a_grid_sweep_end_to_end_with_its_table_and_a_failed_arm(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    rc, out, err = finish(netspec(["sweep", "tiny.yaml", "--grid", "branches.aux1.from=relu1,relu2,nope",
                                   "--seeds", "2", "--name", "s", "--json"], tmp_path))
    assert rc == 0, err
    data = json.loads(out)
    arms = {a["params"]["branches.aux1.from"]: a for a in data["arms"]}
    assert [a["state"] for a in arms.values()] == ["complete", "complete", "failed"]
    assert "nope" in arms["nope"]["error"] and "\n" not in arms["nope"]["error"]  # its one-line compile error
    relu2 = arms["relu2"]["exits"]
    assert len(relu2["main"]["top1"]) == 2 and relu2["main"]["vs_baseline"]["n"] == 2
    assert relu2["main"]["verdict"] in ("better", "worse", "not resolved")
    assert relu2["aux1"]["params"] < arms["relu1"]["exits"]["aux1"]["params"]  # later attach point: smaller input
    assert arms["relu1"]["is_baseline"] and data["selected_on"] == "test" and data["best"] in (
        arms["relu1"]["id"], arms["relu2"]["id"])
    home = tmp_path / "runs" / "tiny" / "sweeps" / "s"
    md = (home / "results.md").read_text()
    assert "**exit main**" in md and "**exit aux1**" in md and "- failed: branches.aux1.from=nope" in md
    assert "chosen on the **test split**" in md
    assert (home / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    states = sorted(t.state.name for t in trials(tmp_path / "runs" / "tiny" / "sweeps" / "s.db", "s"))
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]
    from netspec.compiler import analyse

    best = next(a for a in data["arms"] if a["id"] == data["best"])
    spec, _ = analyse(home / "best.yaml")  # the best arm's spec compiles on its own
    assert spec.branches["aux1"].from_ == best["params"]["branches.aux1.from"]


@needs_data
def test_two_workers_on_one_sqlite_study_train_every_arm_once(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    words = ["sweep", "tiny.yaml", "--grid", "train.optimizer.lr=0.01,0.02,0.05", "--seeds", "1", "--name", "w"]
    workers = [netspec(words, tmp_path) for _ in range(2)]
    for w in workers:
        rc, _, err = finish(w)
        assert rc == 0, err
    done = trials(tmp_path / "runs" / "tiny" / "sweeps" / "w.db", "w")
    assert sorted(t.state.name for t in done) == ["COMPLETE"] * 3
    assert sorted(t.params["train.optimizer.lr"] for t in done) == ["0.01", "0.02", "0.05"]
    home = tmp_path / "runs" / "tiny" / "sweeps" / "w"
    assert all(epochs(home, arm) == [1] for arm in sw.read_records(sw.Sweep(
        spec=None, overrides=[], name="w", root=tmp_path / "runs" / "tiny")))


@needs_data
def test_a_killed_sweep_resumes_without_training_a_finished_arm_again(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    words = ["sweep", "tiny.yaml", "train.epochs=2", "--grid", "train.optimizer.lr=0.01,0.05", "--seeds", "1",
             "--name", "k"]
    home = tmp_path / "runs" / "tiny" / "sweeps" / "k"
    first = netspec(words, tmp_path)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # kill -9 once the first arm is complete
        records = list((home / "arms").glob("*.json")) if (home / "arms").is_dir() else []
        if any(json.loads(p.read_text()).get("state") == "complete" for p in records):
            break
        time.sleep(0.5)
    first.kill()
    first.communicate()
    rc, _, err = finish(netspec(words, tmp_path))
    assert rc == 0, err
    records = sw.read_records(sw.Sweep(spec=None, overrides=[], name="k", root=tmp_path / "runs" / "tiny"))
    assert sorted(r["state"] for r in records.values()) == ["complete", "complete"]
    assert all(epochs(home, arm) == [1, 2] for arm in records)  # no epoch trained twice
    assert [r["how"] for r in records.values()].count({"0": "trained"}) >= 1  # the first arm: by the first worker
    states = [t.state.name for t in trials(tmp_path / "runs" / "tiny" / "sweeps" / "k.db", "k")]
    assert states.count("COMPLETE") == 2  # the killed worker's trial (if any) is closed as FAIL, not rerun


@needs_data
def test_pruning_stops_every_seed_of_an_arm(tmp_path):
    import optuna

    (tmp_path / "tiny.yaml").write_text(TINY)
    db = tmp_path / "runs" / "tiny" / "sweeps" / "p.db"
    db.parent.mkdir(parents=True)
    study = optuna.create_study(study_name="p", storage=f"sqlite:///{db}", direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=1.0, intermediate_values={e: 1.0 for e in range(1, 41)}))
    # 40 short epochs: the sweep sees epoch 1 of both seeds while they train (it polls every second)
    rc, out, err = finish(netspec(["sweep", "tiny.yaml", "train.epochs=40", "--grid", "train.optimizer.lr=0.05",
                                   "--seeds", "2", "--name", "p", "--pruner", "median", "--prune-startup", "1",
                                   "--json"], tmp_path))
    assert rc == 0, err
    arm = json.loads(out)["arms"][0]
    assert arm["state"] == "pruned" and arm["pruned_after_epoch"] < 40
    assert not any((Path(run) / "exits.json").exists() for run in arm["runs"])  # neither seed ran to its end
    assert "pruned" in (tmp_path / "runs" / "tiny" / "sweeps" / "p" / "results.md").read_text()
    assert [t.state.name for t in trials(db, "p")] == ["COMPLETE", "PRUNED"]


@needs_data
def test_a_tpe_search_samples_exactly_its_trials_and_trains_an_arm_once(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "space.yaml").write_text("train.optimizer.lr: {type: categorical, choices: [0.01, 0.05]}\n"
                                         "losses.aux1.weight: {type: float, low: 0.1, high: 1, log: true}\n")
    rc, out, err = finish(netspec(["sweep", "tiny.yaml", "--search", "tpe", "--trials", "2", "--space", "space.yaml",
                                   "--seeds", "1", "--name", "t", "--json"], tmp_path))
    assert rc == 0, err
    data = json.loads(out)
    assert len(data["arms"]) == 2 and all(a["state"] == "complete" for a in data["arms"])
    done = trials(tmp_path / "runs" / "tiny" / "sweeps" / "t.db", "t")
    assert [t.state.name for t in done] == ["COMPLETE", "COMPLETE"]
    assert all(0.1 <= t.params["losses.aux1.weight"] <= 1 for t in done)
    home = tmp_path / "runs" / "tiny" / "sweeps" / "t"
    assert all(epochs(home, a["id"]) == [1] for a in data["arms"])
    assert data["selected_on"] == "test" and (home / "best.yaml").is_file()
