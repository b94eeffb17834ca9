"""Tests for net.prototxt_loader / net.textformat: the protobuf text-format parser and printer."""

from __future__ import annotations

import math
import random
import re
import time

import numpy as np
import pytest

from net.prototxt_loader import (
    PrototxtError,
    format_text,
    load_net_prototxt,
    load_solver_prototxt,
    parse_text,
)
from net.schema import Message
from tests.conftest import ROOT

CAFFENET = ROOT / "models/caffenet/deploy.prototxt"
LENET = ROOT / "models/lenet/deploy.prototxt"
LENET_TRAIN_TEST = ROOT / "examples/mnist/lenet_train_test.prototxt"
LENET_SOLVER = ROOT / "examples/mnist/lenet_solver.prototxt"
LENET_V1 = ROOT / "tests/data/lenet_v1.prototxt"


def f32(x: float) -> float:
    return float(np.float32(x))


def conv(text: str) -> Message:
    return parse_text(text, "ConvolutionParameter")


def error_of(text: str, type_name: str = "NetParameter", filename: str = "x.prototxt") -> PrototxtError:
    with pytest.raises(PrototxtError) as info:
        parse_text(text, type_name, filename)
    return info.value


def assert_error(text: str, line: int, col: int, pattern: str, type_name: str = "NetParameter") -> None:
    err = error_of(text, type_name)
    assert (err.line, err.column) == (line, col), str(err)
    assert str(err).startswith(f"x.prototxt:{line}:{col}: "), str(err)
    assert re.search(pattern, err.reason), str(err)


# -- lexical forms ---------------------------------------------------------------------------


def test_fields_nested_messages_and_delimiters():
    net = parse_text("""
        name: "n"   # a comment
        layer { name: "a" }
        layer: { name: "b" }
        layer < name: "c" >
        layer: < name: "d" >
    """)
    assert net.name == "n"
    assert [layer.name for layer in net.layer] == ["a", "b", "c", "d"]


def test_separators_between_fields():
    c = conv("num_output: 3, kernel_size: 5; stride: 2;group: 1,")
    assert (c.num_output, c.kernel_size, c.stride, c.group) == (3, [5], [2], 1)


def test_comments_everywhere():
    c = conv("# head\nnum_output # after name\n: # after colon\n 7 # after value\n# tail")
    assert c.num_output == 7


def test_repeated_by_repetition_and_list_syntax():
    c = conv("kernel_size: 3 kernel_size: [4, 5] kernel_size: [] pad: [1]")
    assert c.kernel_size == [3, 4, 5]
    assert c.pad == [1]
    shape = parse_text("shape: [{dim: 1}, {dim: [2, 3]}] shape [< dim: 4 >]", "InputParameter")
    assert [s.dim for s in shape.shape] == [[1], [2, 3], [4]]


def test_enums_by_name_and_number():
    p = parse_text("pool: AVE round_mode: FLOOR", "PoolingParameter")
    assert (p.pool, p.round_mode) == ("AVE", "FLOOR")
    assert parse_text("pool: 2", "PoolingParameter").pool == "STOCHASTIC"
    assert parse_text("type: CONVOLUTION", "V1LayerParameter").type == "CONVOLUTION"


def test_strings_quotes_escapes_and_concatenation():
    layer = parse_text(
        r"""name: 'single' type: "dou" 'ble' "!" bottom: "tab\there" bottom: 'q\'\"\\'
                          top: "\x41\102\n\r\a\?" top: "\u00e9\U0001F600" top: "é" """,
        "LayerParameter",
    )
    assert layer.name == "single"
    assert layer.type == "double!"
    assert layer.bottom == ["tab\there", "q'\"\\"]
    assert layer.top == ["AB\n\r\a?", "é\U0001f600", "é"]


def test_bytes_field_keeps_raw_bytes():
    datum = parse_text(r'data: "\000\377\x10a"', "Datum")
    assert datum.data == b"\x00\xff\x10a"


def test_escaped_utf8_bytes_decode_for_string_fields():
    assert parse_text(r'name: "\303\251\xc3\xa9"').name == "éé"


