"""Layer coverage for Model Zoo ports (issue 17): parameters of the existing layers that were read but not honoured.
An out-of-range axis (Flatten, InnerProduct, Concat, Scale/Bias, Reshape) used to wrap around silently, a Reshape
0 beyond the input's axes raised IndexError, a shared param name trained apart; each is now one error naming the
layer and the parameter. Reshape with 0 / -1, Flatten and InnerProduct with `axis` equal OpenCV DNN exactly / within
1e-5 * max(|ref|, 1)."""

from __future__ import annotations

import numpy as np
import pytest

from net import Net, NetError

cv2 = pytest.importorskip("cv2")

INPUT = 'name: "t"\nlayer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }\n'


@pytest.mark.parametrize(
    ("layer", "match"),
    [
        ('type: "Flatten" flatten_param { axis: 5 }', "Flatten 'x': flatten_param.axis 5 is out of range"),
        ('type: "Flatten" flatten_param { end_axis: -5 }', "Flatten 'x': flatten_param.end_axis -5 is out of range"),
        ('type: "InnerProduct" inner_product_param { num_output: 2 axis: 7 }', "inner_product_param.axis 7"),
        ('type: "Scale" scale_param { axis: 9 }', "Scale 'x': axis 9 is out of range"),
        ('type: "Bias" bias_param { axis: -5 }', "Bias 'x': axis -5 is out of range"),
        ('type: "Reshape" reshape_param { shape { dim: 0 dim: 0 dim: 0 dim: 0 dim: 0 } }', "copies \\(0\\) an axis"),
        ('type: "Reshape" reshape_param { axis: 9 shape { dim: 1 } }', "reshape_param.axis 9 is out of range"),
        ('type: "Reshape" reshape_param { num_axes: 9 shape { dim: 1 } }', "reshape_param.num_axes 9"),
        ('type: "Reshape" reshape_param { shape { dim: -1 dim: -1 } }', "at most one -1"),
    ],
)
def test_out_of_range_parameters_are_errors(layer: str, match: str) -> None:
    with pytest.raises(NetError, match=match):
        Net.from_string(INPUT + f'layer {{ name: "x" bottom: "data" top: "x" {layer} }}')


def test_concat_axis_out_of_range() -> None:
    text = INPUT + 'layer { name: "x" type: "Concat" bottom: "data" bottom: "data" top: "x" concat_param { axis: 6 } }'
    with pytest.raises(NetError, match="Concat 'x': concat_param.axis 6 is out of range"):
        Net.from_string(text)


def test_shared_param_names_are_refused_for_training_only() -> None:
    conv = "convolution_param { num_output: 2 kernel_size: 1 }"
    text = INPUT + (
        f'layer {{ name: "a" type: "Convolution" bottom: "data" top: "a" param {{ name: "w" }} {conv} }}\n'
        f'layer {{ name: "b" type: "Convolution" bottom: "data" top: "b" param {{ name: "w" }} {conv} }}\n'
    )
    Net.from_string(text)  # TEST: each layer's own copy, as Caffe writes both into the caffemodel
    with pytest.raises(NetError, match="Convolution 'a': param \\{ name \\} .* not implemented for training"):
        Net.from_string(text, phase="train")


@pytest.mark.parametrize(
    ("spec", "shape"),
    [
        ("reshape_param { shape { dim: 0 dim: -1 } }", (2, 48)),
        ("reshape_param { shape { dim: 0 dim: 0 dim: 2 dim: -1 } }", (2, 3, 2, 8)),
        ("reshape_param { axis: 1 num_axes: 2 shape { dim: -1 } }", (2, 12, 4)),
        ("reshape_param { axis: -1 shape { dim: 1 dim: 1 } }", (2, 3, 4, 4, 1, 1)),
    ],
)
def test_reshape_zero_and_minus_one(spec: str, shape: tuple) -> None:
    net = Net.from_string(INPUT + f'layer {{ name: "x" type: "Reshape" bottom: "data" top: "x" {spec} }}')
    assert net.blobs["x"].shape == shape


def test_reshape_flatten_inner_product_axis_match_opencv(tmp_path) -> None:
    text = (
        INPUT
        + """
layer { name: "r" type: "Reshape" bottom: "data" top: "r" reshape_param { shape { dim: 0 dim: 0 dim: -1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "r" top: "ip" inner_product_param { num_output: 5 axis: 2 } }
layer { name: "f" type: "Flatten" bottom: "ip" top: "f" flatten_param { axis: 1 end_axis: 2 } }
layer { name: "ip2" type: "InnerProduct" bottom: "data" top: "ip2" inner_product_param { num_output: 3 axis: -2 } }
layer { name: "f2" type: "Flatten" bottom: "ip2" top: "f2" flatten_param { axis: 2 } }
"""
    )
    proto = tmp_path / "p.prototxt"
    proto.write_text(text)
    net = Net.load(proto)
    rng = np.random.default_rng(0)
    for name in net.params:
        for p in net.params[name]:
            p[...] = rng.normal(0.0, 0.5, size=p.shape)
    net.save(tmp_path / "p.caffemodel")
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    net.forward(data=x)
    ref = cv2.dnn.readNetFromCaffe(str(proto), str(tmp_path / "p.caffemodel"))
    ref.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    ref.setInput(x)
    names = ["r", "ip", "f", "ip2", "f2"]
    for name, got in zip(names, ref.forward(names)):
        a = net.blobs[name]
        assert a.shape == got.shape, (name, a.shape, got.shape)
        assert np.all(np.abs(a - got) <= 1e-5 * np.maximum(np.abs(got), 1)), name


