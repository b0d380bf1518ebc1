"""The importer's defect classes, each over generated cases: the BatchNorm→Scale fold over fork layouts, the
protobuf text format's values, the checks of Caffe's Net::Init and LayerSetUp, value bounds, names, loss
layers netspec does not train, and every error at the prototxt's file:line (exit 2, one line, no traceback)."""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from caffe_fixtures import caffemodel  # noqa: E402

from netspec.cli import main  # noqa: E402
from netspec.compiler.caffe.textformat import one_line  # noqa: E402

HEAD = ['name: "t"', 'input: "data"', "input_shape { dim: 1 dim: 3 dim: 16 dim: 16 }"]


def layer(name: str, kind: str, bottoms, tops, body: str = "") -> str:
    bottoms = [bottoms] if isinstance(bottoms, str) else bottoms
    tops = [tops] if isinstance(tops, str) else tops
    return (f'layer {{ name: "{name}" type: "{kind}" ' + "".join(f'bottom: "{b}" ' for b in bottoms)
            + "".join(f'top: "{t}" ' for t in tops) + body + " }")


def conv(name: str, bottom: str, top: str | None = None, body: str = "num_output: 4 kernel_size: 3 pad: 1") -> str:
    return layer(name, "Convolution", bottom, top or name, f"convolution_param {{ {body} }}")


def fc(name: str, bottom: str, out: int = 3) -> str:
    return layer(name, "InnerProduct", bottom, name, f"inner_product_param {{ num_output: {out} }}")


def run(tmp_path: Path, lines: list[str], *flags: str) -> tuple[int, str, Path]:
    net = tmp_path / "net.prototxt"
    net.write_text("\n".join(lines) + "\n")
    out = tmp_path / "x.yaml"
    code = main(["import-caffe", str(net), "-o", str(out), *flags])
    return code, code_err(), out


_capsys = None


def code_err() -> str:
    return _capsys.readouterr().err


@pytest.fixture(autouse=True)
def _capture(capsys):
    global _capsys
    _capsys = capsys


def refused(tmp_path: Path, lines: list[str], marker: str, message: str, *flags: str) -> None:
    """The import fails with one line at the (first) line holding `marker`, saying `message`."""
    code, err, out = run(tmp_path, lines, *flags)
    line = next(i for i, text in enumerate(lines, 1) if marker in text)
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"{tmp_path / 'net.prototxt'}:{line}: "), err
    assert message in err, err
    assert not out.exists()


def imports(tmp_path: Path, lines: list[str], *flags: str) -> dict:
    code, err, out = run(tmp_path, lines, *flags)
    assert code == 0, err
    return yaml.safe_load(out.read_text())


# --- BatchNorm → Scale: folded only when the Scale is the one reader of the BatchNorm's output -----------

def fork_layout(scale_in_place: bool, side: str, via_split: bool) -> tuple[list[str], bool]:
    """A conv → BatchNorm → Scale net with a second reader `side` of the BatchNorm's blob ('none', before the
    Scale, or after it), directly or through a Split; and whether folding the Scale keeps Caffe's numbers."""
    lines = HEAD + [conv("conv1", "data"), layer("bn1", "BatchNorm", "conv1", "bn1")]
    bn_top, scale_bottom = "bn1", "bn1"
    if via_split:
        lines.append(layer("split", "Split", "bn1", ["bn1_a", "bn1_b"]))
        bn_top, scale_bottom = "bn1_b", "bn1_a"
    scale_top = scale_bottom if scale_in_place else "scale1"
    side_line = conv("conv_side", bn_top)
    if side == "before":
        lines.append(side_line)
    lines.append(layer("scale1", "Scale", scale_bottom, scale_top, "scale_param { bias_term: true }"))
    if side == "after":
        lines.append(side_line)
    lines.append(conv("conv2", scale_top))
    heads = ["conv2"] + (["conv_side"] if side != "none" else [])
    lines.append(layer("sum", "Eltwise", heads, "sum") if len(heads) > 1 else layer("sum", "ReLU", "conv2", "sum"))
    lines.append(fc("fc", "sum"))
    # After an in-place Scale, a reader of the same blob reads the scaled values: folding is right then
    same_blob = scale_in_place and not via_split
    return lines, side == "none" or (side == "after" and same_blob)