def test_integers_decimal_hex_octal_negative():
    c = conv("num_output: 0x1F kernel_size: 010 kernel_size: 0 axis: -3 pad: 0XfF")
    assert (c.num_output, c.kernel_size, c.axis, c.pad) == (31, [8, 0], -3, [255])
    assert parse_text("sparse: - 5", "FillerParameter").sparse == -5


def test_floats_in_every_spelling():
    spellings = {
        "1e-4": 1e-4,
        ".5": 0.5,
        "5.": 5.0,
        "1f": 1.0,
        "2.5F": 2.5,
        "3": 3.0,
        "-2": -2.0,
        "1E+3": 1000.0,
        "0x10": 16.0,
        "-.25e1": -2.5,
        "inf": math.inf,
        "-inf": -math.inf,
        "Infinity": math.inf,
    }
    for text, value in spellings.items():
        assert parse_text(f"std: {text}", "FillerParameter").std == f32(value), text
    assert math.isnan(parse_text("std: nan", "FillerParameter").std)
    assert math.isnan(parse_text("std: -NaN", "FillerParameter").std)


def test_float_fields_are_float32_double_fields_are_not():
    assert parse_text("alpha: 0.1", "LRNParameter").alpha == f32(0.1)
    assert parse_text("double_data: 0.1", "BlobProto").double_data == [0.1]
    assert parse_text("alpha: 1e39", "LRNParameter").alpha == math.inf


def test_booleans_in_every_spelling():
    for text, value in [
        ("true", True),
        ("True", True),
        ("t", True),
        ("1", True),
        ("false", False),
        ("False", False),
        ("f", False),
        ("0", False),
    ]:
        assert conv(f"bias_term: {text}").bias_term is value, text


def test_int_ranges_accept_the_limits():
    big = parse_text("dim: 9223372036854775807 dim: -9223372036854775808", "BlobShape")
    assert big.dim == [2**63 - 1, -(2**63)]
    assert conv("num_output: 4294967295").num_output == 2**32 - 1
    assert conv("axis: -2147483648").axis == -(2**31)


def test_ceil_mode_alias_of_round_mode():
    assert parse_text("ceil_mode: false", "PoolingParameter").round_mode == "FLOOR"
    assert parse_text("ceil_mode: true", "PoolingParameter").round_mode == "CEIL"


def test_byte_order_mark_is_ignored():
    assert parse_text('\ufeffname: "x"').name == "x"


# -- defaults and presence ------------------------------------------------------------------


def test_defaults_of_absent_fields():
    layer = parse_text('name: "c" convolution_param { num_output: 4 } lrn_param { }', "LayerParameter")
    cp = layer.convolution_param
    assert (cp.group, cp.bias_term, cp.axis, cp.kernel_size, cp.weight_filler.type) == (1, True, 1, [], "constant")
    assert layer.lrn_param.beta == 0.75 and layer.lrn_param.local_size == 5 and layer.lrn_param.k == 1.0
    assert layer.pooling_param.pool == "MAX"
    assert parse_text("").state.phase == "TEST"


def test_presence_tracking():
    layer = parse_text("convolution_param { group: 1 } lrn_param { }", "LayerParameter")
    assert layer.has("convolution_param") and layer.has("lrn_param")
    assert not layer.has("pooling_param") and not layer.has("name")
    assert layer.convolution_param.has("group") and not layer.convolution_param.has("bias_term")
    assert not layer.convolution_param.has("pad")


# -- errors ----------------------------------------------------------------------------------


def test_unknown_field_with_suggestion():
    text = 'layer {\n  name: "c"\n  convolution_param {\n    kernal_size: 3\n  }\n}\n'
    err = error_of(text, filename="deploy.prototxt")
    assert str(err) == (
        "deploy.prototxt:4:5: unknown field 'kernal_size' in ConvolutionParameter (did you mean 'kernel_size'?)"
    )
    assert_error("zzz: 1", 1, 1, r"unknown field 'zzz' in NetParameter$")


