"""One `Limits` value: read from the environment once, by the command layer, and passed down; nothing below the
commands reads NETSPEC_MAX_* or keeps a process-wide code permission."""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from netspec import cli
from netspec.compiler import analyse, compile_spec
from netspec.errors import UserError
from netspec.limits import Limits, env_name
from conftest import MINI

FIELDS = [f.name for f in dataclasses.fields(Limits) if f.name != "code"]
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("text", ["0", "-3", "abc", "", "inf", "nan", "1e400", "12x"])
def test_a_bad_value_is_one_line_naming_the_variable(field, text):
    with pytest.raises(UserError) as info:
        Limits.from_env({env_name(field): text})
    err = info.value
    assert env_name(field) in err.what and "positive" in err.what and f"e.g. {env_name(field)}=" in err.fix
    assert "\n" not in str(err)


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("text", ["7", "1_000", "250"])
def test_a_good_value_sets_that_limit_only(field, text):
    limits = Limits.from_env({env_name(field): text})
    assert getattr(limits, field) == int(text.replace("_", ""))
    assert {f: getattr(limits, f) for f in FIELDS if f != field} == {f: getattr(Limits(), f) for f in FIELDS if f != field}


@pytest.mark.parametrize("env, flag, allowed", [({}, False, False), ({}, True, True),
                                                ({"NETSPEC_ALLOW_CUSTOM": "1"}, False, True),
                                                ({"NETSPEC_ALLOW_CUSTOM": "0"}, False, False)])
def test_code_is_allowed_by_the_flag_or_the_variable(env, flag, allowed):
    assert Limits.from_env(env, code=flag).code is allowed


def test_the_cli_reads_them_once_and_a_bad_one_exits_2(write_spec, monkeypatch, capsys):
    path = write_spec(MINI)
    monkeypatch.setenv("NETSPEC_MAX_PARAMS", "ten")
    assert cli.main(["compile", str(path)]) == 2
    err = capsys.readouterr().err
    assert "NETSPEC_MAX_PARAMS='ten' is not a positive integer" in err and "Traceback" not in err
    monkeypatch.setenv("NETSPEC_MAX_PARAMS", "10")
    assert cli.main(["compile", str(path)]) == 2
    assert "more than the limit of 10" in capsys.readouterr().err
    assert analyse(path)[1].nodes  # the Python API: the default limits, whatever the environment says


def test_code_permission_is_per_compile_not_per_process(write_spec):
    path = write_spec(MINI.replace("  - {name: relu1, op: relu}",
                                   "  - {name: relu1, op: custom, target: 'torch.nn:ReLU'}"))
    trusted = compile_spec(path, limits=Limits(code=True))
    assert trusted.limits.code and trusted.module is not None
    with pytest.raises(UserError, match="--allow-custom"):
        compile_spec(path)  # the trusted compile above left nothing behind


def _reads_the_environment(tree: ast.AST) -> list[int]:
    """Lines that read os.environ / os.getenv."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv") and \
                isinstance(node.value, ast.Name) and node.value.id == "os":
            lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("folder", ["compiler", "runtime"])
def test_no_limit_is_read_below_the_commands(folder):
    """The passes and readers get their bounds as values: none of them names a NETSPEC_MAX_* variable in code that
    reads the environment (only hints, through env_name)."""
    for path in sorted((ROOT / folder).rglob("*.py")):
        text = path.read_text()
        for line in _reads_the_environment(ast.parse(text)):
            assert "NETSPEC_MAX" not in text.splitlines()[line - 1], f"{path}:{line} reads a limit"
        assert "NETSPEC_MAX_" not in text, f"{path} names a limit's variable"


@pytest.mark.parametrize("pixels, fails", [(40 * 40 - 1, True), (40 * 40, False)])
def test_streamed_images_are_held_to_the_pixel_limit_before_decoding(tmp_path, pixels, fails):
    """data.stream decodes in DataLoader workers: the limit travels with the indexed data (no environment there)."""
    from PIL import Image

    from netspec.data_spec import DataSpec
    from netspec.runtime.data.stream import index_imagefolder
    from netspec.runtime.data.transforms import Transform

    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.new("RGB", (40, 40)).save(tmp_path / split / "a" / "x.png")
    data = index_imagefolder(DataSpec(source="imagefolder"), tmp_path, progress=None, limits=Limits(image_pixels=pixels))
    assert data.max_pixels == pixels
    read = Transform((3, 32, 32), "none", None, train=False, max_pixels=data.max_pixels)
    if fails:
        with pytest.raises(ValueError, match=f"more than the limit of {pixels:,}.*NETSPEC_MAX_IMAGE_PIXELS"):
            read(str(tmp_path / "train" / "a" / "x.png"), None)
    else:
        assert read(str(tmp_path / "train" / "a" / "x.png"), None).shape == (3, 32, 32)


@pytest.mark.parametrize("pixels, fails", [(5 * 4 - 1, True), (5 * 4, False)])
def test_an_encoded_caffe_record_is_held_to_the_pixel_limit(pixels, fails):
    import io

    from PIL import Image

    from netspec.compiler.caffe.database import datum_pixels
    from netspec.compiler.caffe.weights import message_class

    png = io.BytesIO()
    Image.new("RGB", (5, 4)).save(png, format="PNG")
    datum = message_class("Datum")(encoded=True, data=png.getvalue())
    if fails:
        with pytest.raises(ValueError, match=f"5×4 pixels, more than the limit of {pixels}"):
            datum_pixels(datum, 3, pixels)
    else:
        assert datum_pixels(datum, 3, pixels).shape == (3, 4, 5)
