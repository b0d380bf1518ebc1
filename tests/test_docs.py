"""The documentation as a newcomer meets it: an index linking every page, links that lead somewhere, pages that
speak of the project (not of its issue tracker) and claim no digit-for-digit repeats; the license; and the
python_api page's weight-loading block, run as written after a real (tiny) run."""
from __future__ import annotations

import re
import shutil

import pytest
import torch

from netspec.cli import main
from conftest import ROOT

DOCS = ROOT / "docs"
PAGES = sorted(p.name for p in DOCS.glob("*.md") if p.name != "README.md")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
# pages other branches of this round rewrite (early-exit cascades; training): checked once they are merged
EDITED_ON_OTHER_BRANCHES = {"cascade.md", "training.md"}


def _links(path) -> set[str]:
    return {m.group(1) for m in LINK.finditer(path.read_text()) if "://" not in m.group(1)}


def test_the_index_links_every_page():
    assert set(PAGES) - _links(DOCS / "README.md") == set()


def test_the_readme_links_the_index_and_every_page():
    links = _links(ROOT / "README.md")
    assert "docs/README.md" in links and {f"docs/{p}" for p in PAGES} - links == set()


@pytest.mark.parametrize("page", ["README.md", "CHANGELOG.md", "docs/README.md", *(f"docs/{p}" for p in PAGES)])
def test_links_lead_somewhere(page):
    path = ROOT / page
    missing = [link for link in _links(path) if not (path.parent / link).exists()]
    assert not missing, missing


@pytest.mark.parametrize("page", [p for p in PAGES if p not in EDITED_ON_OTHER_BRANCHES] + ["README.md"])
def test_pages_speak_of_the_project(page):
    text = (DOCS / page if page != "README.md" else ROOT / page).read_text()
    assert not re.search(r"\bissues? \d+|issue-\d+", text, re.I), re.search(r".{0,40}\bissues? \d+.{0,40}", text, re.I)
    assert not re.search(r"(last|same) digit", text, re.I), "a result repeats only for one thread count and machine"


def test_the_license_is_bsd_2_clause():
    import importlib.metadata
    import tomllib

    assert (ROOT / "LICENSE").read_text().startswith("BSD 2-Clause License")
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "BSD-2-Clause"
    assert importlib.metadata.metadata("netspec").get("License-Expression") in (None, "BSD-2-Clause")


def test_loading_a_run_s_weights_as_documented(tmp_path, monkeypatch, capsys, one_thread):
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "python_api.md").read_text(), re.S)
    code = next(b for b in blocks if "state_dict" in b or "best.pt" in b)
    (tmp_path / "specs").mkdir()
    shutil.copy(ROOT / "specs" / "cnds8_fmnist.yaml", tmp_path / "specs")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "specs/cnds8_fmnist.yaml", "data.source=synthetic", "train.epochs=1",
                 "data.train_limit=16", "data.test_limit=8", "train.batch_size=8"]) == 0
    capsys.readouterr()
    exec(compile(code, str(DOCS / "python_api.md"), "exec"), {"__name__": "python_api_weights"})
    out = capsys.readouterr().out
    assert "checkpoints/best.pt: epoch 1" in out and "torch.Size([2, 10])" in out
    import netspec

    from_run = netspec.load(next((tmp_path / "runs" / "cnds8_fmnist").glob("2*")) / "spec.yaml")
    assert torch.Size(from_run.spec.input.shape) == torch.Size([1, 28, 28])  # a run's spec.yaml compiles as well
