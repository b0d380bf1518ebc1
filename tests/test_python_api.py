"""The documented Python API: `netspec.load` and the example of docs/python_api.md, run as written."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch

import netspec

DOC = Path(__file__).resolve().parents[1] / "docs" / "python_api.md"


def test_the_documented_example_trains_in_a_plain_pytorch_loop(capsys):
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(code, str(DOC), "exec"), {"__name__": "python_api_example"})
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "{'main': 'fc', 'aux1': 'aux1.fc'}" in out and "main exit, training accuracy" in out


def test_import_netspec_stays_light():
    done = subprocess.run([sys.executable, "-c", "import sys, netspec; print('torch' in sys.modules, "
                                                 "hasattr(netspec, 'load'), netspec.__version__)"],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["False", "True", netspec.__version__], done.stderr