def test_errors_from_a_file_name_its_line(tmp_path) -> None:
    """A parameter crema does not implement, or an unknown type, is one error naming the layer, FILE:LINE and the
    parameter, raised while the net is built (before any weights load)."""
    proto = tmp_path / "bad.prototxt"
    proto.write_text(
        'name: "bad"\n'
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
        "# a comment line\n"
        "layer {\n"
        '  name: "pool" type: "Pooling" bottom: "data" top: "pool"\n'
        "  pooling_param { pool: STOCHASTIC kernel_size: 2 pad: 1 }\n"
        "}\n"
    )
    with pytest.raises(NetError, match=f"Pooling 'pool': padding .* only for MAX and AVE .*\\(at {proto}:4\\)$"):
        Net.load(proto, tmp_path / "never_read.caffemodel")
    proto.write_text(proto.read_text().replace('type: "Pooling"', 'type: "Pooling3D"'))
    with pytest.raises(NetError, match=f"layer 'pool' \\(at {proto}:4\\): unknown layer type 'Pooling3D'"):
        Net.load(proto)
    v1 = tmp_path / "v1.prototxt"
    v1.write_text(
        'name: "v1"\ninput: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 4\ninput_dim: 4\n'
        'layers {\n  name: "s" type: SLICE bottom: "data" top: "s1" top: "s2"\n  slice_param { slice_dim: 9 }\n}\n'
    )
    with pytest.raises(NetError, match=f"Slice 's': axis 9 is out of range.*\\(at {v1}:7\\)"):
        Net.load(v1)


def test_batchnorm_batch_statistics_are_refused_while_building() -> None:
    text = INPUT + 'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "data" }'
    Net.from_string(text)  # TEST: the global statistics
    with pytest.raises(NetError, match="BatchNorm 'bn': batch statistics .* not implemented"):
        Net.from_string(text, phase="train")


def test_v1_nets_with_the_new_types_upgrade_and_run() -> None:
    """V1 `layers` with DECONVOLUTION, ABSVAL, MVN, POWER, ARGMAX, SLICE, THRESHOLD, EXP, BNLL, SILENCE (caffe.proto's
    LayerType enum) upgrade to the V2 types and run; values against the V2 spelling of the same net."""
    body = [
        ("up", "DECONVOLUTION", "Deconvolution", 'bottom: "data" top: "up"',
         'convolution_param { num_output: 2 kernel_size: 2 stride: 2 weight_filler { type: "xavier" } }'),
        ("abs", "ABSVAL", "AbsVal", 'bottom: "up" top: "abs"', ""),
        ("mvn", "MVN", "MVN", 'bottom: "abs" top: "mvn"', "mvn_param { across_channels: true }"),
        ("pw", "POWER", "Power", 'bottom: "mvn" top: "pw"', "power_param { power: 2 shift: 1 }"),
        ("am", "ARGMAX", "ArgMax", 'bottom: "pw" top: "am"', "argmax_param { top_k: 3 }"),
        ("sl", "SLICE", "Slice", 'bottom: "data" top: "s1" top: "s2"', ""),
        ("th", "THRESHOLD", "Threshold", 'bottom: "s1" top: "th"', "threshold_param { threshold: 0.1 }"),
        ("ex", "EXP", "Exp", 'bottom: "s2" top: "ex"', ""),
        ("bn", "BNLL", "BNLL", 'bottom: "ex" top: "bn"', ""),
        ("si", "SILENCE", "Silence", 'bottom: "bn"', ""),
    ]  # fmt: skip
    head = 'name: "n"\ninput: "data"\ninput_dim: 1\ninput_dim: 2\ninput_dim: 4\ninput_dim: 4\n'
    v1 = head + "".join(f'layers {{ name: "{n}" type: {e} {io} {p} }}\n' for n, e, _, io, p in body)
    v2 = head + "".join(f'layer {{ name: "{n}" type: "{t}" {io} {p} }}\n' for n, _, t, io, p in body)
    a, b = Net.from_string(v1, seed=3), Net.from_string(v2, seed=3)
    assert [layer.type for layer in a.layers] == [layer.type for layer in b.layers]
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)
    out_a, out_b = a.forward(data=x), b.forward(data=x)
    assert sorted(out_a) == ["am", "th"]
    for name, value in out_a.items():
        np.testing.assert_array_equal(value, out_b[name])


def test_memory_data_is_an_input() -> None:
    conv = 'convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "xavier" } }'
    text = (
        'name: "m"\nlayer { name: "data" type: "MemoryData" top: "data" top: "label"\n'
        "  memory_data_param { batch_size: 2 channels: 3 height: 5 width: 5 } }\n"
        f'layer {{ name: "c" type: "Convolution" bottom: "data" top: "c" {conv} }}\n'
    )
    net = Net.from_string(text)
    assert net.inputs == ["data", "label"] and net.blobs["label"].shape == (2,)
    x = np.random.default_rng(0).standard_normal((4, 3, 5, 5)).astype(np.float32)
    same = Net.from_string(
        text.replace('type: "MemoryData" top: "data" top: "label"', 'type: "Input" top: "data"').replace(
            "memory_data_param { batch_size: 2 channels: 3 height: 5 width: 5 }",
            "input_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } }",
        )
    )
    same.copy_from(net.to_proto())
    np.testing.assert_array_equal(net.forward(data=x)["c"], same.forward(data=x)["c"])
    with pytest.raises(NetError, match="MemoryData 'data': transform_param is not applied to fed arrays"):
        Net.from_string(text.replace("memory_data_param {", "transform_param { scale: 0.5 } memory_data_param {"))
    with pytest.raises(NetError, match="MemoryData 'data': memory_data_param batch_size, channels"):
        Net.from_string(text.replace("height: 5 ", ""))
