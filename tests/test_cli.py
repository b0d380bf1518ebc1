"""`netspec compile` and `netspec draw` end to end (in-process through main, and once as a real process)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import netspec

from netspec.cli import main
from conftest import MINI, SPECS

FILES = {"spec.resolved.yaml", "model.py", "graph.json", "summary.json", "summary.txt", "build.json"}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder with specs/cnds8_fmnist.yaml; builds go to tmp_path/build."""
    (tmp_path / "specs").mkdir()
    shutil.copy(SPECS / "cnds8_fmnist.yaml", tmp_path / "specs" / "fm.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NETSPEC_BUILD", str(tmp_path / "build"))
    return tmp_path


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_compile_writes_the_build_and_marks_it_current(project, capsys):
    code, out, err = run(capsys, "compile", "specs/fm.yaml")
    assert code == 0 and not err
    build = project / "build" / "cnds8_fmnist"
    assert FILES <= {p.name for p in build.iterdir()}
    assert (project / "build" / "CURRENT").read_text().strip() == "cnds8_fmnist"
    assert "aux1.fc3" in out and "deployed graph" in out and str(build) in out
    info = json.loads((build / "build.json").read_text())
    assert info["spec"] == "specs/fm.yaml" and info["heads"] == ["main", "aux1"]
    compile((build / "model.py").read_text(), "model.py", "exec")  # valid python
    graph = json.loads((build / "graph.json").read_text())
    assert graph["heads"] == {"main": "fc8", "aux1": "aux1.fc3"}
    assert (build / "summary.txt").read_text().strip() in out


def test_second_compile_reuses_the_current_build_and_its_overrides(project, capsys):
    assert run(capsys, "compile", "specs/fm.yaml", "vars.w=8", "--json")[0] == 0
    code, out, _ = run(capsys, "compile", "--json")
    summary = json.loads(out)
    assert code == 0 and summary["name"] == "cnds8_fmnist"
    assert {n["name"]: n["shape"] for n in summary["nodes"]}["conv1"] == [8, 28, 28]
    info = json.loads((project / "build" / "cnds8_fmnist" / "build.json").read_text())
    assert info["overrides"] == ["vars.w=8"]


def test_json_summary(project, capsys):
    code, out, _ = run(capsys, "compile", "specs/fm.yaml", "--json")
    summary = json.loads(out)
    assert {"nodes", "heads", "losses", "train", "deploy"} <= set(summary)
    assert summary["deploy"]["params"] < summary["train"]["params"]
    saved = json.loads((project / "build" / "cnds8_fmnist" / "summary.json").read_text())
    assert saved["nodes"] == summary["nodes"] and saved["train"] == summary["train"]


def test_draw_dot_and_svg(project, capsys):
    code, out, _ = run(capsys, "draw", "specs/fm.yaml", "-o", "g.dot")
    assert code == 0 and 'subgraph "cluster_aux1"' in (project / "g.dot").read_text()
    if shutil.which("dot"):
        assert run(capsys, "draw", "specs/fm.yaml", "-o", "out/g.svg")[0] == 0
        assert "<svg" in (project / "out" / "g.svg").read_text()


def test_draw_without_graphviz(project, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(project))
    code, _, err = run(capsys, "draw", "specs/fm.yaml", "-o", "g.svg")
    assert code == 2 and "graphviz `dot` program is not installed" in err and "apt-get install graphviz" in err
    assert "Traceback" not in err


def test_bad_spec_and_bad_override_exit_2_without_traceback(project, capsys):
    (project / "bad.yaml").write_text(MINI.replace("kernel: 3", "kernal: 3"))
    code, out, err = run(capsys, "compile", "bad.yaml")
    assert code == 2 and not out and "Traceback" not in err
    assert err.strip() == "bad.yaml:5: nodes.conv1: unknown key 'kernal' — did you mean 'kernel'?"
    code, _, err = run(capsys, "compile", "specs/fm.yaml", "train.epoch=3")
    assert code == 2 and err.strip() == ("override 'train.epoch=3': train: unknown key 'epoch' — did you mean 'epochs'?")
    code, _, err = run(capsys, "compile", "a.yaml", "b.yaml")
    assert code == 2 and "more than one spec" in err
    assert not (project / "build" / "CURRENT").exists()


def test_console_script_in_a_real_process(project):
    script = Path(sys.executable).parent / "netspec"
    env = {**os.environ, "NETSPEC_BUILD": str(project / "build")}
    ok = subprocess.run([str(script), "compile", "specs/fm.yaml", "--json"], cwd=project, env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["name"] == "cnds8_fmnist"


def test_options_may_stand_between_the_spec_and_its_overrides(project, capsys):
    code, out, _ = run(capsys, "compile", "specs/fm.yaml", "--json", "vars.w=8")
    assert code == 0 and {n["name"]: n["shape"] for n in json.loads(out)["nodes"]}["conv1"] == [8, 28, 28]


def test_unknown_command_is_a_did_you_mean_and_version_is_printed(capsys):
    assert main(["compie"]) == 2
    assert capsys.readouterr().err.strip() == "netspec: there is no command 'compie' — did you mean 'compile'?"
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"netspec {netspec.__version__}"


def test_override_rough_edges(project, capsys):
    code, _, err = run(capsys, "compile", "specs/fm.yaml", "epochs=1")
    assert code == 2 and "unknown top-level key 'epochs' — did you mean 'train.epochs'?" in err
    code, _, err = run(capsys, "compile", "specs/fm.yaml", "train.device=gpu")
    assert code == 2 and "'gpu' is not a device" in err and "^(" not in err and "pattern" not in err
    from netspec.compiler import compile_spec

    spec = compile_spec("specs/fm.yaml", ["init.weight.mode=fan_out"]).spec  # the spec says `weight: kaiming`
    assert (spec.init.weight.type, spec.init.weight.mode) == ("kaiming", "fan_out")


def test_kaiming_uses_fan_in_on_fc_and_fan_out_on_conv(tmp_path):
    import torch

    from netspec.ops import Kaiming

    torch.manual_seed(0)
    fc, conv = torch.empty(400, 1000), torch.empty(64, 100, 3, 3)  # fan_in 1000 / fan_out 576
    Kaiming(type="kaiming").apply(fc)
    Kaiming(type="kaiming").apply(conv)
    assert abs(fc.std().item() - (2 / 1000) ** 0.5) < 2e-3 and abs(conv.std().item() - (2 / 576) ** 0.5) < 2e-3


def test_an_option_that_is_a_spec_setting_points_to_the_override(project, capsys):
    code, _, err = run(capsys, "compile", "specs/fm.yaml", "--epochs", "3")
    assert code == 2 and "`compile` has no option --epochs" in err and "train.epochs=VALUE" in err
    code, _, err = run(capsys, "draw", "specs/fm.yaml", "--outptu", "g.svg")
    assert code == 2 and "did you mean '--output'?" in err