def test_missing_colon():
    err = error_of("layer {\n  name }")
    assert str(err) == "x.prototxt:2:8: expected ':' or '{' after field name 'name', found '}'"
    assert_error(
        'layer {\n  bottom "data"\n}', 2, 10, r"expected ':' or '\{' after field name 'bottom', found \"data\""
    )


def test_unterminated_string():
    assert_error('name: "abc\nlayer {}', 1, 7, "unterminated string")
    assert_error("name: 'abc\"", 1, 7, "unterminated string")
    assert_error('name: "abc\\"', 1, 7, "unterminated string")


def test_unbalanced_braces():
    assert_error('name: "n"\nlayer {\n  name: "a"\n', 2, 7, r"unbalanced braces: '\{' of 'layer' opened here is never")
    assert_error('layer { name: "a" }\n}', 2, 1, r"unbalanced braces: '\}' has no matching")
    assert_error('layer { name: "a" >', 1, 19, r"expected '\}' to close '\{' of 'layer' opened at 1:7, found '>'")
    assert_error("kernel_size: [1, 2", 1, 14, r"unbalanced brackets", "ConvolutionParameter")
    assert_error("kernel_size: [1 2]", 1, 17, r"expected ',' or '\]'", "ConvolutionParameter")


def test_values_out_of_range():
    assert_error(
        "num_output: -1",
        1,
        13,
        r"value -1 is out of range for field 'num_output' \(uint32: 0 to",
        "ConvolutionParameter",
    )
    assert_error("\n axis: 2147483648", 2, 8, r"out of range .*int32", "ConvolutionParameter")
    assert_error("num_output: 4294967296", 1, 13, "out of range", "ConvolutionParameter")
    assert_error("dim: 9223372036854775808", 1, 6, "out of range", "BlobShape")


def test_wrong_value_types():
    assert_error(
        'num_output: "3"', 1, 13, r"expected an integer for field 'num_output' \(uint32\)", "ConvolutionParameter"
    )
    assert_error("num_output: 3.0", 1, 13, "expected an integer", "ConvolutionParameter")
    assert_error("num_output: 1e3", 1, 13, "expected an integer", "ConvolutionParameter")
    assert_error("name: data", 1, 7, r"expected a quoted string .* \(strings need quotes: \"data\"\)")
    assert_error("bias_term: yes", 1, 12, "expected true or false", "ConvolutionParameter")
    assert_error("bias_term: 2", 1, 12, "expected true or false", "ConvolutionParameter")
    assert_error('std: "x"', 1, 6, "expected a number", "FillerParameter")
    assert_error("pool: MAXX", 1, 7, r"unknown value 'MAXX' .*did you mean 'MAX'\?", "PoolingParameter")
    assert_error("pool: 7", 1, 7, r"7 is not a value of enum field 'pool'", "PoolingParameter")
    assert_error("pool: 1.5", 1, 7, r"expected an integer", "PoolingParameter")
    assert_error("kernel_size: 09", 1, 14, r"invalid octal", "ConvolutionParameter")


def test_v1_enum_type_inside_layer_is_explained():
    assert_error("layer {\n type: CONVOLUTION\n}", 2, 8, r"V1 enum type, valid inside 'layers \{ \}'")


def test_message_field_given_a_scalar_and_scalar_given_a_message():
    assert_error("layer: 3", 1, 8, r"field 'layer' of NetParameter is a message \(LayerParameter\); expected '\{'")
    assert_error("name { }", 1, 6, r"field 'name' of NetParameter is a string, not a message")
    assert_error("num_output: [1, 2]", 1, 13, r"is not repeated; the list syntax", "ConvolutionParameter")


def test_singular_field_given_twice():
    assert_error(
        "num_output: 1\nnum_output: 2", 2, 1, r"not repeated and was already set at 1:1", "ConvolutionParameter"
    )
    assert_error("state { } state { }", 1, 11, r"already set at 1:1")