FORKS = list(itertools.product([True, False], ["none", "before", "after"], [False, True]))


@pytest.mark.parametrize("in_place, side, via_split", FORKS,
                         ids=[f"{'inplace' if a else 'copy'}-{b}-{'split' if c else 'direct'}" for a, b, c in FORKS])
def test_scale_folds_into_batchnorm_only_without_other_readers(tmp_path, in_place, side, via_split):
    lines, fold = fork_layout(in_place, side, via_split)
    if fold:
        nodes = imports(tmp_path, lines)["nodes"]
        assert [n for n in nodes if n["op"] == "batchnorm"][0]["affine"] is True
        assert not any(n.get("name") == "scale1" for n in nodes)
    else:
        refused(tmp_path, lines, '"scale1"', "whose output 'conv_side'")


# --- protobuf text format ----------------------------------------------------------------------------

ESCAPES = [(r"a\101b", "aAb"), (r"\x41\x4a", "AJ"), (r"\x4", "\x04"), (r"q\7", "q\x07"), (r"\'\"\\", "'\"\\"),
           (r"\u00e9t\u00e9", "été"), (r"\303\251", "é"), (r"tab\there", "tab\there"), (r"\?", "?"),
           (r"new\nline", "new\nline")]


@pytest.mark.parametrize("written, meant", ESCAPES, ids=[e[0] for e in ESCAPES])
def test_string_escapes_decode_as_protobufs(tmp_path, written, meant):
    spec = imports(tmp_path, [f'name: "{written}"'] + HEAD[1:] + [conv("conv1", "data"), fc("fc", "conv1")])
    assert spec["description"] == "Caffe net " + one_line(meant)  # control characters shown escaped


@pytest.mark.parametrize("written", ["16", "0x10", "0X10", "020", "0x0010"])
def test_integers_in_decimal_hex_and_octal(tmp_path, written):
    spec = imports(tmp_path, HEAD[:2] + [f"input_shape {{ dim: 1 dim: 3 dim: {written} dim: 16 }}",
                                        conv("conv1", "data"), fc("fc", "conv1")])
    assert spec["input"]["shape"] == [3, 16, 16]


@pytest.mark.parametrize("written, value", [("-0.5", -0.5), ("-.25", -0.25), ("-1e-1", -0.1), ("2f", 2.0),
                                            ("-3", -3.0), ("0", None)])
def test_floats_as_protobuf_writes_them(tmp_path, written, value):
    relu = layer("relu", "ReLU", "conv1", "conv1", f"relu_param {{ negative_slope: {written} }}")
    nodes = imports(tmp_path, HEAD + [conv("conv1", "data"), relu, fc("fc", "conv1")])["nodes"]
    assert nodes[1] == ({"name": "relu", "op": "leaky_relu", "slope": value} if value else {"name": "relu", "op": "relu"})


BAD_VALUES = [  # (the field as written, what the error says)
    ("num_output: 0x", "unexpected character"), ("num_output: 09", "starts with 0"),
    ("num_output: 4.5", "takes a whole number"), ("num_output: -4", "outside the uint32 range"),
    ("num_output: 4294967296", "outside the uint32 range"), ("num_output: 1000000000000", "uint32"),
    ("num_output: inf", "takes a whole number"), ('num_output: "4"', "takes a number"),
    ("bias_term: yes", "takes true or false"), ("bias_term: 2", "takes true or false"),
    ("engine: 7", "must be one of DEFAULT, CAFFE, CUDNN"), ("weight_filler { std: 0x10 }", "takes a number"),
    (r'weight_filler { type: "gauss\ian" }', "invalid escape sequence '\\i'"),
    (r'weight_filler { type: "\xff" }', "not UTF-8"), ("num_output: [4, 5]", "not a repeated field"),
]


