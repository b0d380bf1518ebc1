"""The layers import one way: schema (netspec/) ← compiler ← runtime ← commands. Nothing imports upwards.

Every import statement of the package (also those inside functions) is read from the source with `ast`,
so an import that runs only on one code path is checked too.
"""
from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from netspec.cli import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"netspec": "netspec", "compiler": "netspec.compiler", "runtime": "netspec.runtime"}
SCHEMA, COMPILER, RUNTIME, COMMANDS_LAYER = 0, 1, 2, 3
LAYER_NAMES = {SCHEMA: "schema", COMPILER: "compiler", RUNTIME: "runtime", COMMANDS_LAYER: "commands"}


def layer(module: str) -> int:
    """The layer of a netspec module (the package root `netspec` is the Python API facade, on top)."""
    if module.startswith("netspec.commands") or module in ("netspec", "netspec.cli", "netspec.docs"):
        return COMMANDS_LAYER
    if module.startswith("netspec.runtime"):
        return RUNTIME
    if module.startswith("netspec.compiler"):
        return COMPILER
    return SCHEMA


def modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name, from the source folders."""
    out = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            out[".".join((package, *parts))] = path
    return out


def imports(path: Path, module: str) -> list[tuple[str, int]]:
    """(imported netspec module, line) for every import in a file, relative imports resolved."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")[: len(module.split(".")) - node.level + (path.name == "__init__.py")]
                base = ".".join(package + ([base] if base else []))
            found.append((base, node.lineno))
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]  # `from netspec import ops`
    known = modules()
    return [(name, line) for name, line in found if name in known]


def test_the_package_has_the_folders_the_user_asked_for():
    assert set(modules()) >= {"netspec.spec", "netspec.compiler.ir", "netspec.runtime.train", "netspec.commands.build"}


@pytest.mark.parametrize("module", sorted(modules()))
def test_no_module_imports_a_higher_layer(module):
    path = modules()[module]
    upward = [f"{path.relative_to(ROOT)}:{line}: {module} ({LAYER_NAMES[layer(module)]}) imports {name} "
              f"({LAYER_NAMES[layer(name)]})" for name, line in imports(path, module)
              if name != "netspec" and layer(name) > layer(module)]
    assert not upward, "\n".join(upward)


def test_the_cli_dispatches_only_to_the_commands_layer():
    for name, (module, _) in COMMANDS.items():
        assert layer(module) == COMMANDS_LAYER and importlib.util.find_spec(module), name


def test_the_checker_sees_an_upward_import(tmp_path):
    """The test above can fail: a schema module importing the runtime is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from netspec.runtime.train import train\n")
    (name, line), = [i for i in imports(bad, "netspec.spec") if i[0] == "netspec.runtime.train"]
    assert layer(name) > layer("netspec.spec") and line == 2


def test_import_netspec_is_light():
    """`import netspec` (and the schema) load neither the compiler nor the runtime."""
    code = ("import sys, netspec, netspec.errors, netspec.project; "
            "print(sorted(m for m in sys.modules if m.startswith(('netspec.compiler', 'netspec.runtime', 'torch'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_data_source_of_the_schema_has_one_reader():
    from netspec.data_spec import SOURCES
    from netspec.runtime.data.sources import READERS

    assert set(READERS) == set(SOURCES)


def test_registries_build_the_schema_unions():
    """A registered class is accepted by the schema under its name (one place to add each)."""
    from netspec.schedules import SCHEDULES
    from netspec.solver import LR_POLICIES, OPTIMIZERS, TrainSpec
    from netspec.spec import CrossEntropyLoss

    for name in SCHEDULES:
        fields = {"epoch": 1} if name == "zero_after" else {"epochs": 1} if name == "ramp" else {}
        assert CrossEntropyLoss(type="cross_entropy", head="main", schedule={"type": name, **fields}).schedule.type == name
    for name in LR_POLICIES:
        assert TrainSpec(lr_schedule={"type": name}).lr_schedule.type == name
    for name in OPTIMIZERS:
        assert TrainSpec(optimizer=name).optimizer.type == name
