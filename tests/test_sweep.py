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
    sweep = sw.Sweep(spec=None, overrides=["train.epochs=3"])
    assert sweep.overrides_of(arm) == ["train.epochs=3", "init.weight={type: gaussian, std: 0.01}"]  # `spec`: a file
    assert sweep.spec_of(arm) == Path("specs/../specs/cnn8.yaml")


# --- explicit arms ---------------------------------------------------------------------------------------------

ARMS_FILE = """\
sweep:
  name: mw
  arms:
    mw20: {spec: ../mw.yaml}
    plain20: {spec: ../plain.yaml, vars.n: 3, "train.optimizer": {type: sgd, lr: 0.05}}
    plain56: {spec: ../plain.yaml}
  grid: {train.epochs: [1, 2]}
  baseline: plain56
  compare: [[mw20, plain20]]
  overrides: [data.train_limit=64]
"""


def test_explicit_arms_differ_in_several_keys_and_are_crossed_with_the_grid(tmp_path, monkeypatch):
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "mw.yaml").write_text(ARMS_FILE)
    monkeypatch.chdir(tmp_path)
    data = sw.read_sweep_file(Path("sweeps/mw.yaml"))
    assert data["arms"]["plain20"] == {"spec": "plain.yaml", "values": {
        "vars.n": "3", "train.optimizer": "{lr: 0.05, type: sgd}"}}  # paths relative to the file
    assert data["baseline"] == {"arm": "plain56"} and data["compare"] == [("mw20", "plain20")]
    sweep = sw.Sweep(spec=None, overrides=data["overrides"], grid=data["grid"], arms=data["arms"],
                     baseline=data["baseline"], compare=data["compare"])
    arms = sweep.grid_arms()
    assert [a.label for a in arms] == ["mw20, train.epochs=1", "mw20, train.epochs=2", "plain20, train.epochs=1",
                                       "plain20, train.epochs=2", "plain56, train.epochs=1", "plain56, train.epochs=2"]
    plain20 = arms[3]
    assert sweep.spec_of(plain20) == Path("plain.yaml") and sweep.spec_of(arms[0]) == Path("mw.yaml")
    assert sweep.overrides_of(plain20) == ["data.train_limit=64", "vars.n=3", "train.optimizer={lr: 0.05, type: sgd}",
                                          "train.epochs=2"]
    assert sweep.baseline_of(plain20, arms).label == "plain56, train.epochs=2"  # the baseline by the arm's name
    assert sweep.distributions()["arm"] == {"type": "categorical", "choices": ["mw20", "plain20", "plain56"]}
    assert sweep.keys == ["arm", "train.epochs"] and "arms" in sweep.definition()
    assert "arms" not in sw.Sweep(spec=None, overrides=[], grid={"k": ["a"]}).definition()  # old studies: same