@pytest.mark.parametrize("field, message", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_values_protobuf_refuses_are_refused_at_their_line(tmp_path, field, message):
    body = "kernel_size: 3 " + (field if field.startswith("num_output") else "num_output: 4 " + field)
    refused(tmp_path, HEAD + [conv("conv1", "data", body=body), fc("fc", "conv1")], "conv1", message)


@pytest.mark.parametrize("written", ["inf", "-inf", "nan", "-nan", "infinity", "-Infinity", "NaN"])
def test_inf_and_nan_read_as_floats_and_netspec_refuses_them_at_the_prototxt_line(tmp_path, written):
    drop = layer("drop", "Dropout", "conv1", "conv1", f"dropout_param {{ dropout_ratio: {written} }}")
    refused(tmp_path, HEAD + [conv("conv1", "data"), drop, fc("fc", "conv1")], '"drop"', "")


def test_a_binary_file_is_refused_with_its_line(tmp_path):
    net = tmp_path / "net.prototxt"
    net.write_bytes(b'name: "x"\n' + caffemodel({"conv1": [np.ones((2, 3, 3, 3), np.float32)]}))
    code = main(["import-caffe", str(net), "-o", str(tmp_path / "x.yaml")])
    err = code_err()
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"{net}:") and "not a text-format prototxt" in err and "--weights" in err


# --- Caffe's Net::Init and LayerSetUp checks -----------------------------------------------------------

REFUSED_NETS = [  # (case, layers after the input, marker of the line, message)
    ("top produced twice", [conv("conv1", "data"), conv("conv2", "data", "conv1"), fc("fc", "conv1")],
     '"conv2"', "top 'conv1' of layer 'conv2' is also produced by layer 'conv1'"),
    ("top produced twice by one layer", [layer("s", "Split", "data", ["a", "a"]), fc("fc", "a")], '"s"',
     "also produced"),
    ("top is the input", [conv("conv1", "data"), conv("conv2", "conv1", "data"), fc("fc", "data")], '"conv2"',
     "the net's `input:`"),
    ("kernel_size with kernel_h", [conv("c", "data", body="num_output: 4 kernel_size: 3 kernel_h: 3 kernel_w: 3"),
                                   fc("fc", "c")], "kernel_h", "both kernel_size and kernel_h/kernel_w"),
    ("stride with stride_h", [conv("c", "data", body="num_output: 4 kernel_size: 3 stride: 1 stride_h: 1 "
                                                       "stride_w: 1"), fc("fc", "c")], "stride_h", "both stride"),
    ("pad with pad_w", [conv("c", "data", body="num_output: 4 kernel_size: 3 pad: 1 pad_h: 1 pad_w: 1"),
                        fc("fc", "c")], "pad_h", "both pad"),
    ("pooling kernel_size with kernel_w",
     [layer("p", "Pooling", "data", "p", "pooling_param { kernel_size: 2 kernel_h: 2 kernel_w: 2 }"), fc("fc", "p")],
     "kernel_h", "both kernel_size"),
    ("repeated scalar", [conv("c", "data", body="num_output: 4 num_output: 8 kernel_size: 3"), fc("fc", "c")],
     '"c"', "'num_output' is given twice"),
    ("repeated message", [layer("c", "Convolution", "data", "c", "convolution_param { num_output: 4 kernel_size: "
                                "3 } convolution_param { num_output: 4 }"), fc("fc", "c")], '"c"', "given twice"),
    ("repeated pooling scalar", [layer("p", "Pooling", "data", "p", "pooling_param { kernel_size: 2 kernel_size: 3 }"),
                                 fc("fc", "p")], '"p"', "'kernel_size' is given twice"),
    ("global pooling with a kernel",
     [layer("p", "Pooling", "data", "p", "pooling_param { global_pooling: true kernel_size: 2 }"), fc("fc", "p")],
     "global_pooling", "global_pooling and a kernel size"),
    ("global pooling with a stride",
     [layer("p", "Pooling", "data", "p", "pooling_param { global_pooling: true stride: 2 }"), fc("fc", "p")],
     "global_pooling", "pad or stride"),
    ("Input with 3 shapes for 2 tops", [layer("in", "Input", [], ["d2", "label"], "input_param { shape { dim: 1 } "
                                        "shape { dim: 1 } shape { dim: 1 } }")], '"in"', "3 shapes for 2 tops"),
    ("mean_file with mean_value", [], "", ""),
]


@pytest.mark.parametrize("case, body, marker, message", REFUSED_NETS[:-1], ids=[c[0] for c in REFUSED_NETS[:-1]])
def test_nets_caffe_refuses_are_refused_at_their_line(tmp_path, case, body, marker, message):
    head = HEAD if "Input" not in case else ['name: "t"']
    refused(tmp_path, head + body, marker, message)