def test_lexical_errors():
    assert_error("num_output: 12ab", 1, 13, r"invalid number '12ab'", "ConvolutionParameter")
    assert_error("std: 1.2.3", 1, 6, r"invalid number", "FillerParameter")
    assert_error("name: @", 1, 7, r"unexpected character '@'")
    assert_error('name: "a\\qb"', 1, 9, r"invalid escape sequence '\\q'")
    assert_error('name: "\\400"', 1, 8, r"octal escape")
    assert_error('"name": 1', 1, 1, r"expected a field name of NetParameter, found \"name\"")
    assert_error("name:", 1, 6, r"found end of file")


def test_not_utf8_and_missing_files(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_bytes(b'name: "x"\nlayer { name: "\xff" }\n')
    with pytest.raises(PrototxtError, match=r"bad.prototxt:2:16: not UTF-8 text: byte 0xff"):
        load_net_prototxt(bad)
    with pytest.raises(FileNotFoundError, match=r"nope.prototxt: no such file"):
        load_net_prototxt(tmp_path / "nope.prototxt")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        load_net_prototxt(tmp_path)


def test_error_names_the_file(tmp_path):
    path = tmp_path / "deploy.prototxt"
    path.write_text('name: "x"\nlayer {\n  convolution_param { kernal_size: 3 }\n}\n')
    with pytest.raises(PrototxtError, match=re.escape(f"{path}:3:23: unknown field 'kernal_size'")):
        load_net_prototxt(path)


def test_mutated_files_only_ever_raise_prototxt_error():
    """Random edits of a real file: each either parses or raises PrototxtError, nothing else."""
    text = LENET_TRAIN_TEST.read_text()
    rng = random.Random(1)
    alphabet = ['"', "'", "{", "}", "<", ">", "[", "]", ":", ",", "-", "#", "\\", "\n", "x", "1", ".", "e", " ", "@"]
    for _ in range(400):
        chars = list(text)
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(chars))
            action = rng.random()
            if action < 0.4:
                del chars[pos]
            elif action < 0.8:
                chars.insert(pos, rng.choice(alphabet))
            else:
                chars[pos] = rng.choice(alphabet)
        try:
            parse_text("".join(chars), "NetParameter", "m.prototxt")
        except PrototxtError as exc:
            assert str(exc).startswith("m.prototxt:")


# -- printing --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [CAFFENET, LENET, LENET_TRAIN_TEST, LENET_V1])
def test_format_text_round_trip_on_real_files(path):
    net = parse_text(path.read_text(), "NetParameter", str(path))
    text = format_text(net)
    assert parse_text(text) == net
    assert format_text(parse_text(text)) == text


def test_format_text_round_trip_solver():
    solver = parse_text(LENET_SOLVER.read_text(), "SolverParameter")
    assert parse_text(format_text(solver), "SolverParameter") == solver


def test_format_text_style_and_tricky_values():
    layer = Message("LayerParameter", name='q"uo\\te\n\x01é', type="Convolution")
    layer.loss_weight.extend([f32(0.1), f32(1e-5), 1.0, math.inf, -math.inf, f32(1 / 3), f32(3.4e38), 0.0])
    layer.mutable("convolution_param").num_output = 20
    layer.convolution_param.kernel_size.extend([3, 5])
    layer.convolution_param.bias_term = False
    layer.mutable("pooling_param").pool = "AVE"
    layer.add("param", lr_mult=f32(2.0))
    text = format_text(layer)
    assert text.splitlines()[:4] == [
        r'name: "q\"uo\\te\n\001é"',
        'type: "Convolution"',
        "loss_weight: 0.1",
        "loss_weight: 1e-05",
    ]
    assert "convolution_param {\n  num_output: 20\n  kernel_size: 3\n  kernel_size: 5\n  bias_term: false\n}\n" in text
    assert "pooling_param {\n  pool: AVE\n}\n" in text and "param {\n  lr_mult: 2\n}\n" in text
    back = parse_text(text, "LayerParameter")
    assert back == layer
    assert [np.float32(v) for v in back.loss_weight] == [np.float32(v) for v in layer.loss_weight]