def test_a_search_samples_the_explicit_arm_as_a_categorical(tmp_path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sweep = sw.Sweep(spec=None, overrides=[], arms={"a": {"spec": "a.yaml", "values": {}},
                                                    "b": {"spec": "b.yaml", "values": {}}},
                     space={"train.optimizer.lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True}},
                     trials=3, name="s", root=tmp_path)
    study = optuna.create_study(direction="maximize")
    names = []
    for _ in range(3):
        arm, claim, trial = sw.new_search_arm(sweep, study)
        claim.release()
        study.tell(trial, 0.5)
        names.append(arm.values["arm"])
        assert [k for k, _ in arm.params] == ["arm", "train.optimizer.lr"] and trial.params["arm"] in ("a", "b")
    assert sw.new_search_arm(sweep, study) is None and set(names) <= {"a", "b"}


def sweep_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        sw.read_sweep_file(path)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("body, line, fragment", [
    ("  arms: [a, b]", 2, "sweep.arms maps each arm's name"),
    ("  arms: {}", 2, "sweep.arms maps each arm's name"),
    ("  arms:\n    a/b: {spec: x.yaml}", 3, "'a/b' is not a plain name"),
    ("  arms:\n    a: x.yaml", 3, "sweep.arms.a: an arm is a mapping"),
    ("  arms:\n    a: {spec: x.yaml}\n    b:\n      arm: 1", 5, "'arm' is not a spec key"),
    ("  arms:\n    a: {spec: [x.yaml]}", 3, "sweep.arms.a.spec must be a file name"),
    ("  arms: {a: {spec: x.yaml}, b: {spec: y.yaml}}\n  compare: [[a, c]]", 3, "there is no arm 'c'"),
    ("  arms: {a: {spec: x.yaml}, b: {spec: y.yaml}}\n  compare: [a, b]", 3, "is not a pair of two arms"),
    ("  arms: {a: {spec: x.yaml}, b: {spec: y.yaml}}\n  compare:\n    - [a, b]\n    - [b, b]", 5,
     "is not a pair of two arms"),
    ("  arms: {a: {spec: x.yaml}}\n  compare: {a: b}", 3, "sweep.compare is a list of pairs"),
    ("  grid: {k: [1]}\n  compare: [[a, b]]", 3, "there are none"),
    ("  arms: {a: {spec: x.yaml}}\n  baseline: [a]", 3, "an arm's name or a mapping"),
    ("  grid: {k: [1]}\n  seeds: three", 3, "sweep.seeds must be a whole number >= 1"),
    ("  grid: {k: [1]}\n  trials: 0", 3, "sweep.trials must be a whole number >= 1"),
    ("  grid: {k: [1]}\n  pruner: mean", 3, "sweep.pruner is median or none"),
    ("  grid: {k: [1]}\n  name: a b", 3, "is not a plain file name"),
    ("  grid:\n    k: [1]\n    j: []", 4, "non-empty list"),
    ("  arm: {a: {spec: x.yaml}}", 2, "unknown key 'arm' — did you mean 'arms'?"),
    ("  space:\n    k: {type: normal}", 3, "sweep.space: k: type must be one of"),
])
def test_a_bad_sweep_file_is_one_line_at_its_line(tmp_path, body, line, fragment):
    message = sweep_error(tmp_path, "sweep:\n" + body + "\n")
    assert message.startswith(f"{tmp_path / 's.yaml'}:{line}: ") and fragment in message, message


@pytest.mark.parametrize("text, line", [("sweep: [1]\n", 1), ("# a comment\nother: 1\n", 2), ("sweep: {a: [}\n", 1)])
def test_a_sweep_file_without_its_mapping_says_where(tmp_path, text, line):
    assert sweep_error(tmp_path, text).startswith(f"{tmp_path / 's.yaml'}:{line}: ")


@pytest.mark.parametrize("kw, fragment", [
    ({"grid": {"arm": ["a"]}}, "cannot be swept itself"),
    ({"grid": {"vars.n": ["3", "5"]}}, "arm 'a' sets 'vars.n', which the sweep also sweeps"),
    ({"grid": {"spec": ["x.yaml"]}}, "arm 'a' sets 'spec'"),
    ({"space": {"vars.n": {"type": "int", "low": 1, "high": 3, "log": False}}, "trials": 2}, "sets 'vars.n'"),
    ({"baseline": {"arm": "c"}}, "not one of the swept values"),
    ({"arms": {"a": {"spec": None, "values": {}}}}, "arm 'a' has no spec"),
])
def test_explicit_arms_that_clash_with_the_grid_are_refused_before_training(kw, fragment):
    arms = {"a": {"spec": "x.yaml", "values": {"vars.n": "3"}}, "b": {"spec": "y.yaml", "values": {}}}
    sweep = sw.Sweep(spec=None, overrides=[], **{"arms": arms, **kw})
    with pytest.raises(UserError, match=fragment):
        sw.prepare(sweep)


def fake_arm(sweep: sw.Sweep, arm: sw.Arm, per_seed: list[dict[str, tuple[float, float]]]) -> None:
    """An arm as a finished sweep leaves it: its record and one finished run per seed, whose single epoch holds
    (test top-1, validation top-1) per exit."""
    heads = list(per_seed[0])
    sw.write_record(sweep, arm, state="complete", value=0.5,
                    exits=[{"exit": h, "depth": 1, "params": 1, "flops": 1} for h in heads])
    for seed, numbers in zip(sweep.seeds, per_seed):
        run = sweep.runs / sw.run_name(arm, seed)
        run.mkdir(parents=True)
        record = {"epoch": 1, **{f"top1/{h}": t for h, (t, _) in numbers.items()},
                  **{f"val_top1/{h}": v for h, (_, v) in numbers.items()}}
        (run / "metrics.jsonl").write_text(json.dumps(record) + "\n")
        (run / "exits.json").write_text("{}")


def test_the_best_exit_is_chosen_on_validation_and_compared_with_the_plain_nets_main_exit(tmp_path):
    sweep = sw.Sweep(spec=None, overrides=[], seeds=[0, 1, 2], name="mw", root=tmp_path, baseline={"arm": "plain56"},
                     arms={k: {"spec": "x.yaml", "values": {}} for k in ("mw20", "plain20", "plain56")},
                     compare=[("mw20", "plain20")])
    mw20, plain20, plain56 = sweep.grid_arms()
    # exit8 is best on test, main on validation: the comparison takes main (chosen on validation)
    fake_arm(sweep, mw20, [{"exit8": (0.90 + d, 0.70), "main": (0.82 + d, 0.80)} for d in (0, 0.01, 0.02)])
    fake_arm(sweep, plain20, [{"main": (0.81, 0.8)}] * 3)
    fake_arm(sweep, plain56, [{"main": (0.80, 0.8)}] * 3)
    data = sw.results(sweep)
    rows = {(c["kind"], c["a_label"], c["a_exit"], c["b_label"], c["b_exit"]): c for c in data["comparisons"]}
    assert set(rows) == {("compare", "mw20", "main", "plain20", "main"),
                         ("best exit", "mw20", "main", "plain56", "main")}
    assert rows["best exit", "mw20", "main", "plain56", "main"]["diff"]["per_seed"] == pytest.approx([2, 3, 4])
    assert rows["compare", "mw20", "main", "plain20", "main"]["diff"]["mean"] == pytest.approx(2)
    assert rows["compare", "mw20", "main", "plain20", "main"]["verdict"] == "not resolved"  # 1, 2, 3 points
    by_label = {a["label"]: a for a in data["arms"]}
    assert by_label["plain20"]["exits"]["main"]["vs_baseline"]["mean"] == pytest.approx(1)
    assert by_label["mw20"]["exits"]["exit8"]["vs_baseline"] is None  # the plain net has no exit8
    sweep.arms["later"] = {"spec": "x.yaml", "values": {}}  # its run is still before its first evaluation
    unevaluated = sweep.runs / sw.run_name(sweep.grid_arms()[-1], 0)
    unevaluated.mkdir()
    (unevaluated / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "loss": 2.3}) + "\n")
    assert sw.results(sweep)["selected_on"] == "validation"
    md = sw.markdown(data)
    assert "| mw20 (best exit main) − plain56 (main) | +3.00 [+0.52, +5.48] | +2.00, +3.00, +4.00 | better |" in md
    assert "| mw20 (main) − plain20 (main) |" in md and "chosen on the mean validation top-1" in md


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