@pytest.mark.parametrize("size", [0, 2, 4, 6, 10])
def test_lrn_with_an_even_local_size_is_refused(tmp_path, size):
    lrn = layer("norm", "LRN", "conv1", "norm", f"lrn_param {{ local_size: {size} }}")
    refused(tmp_path, HEAD + [conv("conv1", "data"), lrn, fc("fc", "norm")], "local_size", "odd")


BOUNDS = [("convolution_param", f"{key}: 0", key) for key in ("kernel_size", "stride", "dilation", "group",
                                                                   "num_output")] + \
         [("convolution_param", f"{key}_h: {h} {key}_w: {w}", f"{key}_h") for key in ("kernel", "stride")
          for h, w in ((0, 1), (1, 0))] + \
         [("pooling_param", f"{key}: 0", key) for key in ("kernel_size", "stride")] + \
         [("pooling_param", "kernel_h: 0 kernel_w: 2", "kernel_h"), ("pooling_param", "stride_h: 2 stride_w: 0",
                                                                      "stride_h")]


@pytest.mark.parametrize("param, body, marker", BOUNDS, ids=[f"{p[:4]}:{b}" for p, b, _ in BOUNDS])
def test_zero_sizes_are_refused_at_their_line_not_a_zero_division(tmp_path, param, body, marker):
    defaults = {"convolution_param": {"num_output": "4", "kernel_size": "3"}, "pooling_param": {"kernel_size": "2"}}
    keys = {part.split(":")[0] for part in body.split(" ") if part.endswith(":")}
    given = body + "".join(f" {k}: {v}" for k, v in defaults[param].items()
                           if k not in keys and not (k == "kernel_size" and "kernel_h" in keys))
    kind = "Convolution" if param == "convolution_param" else "Pooling"
    lines = HEAD + [layer("x", kind, "data", "x", f"{param} {{\n{given} }}"), fc("fc", "x")]
    refused(tmp_path, [ln for text in lines for ln in text.split("\n")], marker, "")


def test_input_layer_with_data_and_label_tops_and_two_shapes(tmp_path):
    for shapes in ("shape { dim: 2 dim: 3 dim: 16 dim: 16 } shape { dim: 2 }", "shape { dim: 2 dim: 3 dim: 16 dim: 16 }"):
        spec = imports(tmp_path, ['name: "t"', layer("in", "Input", [], ["data", "label"], f"input_param {{ {shapes} }}"),
                                  conv("conv1", "data"), fc("fc", "conv1"),
                                  layer("loss", "SoftmaxWithLoss", ["fc", "label"], "loss")])
        assert spec["input"]["shape"] == [3, 16, 16] and list(spec["losses"]) == ["main"]


LOSSES = ["EuclideanLoss", "SigmoidCrossEntropyLoss", "HingeLoss", "InfogainLoss", "MultinomialLogisticLoss",
          "ContrastiveLoss"]


@pytest.mark.parametrize("loss", LOSSES)
def test_losses_netspec_does_not_train_get_the_unsupported_message(tmp_path, loss):
    lines = ['name: "t"', layer("in", "Input", [], ["data", "label"], "input_param { shape { dim: 2 dim: 3 dim: 8 "
                                                                      "dim: 8 } shape { dim: 2 } }"),
             conv("conv1", "data"), fc("fc", "conv1"), layer("l", loss, ["fc", "label"], "l")]
    refused(tmp_path, lines, f'"{loss}"', f"'l' has type '{loss}', which netspec cannot import — closest")


# --- names, and errors the generated spec would have had ------------------------------------------------

NAMES = [r"conv\n1", r"conv\r1", "conv\\x001", "c#1 # not a comment", "c" * 150, r"c\u20281", r"c\u00851", "1st-conv/a.b"]


