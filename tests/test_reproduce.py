"""bench/reproduce.py's bookkeeping: resumable runs and each table's report, on fabricated run directories (the
real runs take half an hour per table; docs/reproduction.md). Its paired statistics are `netspec sweep`'s
(netspec.runtime.sweep), tested in test_sweep.py."""
from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("reproduce", ROOT / "bench" / "reproduce.py")
reproduce = importlib.util.module_from_spec(_spec)
sys.modules["reproduce"] = reproduce
_spec.loader.exec_module(reproduce)


def fake_run(out: Path, exits: dict[str, float], steps: list[dict] | None = None, finished: bool = True,
             epochs: int = 2) -> None:
    """A finished (or cut-off) run as netspec train + reproduce.train_one leave it."""
    latest = out / "runs" / "latest"
    latest.mkdir(parents=True)
    records = [{"epoch": e, "step": 10 * e, "seconds": 1.0, "ce/main": 0.5 / e,
                **({f"top1/{h}": v for h, v in exits.items()} if e == epochs else {})} for e in range(1, epochs + 1)]
    (latest / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = [{"exit": h, "depth": 10 + i, "params": 1000 * (i + 1), "flops": 1e6 * (i + 1), "top1": v, "top5": 1.0}
            for i, (h, v) in enumerate(exits.items())]
    (latest / "exits.json").write_text(json.dumps({"epoch": epochs, "exits": rows}))
    if steps:
        (latest / "steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    (out / "run.json").write_text(json.dumps({"command": ["train"], "finished": finished}))


def test_only_seeds_finished_by_every_arm_are_compared(tmp_path):
    table = reproduce.TABLES["mwbp"]
    for arm in table.arms:
        for seed in (0, 1, 2):
            if (arm.key, seed) != ("plain56", 2):
                fake_run(reproduce.run_dir(tmp_path, arm, seed), {"main": 0.8})
    fake_run(reproduce.run_dir(tmp_path, table.arms[2], 2), {"main": 0.8}, finished=False)
    runs = reproduce.collect(table, tmp_path, [0, 1, 2])
    assert all(list(by_seed) == [0, 1] for by_seed in runs.values())


def test_a_finished_run_is_reused_and_a_cut_off_one_resumed(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(reproduce.subprocess, "run",
                        lambda cmd, **kw: calls.append(cmd) or type("Done", (), {"returncode": 0})())
    out = tmp_path / "arm_s0"
    words = ["train", "specs/x.yaml", "train.seed=0"]
    assert reproduce.train_one(words, out, fresh=False)["how"] == "trained" and "--resume" not in calls[-1]
    assert reproduce.train_one(words, out, fresh=False)["how"] == "reused" and len(calls) == 1
    (out / "run.json").write_text(json.dumps({"command": words, "finished": False}))  # killed mid-run
    assert reproduce.train_one(words, out, fresh=False)["how"] == "resumed" and calls[-1][-1] == "--resume"
    assert reproduce.train_one(words + ["train.epochs=3"], out, fresh=False)["how"] == "trained"
    assert reproduce.train_one(words + ["train.epochs=3"], out, fresh=True)["how"] == "trained"


def test_the_dks_report_pairs_every_method_with_the_baseline(tmp_path):
    table = reproduce.TABLES["dks"]
    main = {"baseline": [0.70, 0.72, 0.71], "ds": [0.71, 0.73, 0.72], "dks": [0.74, 0.76, 0.75],
            "ds_simple": [0.68, 0.70, 0.69], "dks_simple": [0.66, 0.69, 0.65]}
    for arm in table.arms:
        for seed, value in enumerate(main[arm.key]):
            heads = {"main": value} if arm.key == "baseline" else {"aux1": value - 0.05, "aux2": value, "main": value}
            fake_run(reproduce.run_dir(tmp_path, arm, seed), heads)
    text, data = reproduce.dks_report(table, reproduce.collect(table, tmp_path, [0, 1, 2]))
    assert data["arms"]["dks"]["vs_baseline"]["mean"] == pytest.approx(4.0)
    assert data["pairs"]["DKS − DS (designed heads)"]["mean"] == pytest.approx(3.0)
    assert data["arms"]["dks"]["exits"]["aux1"] == pytest.approx([0.69, 0.71, 0.70])
    assert "DKS vs baseline: DKS better" in text and "AP+2FC heads, DS vs baseline: DS worse" in text
    assert "| DKS (`dks_resnet20_fmnist` vars.shallow=[3, 2]" in text


def test_the_mwbp_report_takes_the_best_exit_of_the_multi_exit_net(tmp_path):
    table = reproduce.TABLES["mwbp"]
    values = {"mw20": {"exit3": 0.5, "exit8": 0.83, "main": 0.82}, "plain20": {"main": 0.81}, "plain56": {"main": 0.8}}
    for arm in table.arms:
        for seed in (0, 1, 2):
            fake_run(reproduce.run_dir(tmp_path, arm, seed), {h: v + 0.01 * seed * (arm.key == "mw20")
                                                              for h, v in values[arm.key].items()})
    text, data = reproduce.mwbp_report(table, reproduce.collect(table, tmp_path, [0, 1, 2]))
    assert data["best_exit"] == "exit8"
    assert data["best_vs_plain56"]["per_seed"] == pytest.approx([3, 4, 5])
    assert data["main_vs_plain20"]["mean"] == pytest.approx(2)
    assert "the shallow multi-exit net is better" in text


def test_the_cnds_report_and_plot_follow_the_lower_layers_gradients(tmp_path):
    table = reproduce.TABLES["cnds"]
    for arm in table.arms:
        scale = 1e-3 if arm.key.startswith("cnds") else 1e-6
        for seed in (0, 1):
            steps = [{"step": 10 * i, **{f"grad/{layer}": scale * (seed + 1) for layer in reproduce.LOWER_LAYERS}}
                     for i in range(1, 25)]
            fake_run(reproduce.run_dir(tmp_path, arm, seed), {"main": 0.85 if arm.key.startswith("cnds") else 0.1},
                     steps, epochs=3)
    text, data = reproduce.cnds_report(table, reproduce.collect(table, tmp_path, [0, 1]))
    grad = data["arms"]["cnn8"]["grad"]["conv1"]
    assert grad["steps"] == [10 * i for i in range(1, 25)]
    assert grad["early"] == pytest.approx(1e-6 * 2 ** 0.5)  # geometric mean of 1e-6 and 2e-6
    assert data["arms"]["cnds8"]["top1_per_epoch"][-1] == [0.85, 0.85]
    assert "CNN-8, N(0, 0.01²): stays near chance" in text and "CNDS-8, N(0, 0.01²): trains" in text
    assert reproduce.plot(table, data, tmp_path)[0].read_bytes()[:4] == b"\x89PNG"
    assert statistics.mean(data["arms"]["cnds8"]["train_ce"]) == pytest.approx(0.5 / 3)