@needs_data
def test_a_sweep_file_with_explicit_arms_end_to_end(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    main_loss = "losses:\n  main: {type: cross_entropy, head: main}\ndata:"
    (tmp_path / "plain.yaml").write_text(TINY.split("branches:")[0] + main_loss + TINY.split("data:")[1])  # no branch
    (tmp_path / "arms.yaml").write_text("sweep:\n  name: a\n  seeds: 2\n  baseline: plain\n"
                                        "  arms:\n    plain: {spec: plain.yaml}\n"
                                        "    branched: {spec: tiny.yaml, losses.aux1.weight: 0.5, "
                                        "train.optimizer: {type: sgd, lr: 0.02, momentum: 0.9}}\n")
    rc, out, err = finish(netspec(["sweep", "arms.yaml", "--json"], tmp_path))
    assert rc == 0, err
    data = json.loads(out)
    plain, branched = data["arms"]
    assert (plain["label"], branched["label"]) == ("plain", "branched") and plain["is_baseline"]
    assert list(plain["exits"]) == ["main"] and list(branched["exits"]) == ["aux1", "main"]
    assert branched["exits"]["main"]["vs_baseline"]["n"] == 2
    best = data["comparisons"][0]
    assert best["kind"] == "best exit" and best["b_label"] == "plain" and best["diff"]["n"] == 2
    home = tmp_path / "runs" / "tiny" / "sweeps" / "a"  # the first arm's spec names the runs folder
    resolved = (tmp_path / branched["runs"][1] / "spec.yaml").read_text()
    assert "weight: 0.5" in resolved and "lr: 0.02" in resolved  # the arm's keys reached its runs
    assert "**paired comparisons**" in (home / "results.md").read_text()
    done = trials(tmp_path / "runs" / "tiny" / "sweeps" / "a.db", "a")
    assert sorted((t.params["arm"], t.state.name) for t in done) == [("branched", "COMPLETE"), ("plain", "COMPLETE")]


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "specs" / "sweeps").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_sweep_file_reads_and_every_arm_compiles(path, monkeypatch):
    from netspec.cli import parse
    from netspec.commands import sweep as command

    monkeypatch.chdir(path.parents[2])
    sweep = command.build_sweep(parse(["sweep", str(path.relative_to(path.parents[2]))]))
    sw.prepare(sweep)
    for arm in sweep.grid_arms():
        compiled = sw.compile_arm(sweep, arm)
        assert "error" not in compiled, (arm.label, compiled.get("error"))
        assert any(e["exit"] == "main" for e in compiled["exits"])