@pytest.mark.parametrize("caffe_name", NAMES, ids=range(len(NAMES)))
def test_any_caffe_name_writes_a_spec_that_parses_and_keeps_the_caffe_name_for_weights(tmp_path, caffe_name):
    lines = HEAD + [conv(caffe_name, "data", "c1"), fc("fc", "c1")]
    name = yaml.safe_load(f'"{caffe_name}"') if "\\" in caffe_name else caffe_name  # the name Caffe reads
    weights = tmp_path / "w.caffemodel"
    rng = np.random.default_rng(0)
    blobs = {name: [rng.standard_normal((4, 3, 3, 3)).astype(np.float32), np.zeros(4, np.float32)],
             "fc": [rng.standard_normal((3, 4 * 16 * 16)).astype(np.float32), np.zeros(3, np.float32)]}
    weights.write_bytes(caffemodel(blobs))
    spec = imports(tmp_path, lines, "--weights", str(weights))
    node = spec["nodes"][0]["name"]
    assert len(node) <= 100 and node.replace("_", "").isalnum()
    import torch
    state = torch.load(tmp_path / "x.pt", weights_only=False)["model"]
    assert np.allclose(state[f"{node}.weight"].numpy(), blobs[name][0])


GENERATED_SPEC_ERRORS = [  # values the prototxt accepts but the spec would refuse: reported at the prototxt
    ("num_output 2^31", HEAD + [conv("conv1", "data", body="num_output: 2147483647 kernel_size: 3"), fc("fc", "conv1")],
     '"conv1"'),
    ("a huge input", HEAD[:2] + ["input_shape { dim: 1 dim: 3 dim: 100000000000 dim: 16 }", conv("conv1", "data"),
                                 fc("fc", "conv1")], "input:"),
    ("a dropout ratio of 1", HEAD + [conv("conv1", "data"), layer("d", "Dropout", "conv1", "conv1",
                                                                   "dropout_param { dropout_ratio: 1 }"),
                                     fc("fc", "conv1")], '"d"'),
    ("a moving average fraction of 2", HEAD + [conv("conv1", "data"), layer(
        "bn", "BatchNorm", "conv1", "bn", "batch_norm_param { moving_average_fraction: 2 }"), fc("fc", "bn")], '"bn"'),
]


@pytest.mark.parametrize("case, lines, marker", GENERATED_SPEC_ERRORS, ids=[c[0] for c in GENERATED_SPEC_ERRORS])
def test_errors_of_the_generated_spec_point_at_the_prototxt(tmp_path, case, lines, marker):
    refused(tmp_path, lines, marker, "")


# --- any edit of a valid prototxt: imported, or one line at the prototxt, never a traceback -----------------

VALID = HEAD + [conv("conv1", "data"), layer("bn1", "BatchNorm", "conv1", "conv1"),
                layer("scale1", "Scale", "conv1", "conv1", "scale_param { bias_term: true }"),
                layer("relu1", "ReLU", "conv1", "conv1"),
                layer("pool1", "Pooling", "conv1", "pool1", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }"),
                layer("norm1", "LRN", "pool1", "norm1", "lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }"),
                layer("split", "Split", "norm1", ["a", "b"]), conv("conv2", "a", body="num_output: 4 kernel_size: 1"),
                layer("sum", "Eltwise", ["conv2", "b"], "sum"), fc("fc", "sum")]
TOKENS = ["0", "-1", "1", "3", "0x7fffffff", "4294967295", "1e30", "nan", "-inf", '"x"', "MAX", "true", "{", "}",
          '"\\n"', "#", ":", "[]"]


def mutations(count: int, seed: int = 0):
    gen = np.random.default_rng(seed)
    for _ in range(count):
        lines = [list(text.split(" ")) for text in VALID]
        for _ in range(int(gen.integers(1, 4))):
            row = lines[int(gen.integers(len(lines)))]
            at = int(gen.integers(len(row)))
            action = gen.integers(3)
            if action == 0:
                row[at] = TOKENS[int(gen.integers(len(TOKENS)))]
            elif action == 1:
                del row[at]
            else:
                row.insert(at, row[int(gen.integers(len(row)))])
        yield [" ".join(row) for row in lines]


@pytest.mark.parametrize("lines", list(mutations(80)), ids=range(80))
def test_any_edit_imports_or_is_one_line_at_the_prototxt(tmp_path, lines):
    code, err, out = run(tmp_path, lines)
    assert code in (0, 2) and "Traceback" not in err, err
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith(str(tmp_path / "net.prototxt")), err
        assert not out.exists()
    else:
        assert yaml.safe_load(out.read_text())["nodes"]
