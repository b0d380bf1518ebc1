"""Issue 10, class 6: checkpoints and run files that are not what netspec wrote. Generated: every entry of a
real checkpoint replaced by each wrong kind of value, or dropped; damaged checkpoints.json and metrics.jsonl.
Each is one error naming the file, raised before anything is overwritten."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from netspec.cli import main
from netspec.compiler import compile_spec
from netspec.errors import UserError
from netspec.runtime import checkpoint as ckpt
from netspec.runtime.run import Run, spec_yaml
from conftest import MINI, write

WRONG = {"list": [1, 2], "str": "x", "int": 7, "none": None, "dict": {"a": 1}, "tensor": torch.zeros(3),
         "nan_tensor": torch.full((4, 1, 3, 3), float("nan")), "huge_int": 2**50,
         "float": 0.5, "nested": [[{"x": torch.zeros(1)}]]}


def real_state(tmp_path) -> dict:
    compiled = compile_spec(write(tmp_path, MINI))
    model = compiled.module
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": [ckpt.rng_state()], "epoch": 1, "step": 4, "best": 0.5, "spec_name": "mini",
            "spec_hash": compiled.spec_hash}


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return real_state(tmp_path_factory.mktemp("state"))


def test_what_netspec_writes_is_accepted(tmp_path, state):
    torch.save(state, tmp_path / "last.pt")
    assert ckpt.load_checkpoint(tmp_path / "last.pt", resume=True)["epoch"] == 1


@pytest.mark.parametrize("kind", WRONG)
@pytest.mark.parametrize("key", ["model", "optimizer", "scheduler", "rng", "epoch", "step", "best", "spec_name",
                                 "spec_hash", "model.tensor", "rng.entry", "optimizer.groups"])
def test_every_entry_of_the_wrong_kind(tmp_path, state, key, kind):
    bad = dict(state)
    value = WRONG[kind]
    if key == "model.tensor":
        bad["model"] = {**state["model"], "conv1.weight": value}
    elif key == "rng.entry":
        bad["rng"] = [{**state["rng"][0], "python": value}]
    elif key == "optimizer.groups":
        bad["optimizer"] = {**state["optimizer"], "param_groups": value}
    else:
        bad[key] = value
    path = tmp_path / "last.pt"
    torch.save(bad, path)
    ok = {("epoch", "int"), ("step", "int"), ("best", "int"), ("best", "float"), ("model.tensor", "tensor"),
          ("spec_name", "str"), ("spec_hash", "str"), ("best", "huge_int")}  # the right kind of value: accepted
    for resume in (False, True):
        try:
            ckpt.load_checkpoint(path, resume=resume)
        except UserError as err:
            assert (key, kind) not in ok, str(err)
            assert str(path) in str(err) and len(str(err).splitlines()) == 1
        else:
            assert (key, kind) in ok, (key, kind, resume)


@pytest.mark.parametrize("top", [[1, 2], "text", 3, torch.zeros(2), {"weights": {}}])
def test_not_a_checkpoint_at_all(tmp_path, top):
    torch.save(top, tmp_path / "x.pt")
    with pytest.raises(UserError, match="not a netspec checkpoint"):
        ckpt.load_checkpoint(tmp_path / "x.pt")


@pytest.mark.parametrize("missing", ["optimizer", "scheduler", "rng", "epoch", "step", "best", "spec_hash"])
def test_a_weights_only_file_cannot_resume(tmp_path, state, missing):
    bad = {k: v for k, v in state.items() if k != missing}
    torch.save(bad, tmp_path / "last.pt")
    ckpt.load_checkpoint(tmp_path / "last.pt")  # fine for weights (init.from, export, eval)
    with pytest.raises(UserError, match="cannot resume"):
        ckpt.load_checkpoint(tmp_path / "last.pt", resume=True)


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


@pytest.mark.parametrize("index", ["", "[]", "{", "null", '{"last": 3}', '{"spec_name": 5}', "\xff\xfe\x00",
                                   '{"best": []}'])
def test_a_damaged_index_is_rebuilt_from_the_checkpoint_files(tmp_path, monkeypatch, state, index):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, MINI)
    folder = _run_folder(tmp_path)
    torch.save(state, folder / "last.pt")
    (folder / "checkpoints.json").write_bytes(index.encode("latin-1"))
    with pytest.raises(UserError, match="checkpoints.json"):
        ckpt.save(folder, state, best=False)  # save itself checks the index before writing last.pt
    notes = Run(folder.parent).check()
    assert "checkpoints.json was damaged" in notes[0] and "rebuilt it from the checkpoint files" in notes[0]
    rebuilt = json.loads((folder / "checkpoints.json").read_text())
    assert rebuilt["last"]["epoch"] == state["epoch"] and "best" not in rebuilt
    assert Run(folder.parent).check() == []  # vouched again: the next reader finds nothing to repair


@pytest.mark.parametrize("metrics", ["{", "[]", '{"epoch": "1"}', "1\n2", '{"loss": 1}'])
def test_a_damaged_metrics_log_stops_resume(tmp_path, monkeypatch, capsys, state, metrics):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, MINI)
    folder = _run_folder(tmp_path)
    torch.save(state, folder / "last.pt")
    (folder.parent / "metrics.jsonl").write_text(metrics)
    assert main(["train", "spec.yaml", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "metrics.jsonl:1" in err and "Traceback" not in err, err


def test_weights_only_resume_through_the_cli(tmp_path, monkeypatch, capsys, state):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, MINI)
    folder = _run_folder(tmp_path)
    torch.save({"model": state["model"]}, folder / "last.pt")
    assert main(["train", "spec.yaml", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "holds weights only" in err and len(err.splitlines()) == 1
    json.loads(json.dumps({}))


def _run_folder(root: Path) -> Path:
    """The checkpoint folder of a run `r1` of spec `mini` with its record, made the latest run
    (runs/mini/r1/checkpoints)."""
    folder = root / "runs" / "mini" / "r1" / "checkpoints"
    folder.mkdir(parents=True)
    (root / "runs" / "mini" / "latest").symlink_to("r1")
    spec = compile_spec(root / "spec.yaml").spec
    Run(folder.parent).start({"run": "r1", "spec_name": "mini", "spec": str(root / "spec.yaml"), "overrides": [],
                              "command": ["train"], "seed": 0}, spec_yaml(spec))
    return folder