def test_format_text_nan_and_bytes_and_indent():
    datum = Message("Datum", data=bytes(range(256)), label=3)
    datum.float_data.append(math.nan)
    text = format_text(datum, indent=4)
    assert all(line.startswith("    ") for line in text.splitlines())
    back = parse_text(text, "Datum")
    assert back.data == datum.data and back.label == 3 and math.isnan(back.float_data[0])


def test_format_text_of_binary_style_float32_values_round_trips():
    blob = Message("BlobProto")
    blob.data = np.array([0.1, 1e-7, 123456.789, -2.5], dtype=np.float32)
    blob.mutable("shape").dim.extend([2, 2])
    back = parse_text(format_text(blob), "BlobProto")
    assert back == blob


# -- files -----------------------------------------------------------------------------------


def test_caffenet_deploy_parses():
    net = load_net_prototxt(CAFFENET)
    assert net.name == "CaffeNet"
    assert [layer.name for layer in net.layer] == [
        "data",
        "conv1",
        "relu1",
        "pool1",
        "norm1",
        "conv2",
        "relu2",
        "pool2",
        "norm2",
        "conv3",
        "relu3",
        "conv4",
        "relu4",
        "conv5",
        "relu5",
        "pool5",
        "fc6",
        "relu6",
        "drop6",
        "fc7",
        "relu7",
        "drop7",
        "fc8",
        "prob",
    ]
    layers = {layer.name: layer for layer in net.layer}
    assert layers["data"].input_param.shape[0].dim == [10, 3, 227, 227]
    assert [layers[n].convolution_param.group for n in ("conv1", "conv2", "conv3", "conv4", "conv5")] == [1, 2, 1, 2, 2]
    assert layers["conv1"].convolution_param.stride == [4]
    assert layers["conv2"].convolution_param.pad == [2]
    assert layers["norm1"].lrn_param.alpha == f32(1e-4)
    assert layers["fc8"].inner_product_param.num_output == 1000
    assert layers["relu6"].bottom == layers["relu6"].top == ["fc6"]


def test_lenet_files_parse():
    deploy = load_net_prototxt(LENET)
    assert [layer.type for layer in deploy.layer] == [
        "Input",
        "Convolution",
        "Pooling",
        "Convolution",
        "Pooling",
        "InnerProduct",
        "ReLU",
        "InnerProduct",
        "Softmax",
    ]
    assert deploy.layer[0].input_param.shape[0].dim == [64, 1, 28, 28]
    train = load_net_prototxt(LENET_TRAIN_TEST)
    data = [layer for layer in train.layer if layer.type == "Data"]
    assert [d.include[0].phase for d in data] == ["TRAIN", "TEST"]
    assert [d.data_param.batch_size for d in data] == [64, 100]
    assert data[0].transform_param.scale == 0.00390625 and data[0].data_param.backend == "LMDB"
    conv1 = train.layer[2]
    assert [p.lr_mult for p in conv1.param] == [1.0, 2.0] and conv1.convolution_param.weight_filler.type == "xavier"


def test_lenet_solver_parses():
    s = load_solver_prototxt(LENET_SOLVER)
    assert s.net == "examples/mnist/lenet_train_test.prototxt"
    assert (s.test_iter, s.test_interval, s.display, s.max_iter, s.snapshot) == ([100], 500, 100, 10000, 5000)
    assert (s.base_lr, s.momentum, s.weight_decay) == (f32(0.01), f32(0.9), f32(0.0005))
    assert (s.lr_policy, s.gamma, s.power) == ("inv", f32(1e-4), 0.75)
    assert (s.snapshot_prefix, s.solver_mode, s.type) == ("examples/mnist/lenet", "CPU", "SGD")


def test_parsing_10k_lines_is_fast():
    layer = LENET_TRAIN_TEST.read_text().split("\n", 1)[1]
    text = 'name: "big"\n' + layer * (10_000 // layer.count("\n") + 1)
    assert text.count("\n") >= 10_000
    start = time.perf_counter()
    net = parse_text(text)
    elapsed = time.perf_counter() - start
    assert len(net.layer) > 100
    assert elapsed < 1.0, f"parsing {text.count(chr(10))} lines took {elapsed:.2f} s"
