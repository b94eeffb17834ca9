"""The binary protobuf codec (net.wire, net.caffemodel): wire-format edge cases, exact round trips,
blob shapes, robustness (every truncation, random corruption, wrong file types) and a cross-check of
our encoder against an independent reader (OpenCV DNN's Caffe importer)."""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest

from net.caffemodel import (
    CaffemodelError,
    array_to_blob,
    blob_shape_matches,
    blob_to_array,
    decode,
    encode,
    load_binaryproto,
    load_caffemodel,
    save_binaryproto,
    save_caffemodel,
)
from net.schema import Message
from net.wire import varint_bytes


def key(num: int, wt: int) -> bytes:
    return varint_bytes(num << 3 | wt)


def ld(num: int, payload: bytes) -> bytes:
    """A length-delimited record."""
    return key(num, 2) + varint_bytes(len(payload)) + payload


def f32(*xs: float) -> bytes:
    return np.asarray(xs, "<f4").tobytes()


# -- varints ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, encoded",
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (2**63 - 1, b"\xff" * 8 + b"\x7f"),
    ],
)
def test_varint_int64_edges(value, encoded):
    msg = Message("SolverParameter", random_seed=value)
    data = encode(msg)
    assert data == key(20, 0) + encoded
    assert decode(data, "SolverParameter").random_seed == value


@pytest.mark.parametrize(
    "type_name, field, num, value",
    [
        ("FillerParameter", "sparse", 7, -1),
        ("ConcatParameter", "axis", 2, -(2**31)),
        ("SolverParameter", "random_seed", 20, -1),
        ("SolverParameter", "random_seed", 20, -(2**63)),
    ],
)
def test_negative_ints_are_ten_byte_varints(type_name, field, num, value):
    data = encode(Message(type_name, **{field: value}))
    assert len(data) == len(key(num, 0)) + 10
    assert getattr(decode(data, type_name), field) == value


def test_varint_decoding_masks_and_limits():
    # uint32 max; int32 from a 5-byte (non-sign-extended) varint, as some writers emit
    assert decode(key(1, 0) + b"\xff\xff\xff\xff\x0f", "ConvolutionParameter").num_output == 2**32 - 1
    assert decode(key(16, 0) + b"\xff\xff\xff\xff\x0f", "ConvolutionParameter").axis == -1
    assert decode(key(2, 0) + b"\x02", "ConvolutionParameter").bias_term is True
    with pytest.raises(CaffemodelError, match="more than 10 bytes"):
        decode(key(1, 0) + b"\xff" * 11 + b"\x01", "ConvolutionParameter")
    with pytest.raises(CaffemodelError, match="truncated varint at byte 1"):
        decode(key(1, 0) + b"\xff\xff", "ConvolutionParameter")


def test_encode_rejects_out_of_range_and_unknown_enum():
    with pytest.raises(CaffemodelError, match="axis.*out of range"):
        encode(Message("ConcatParameter", axis=2**31))
    with pytest.raises(CaffemodelError, match="num_output.*out of range"):
        encode(Message("ConvolutionParameter", num_output=-1))
    with pytest.raises(CaffemodelError, match="unknown PoolMethod value 'MEAN'"):
        encode(Message("PoolingParameter", pool="MEAN"))
    with pytest.raises(CaffemodelError, match="'name' of LayerParameter: expected a string, got int"):
        encode(Message("LayerParameter", name=5))
    with pytest.raises(CaffemodelError, match="'shape' of BlobProto: expected a BlobShape message"):
        encode(Message("BlobProto", shape=[1, 2]))


# -- repeated scalars -------------------------------------------------------------------------------
def test_packed_and_unpacked_floats_decode_the_same():
    values = (1.5, -2.0, 3.25, 0.0, 1e-30)
    packed = decode(ld(5, f32(*values)), "BlobProto")
    unpacked = decode(b"".join(key(5, 5) + f32(v) for v in values), "BlobProto")
    for blob in (packed, unpacked):
        assert blob.data.dtype == np.float32 and blob.data.flags.writeable
        assert blob.data.tobytes() == f32(*values)
    # a long unpacked run interrupted by another field, then resumed (strided fast path)
    many = np.arange(1000, dtype="<f4")
    data = b"".join(key(5, 5) + x.tobytes() for x in many[:700]) + key(1, 0) + b"\x07"
    data += b"".join(key(5, 5) + x.tobytes() for x in many[700:])
    blob = decode(data, "BlobProto")
    assert np.array_equal(blob.data, many) and blob.num == 7
    # double_data unpacked (wire type 1)
    blob = decode(b"".join(key(8, 1) + struct.pack("<d", v) for v in values), "BlobProto")
    assert blob.double_data.dtype == np.float64 and np.array_equal(blob.double_data, np.array(values))


def test_multiple_packed_chunks_concatenate():
    data = ld(5, f32(1, 2)) + key(5, 5) + f32(3) + ld(5, f32(4, 5, 6)) + ld(6, f32(9))
    blob = decode(data, "BlobProto")
    assert blob.data.tolist() == [1, 2, 3, 4, 5, 6] and blob.diff.tolist() == [9]
    shape = decode(ld(1, b"\x02\x03") + key(1, 0) + b"\x04" + ld(1, b"\x05"), "BlobShape")
    assert shape.dim == [2, 3, 4, 5]


def test_unpacked_field_accepts_packed_encoding():
    # loss_weight (5) is declared unpacked; input_dim (4) too: both also readable packed
    layer = decode(ld(5, f32(0.5, 2.0)) + key(5, 5) + f32(3.0), "LayerParameter")
    assert layer.loss_weight == [0.5, 2.0, 3.0]
    net = decode(ld(4, b"\x0a\x03\xe3\x01") + key(4, 0) + b"\x01", "NetParameter")
    assert net.input_dim == [10, 3, 227, 1]


def test_wire_type_mismatch_is_corrupt():
    with pytest.raises(CaffemodelError, match=r"field 'name' of LayerParameter arrived as wire type 0 \(varint\)"):
        decode(key(1, 0) + b"\x05", "LayerParameter")
    with pytest.raises(CaffemodelError, match="field 'num' of BlobProto .*wire type 2"):
        decode(ld(1, b"\x05"), "BlobProto")
    with pytest.raises(CaffemodelError, match="not a multiple of 4"):
        decode(ld(5, b"\x00" * 6), "BlobProto")


# -- unknown fields, merge semantics -----------------------------------------------------------------
def test_unknown_fields_of_every_wire_type_are_skipped():
    unknown = (
        key(10, 0)
        + b"\x01"
        + key(12, 2)
        + varint_bytes(4)
        + b"\x00\x3c\x00\x3c"  # OpenCV fp16 raw_data
        + key(99, 0)
        + b"\xff\xff\x03"
        + key(98, 1)
        + b"\x00" * 8
        + key(97, 5)
        + b"\x00" * 4
        + key(5000, 2)
        + varint_bytes(3)
        + b"abc"
    )
    blob = decode(unknown + ld(5, f32(1, 2)) + unknown + key(4, 0) + b"\x02", "BlobProto")
    assert blob.data.tolist() == [1, 2] and blob.width == 2
    net = decode(ld(1, b"n") + key(999, 5) + b"1234" + ld(100, ld(1, b"c") + key(700, 0) + b"\x01"))
    assert net.name == "n" and net.layer[0].name == "c"


@pytest.mark.parametrize("wt", [3, 4, 6, 7])
def test_groups_and_invalid_wire_types_are_rejected(wt):
    with pytest.raises(CaffemodelError, match=f"wire type {wt} for field 50 in BlobProto"):
        decode(ld(5, f32(1)) + key(50, wt) + b"\x00" * 8, "BlobProto")
    with pytest.raises(CaffemodelError, match="field number 0"):
        decode(b"\x00\x00", "BlobProto")


def test_last_wins_and_message_merge():
    conv1 = key(1, 0) + b"\x10" + key(4, 0) + b"\x03" + key(5, 0) + b"\x02"
    conv2 = key(4, 0) + b"\x05" + key(5, 0) + b"\x04" + ld(7, ld(1, b"xavier"))
    layer = decode(ld(1, b"a") + ld(1, b"b") + ld(106, conv1) + ld(106, conv2), "LayerParameter")
    conv = layer.convolution_param
    assert layer.name == "b"
    assert conv.num_output == 16 and conv.kernel_size == [3, 5] and conv.group == 4
    assert conv.weight_filler.type == "xavier" and not conv.has("bias_filler")
    # packed arrays of a message given twice concatenate too
    blob_twice = decode(ld(7, ld(5, f32(1, 2))) + ld(7, ld(5, f32(3))), "LayerParameter")
    assert len(blob_twice.blobs) == 2  # repeated message: two elements, not a merge
    state = decode(ld(6, ld(3, b"s1")) + ld(6, key(1, 0) + b"\x00"), "NetParameter").state
    assert state.stage == ["s1"] and state.phase == "TRAIN"


def test_unknown_enum_number_is_kept_and_reencoded():
    data = key(1, 0) + b"\x07"
    pool = decode(data, "PoolingParameter")
    assert pool.pool == 7
    assert encode(pool) == data


# -- round trips ------------------------------------------------------------------------------------
def _v2_net() -> Message:
    net = Message("NetParameter", name="tiny", force_backward=True)
    net.mutable("state").phase = "TRAIN"
    data = net.add("layer", name="data", type="Input", top=["data"])
    data.mutable("input_param").add("shape", dim=[1, 3, 8, 8])
    conv = net.add("layer", name="conv1", type="Convolution", bottom=["data"], top=["conv1"], phase="TEST")
    conv.add("param", lr_mult=1.0)
    conv.add("param", lr_mult=2.0, decay_mult=0.0)
    p = conv.mutable("convolution_param")
    p.num_output, p.kernel_size, p.pad, p.axis = 4, [3], [1], -1
    p.mutable("weight_filler").type = "gaussian"
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45, -3.4e38, 1.0], np.float32)
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    w.reshape(-1)[: special.size] = special
    conv.blobs.append(array_to_blob(w))
    conv.blobs.append(array_to_blob(np.array([np.nan, -0.0, 1.0, 2.0], np.float32)))
    conv.blobs[1].double_diff = np.array([np.nan, -0.0, np.inf, 1e-300])
    relu = net.add("layer", name="relu1", type="ReLU", bottom=["conv1"], top=["conv1"], loss_weight=[0.5])
    relu.mutable("relu_param").negative_slope = 0.125
    relu.add("include", phase="TEST", stage=["deploy", "é"])
    relu.propagate_down = [True, False]
    return net


def _assert_bit_exact(a: Message, b: Message, path: str = "") -> None:
    """Same set fields and values; float arrays compared bit for bit (NaN payloads, -0.0 included)."""
    fa, fb = {f.name: v for f, v in a.set_fields()}, {f.name: v for f, v in b.set_fields()}
    assert fa.keys() == fb.keys(), path
    for name, va in fa.items():
        vb = fb[name]
        if isinstance(va, np.ndarray) or isinstance(vb, np.ndarray):
            assert isinstance(vb, np.ndarray) and va.dtype == vb.dtype, f"{path}.{name}"
            assert va.tobytes() == vb.tobytes(), f"{path}.{name}"
        elif isinstance(va, Message):
            _assert_bit_exact(va, vb, f"{path}.{name}")
        elif isinstance(va, list) and va and isinstance(va[0], Message):
            assert len(va) == len(vb), f"{path}.{name}"
            for i, (x, y) in enumerate(zip(va, vb)):
                _assert_bit_exact(x, y, f"{path}.{name}[{i}]")
        else:
            assert va == vb, f"{path}.{name}"


def test_v2_round_trip_is_exact():
    net = _v2_net()
    data = encode(net)
    again = decode(data)
    _assert_bit_exact(net, again)
    assert encode(again) == data
    assert again.layer[1].convolution_param.axis == -1
    assert again.layer[1].blobs[1].double_diff.dtype == np.float64
    assert blob_to_array(again.layer[1].blobs[0]).shape == (4, 3, 3, 3)
    assert again.layer[2].include[0].stage == ["deploy", "é"]


def test_encode_writes_field_number_order_and_memoryview_input():
    # fields set in reverse order are still written by number, like protobuf does
    blob = Message("BlobProto")
    blob.data = np.array([1.0], np.float32)
    blob.width = 1
    blob.num = 1
    assert encode(blob) == key(1, 0) + b"\x01" + key(4, 0) + b"\x01" + ld(5, f32(1.0))
    data = encode(_v2_net())
    _assert_bit_exact(decode(memoryview(bytearray(data))), decode(data))


def test_v1_layers_round_trip_with_enums():
    net = Message("NetParameter", name="old", input=["data"], input_dim=[10, 3, 227, 227])
    conv = net.add(
        "layers",
        name="conv1",
        type="CONVOLUTION",
        bottom=["data"],
        top=["conv1"],
        blobs_lr=[1.0, 2.0],
        weight_decay=[1.0, 0.0],
    )
    conv.mutable("convolution_param").num_output = 96
    conv.blobs.append(array_to_blob(np.ones((96, 3, 11, 11), np.float32), legacy=True))
    conv.blobs.append(array_to_blob(np.zeros(96, np.float32), legacy=True))
    net.add("layers", name="relu1", type="RELU", bottom=["conv1"], top=["conv1"])
    pool = net.add("layers", name="pool1", type="POOLING", bottom=["conv1"], top=["pool1"])
    pool.mutable("pooling_param").pool = "AVE"
    net.add("layers", name="fc8", type="INNER_PRODUCT", blob_share_mode=["PERMISSIVE"], param=["w"])
    net.add("layers", name="unknown", type=77)
    data = encode(net)
    again = decode(data)
    _assert_bit_exact(net, again)
    assert encode(again) == data
    assert [layer.type for layer in again.layers] == ["CONVOLUTION", "RELU", "POOLING", "INNER_PRODUCT", 77]
    assert again.layers[0].blobs[1].num == 1 and again.layers[0].blobs[1].width == 96


def test_save_and_load_caffemodel_upgrades_v1(tmp_path):
    net = Message("NetParameter", name="old")
    ip = net.add("layers", name="ip", type="INNER_PRODUCT", bottom=["x"], top=["ip"])
    ip.blobs.append(array_to_blob(np.arange(6, dtype=np.float32).reshape(2, 3), legacy=True))
    path = tmp_path / "old.caffemodel"
    save_caffemodel(path, net)
    assert [p.name for p in tmp_path.iterdir()] == ["old.caffemodel"]  # no temp file left behind
    assert path.stat().st_mode & 0o777 == 0o644
    loaded = load_caffemodel(path)
    assert not loaded.layers and loaded.layer[0].type == "InnerProduct"
    assert blob_shape_matches(loaded.layer[0].blobs[0], (2, 3))
    assert blob_to_array(loaded.layer[0].blobs[0]).shape == (1, 1, 2, 3)


# -- blobs --------------------------------------------------------------------------------------------
def test_legacy_and_shape_blobs():
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    legacy = array_to_blob(w, legacy=True)
    assert (legacy.num, legacy.channels, legacy.height, legacy.width) == (1, 1, 3, 4) and not legacy.has("shape")
    assert blob_to_array(legacy).shape == (1, 1, 3, 4)
    assert blob_shape_matches(legacy, (3, 4)) and blob_shape_matches(legacy, (1, 3, 4))
    assert not blob_shape_matches(legacy, (4, 3)) and not blob_shape_matches(legacy, (1, 1, 1, 3, 4))
    modern = array_to_blob(w)
    assert modern.shape.dim == [3, 4] and not modern.has("num")
    assert blob_shape_matches(modern, (3, 4)) and not blob_shape_matches(modern, (1, 1, 3, 4))
    # presence, not value, decides: num=0 present means the legacy (0, C, H, W)
    zero = decode(key(1, 0) + b"\x00" + ld(7, ld(1, b"\x02")), "BlobProto")
    assert blob_to_array(zero).shape == (0, 0, 0, 0)
    scalar = decode(ld(5, f32(7.0)), "BlobProto")
    assert blob_to_array(scalar).shape == () and blob_shape_matches(scalar, ())
    double = decode(ld(5, f32(1, 2)) + ld(8, np.array([3.0, 4.0]).tobytes()) + ld(7, ld(1, b"\x02")), "BlobProto")
    assert blob_to_array(double).tolist() == [3.0, 4.0]


def test_blob_count_mismatch_names_counts():
    blob = array_to_blob(np.zeros((2, 3), np.float32))
    blob.data = np.zeros(5, np.float32)
    with pytest.raises(CaffemodelError, match=r"shape \(2, 3\) needs 6 values, its 'data' holds 5"):
        blob_to_array(blob)


def test_binaryproto_mean_round_trip(tmp_path):
    mean = np.random.default_rng(1).random((1, 3, 16, 12), dtype=np.float32) * 255
    path = tmp_path / "mean.binaryproto"
    save_binaryproto(path, mean)
    raw = decode(path.read_bytes(), "BlobProto")
    assert (raw.num, raw.channels, raw.height, raw.width) == (1, 3, 16, 12)  # as compute_image_mean writes it
    back = load_binaryproto(path)
    assert back.dtype == np.float32 and back.shape == (1, 3, 16, 12) and np.array_equal(back, mean)
    save_binaryproto(path, mean[0], legacy=False)
    assert load_binaryproto(path).shape == (3, 16, 12)
    assert load_binaryproto(path).flags.writeable


# -- robustness ---------------------------------------------------------------------------------------
def _small_model() -> bytes:
    net = _v2_net()
    net.add("layers", name="v1", type="POOLING").blobs.append(array_to_blob(np.ones(3, np.float32), legacy=True))
    return encode(net)


def test_every_truncation_gives_caffemodel_error_or_valid_message():
    data = _small_model()
    errors = 0
    for n in range(len(data)):
        try:
            decode(data[:n], source="t.caffemodel")
        except CaffemodelError as exc:
            assert str(exc).startswith("t.caffemodel: ")
            errors += 1
    assert errors > len(data) // 2


def test_truncation_message_names_innermost_field():
    net = Message("NetParameter", name="n")
    for i in range(4):
        net.add("layer", name=f"l{i}")
    net.layer[3].blobs.append(array_to_blob(np.zeros(4, np.float32)))
    net.layer[3].blobs.append(array_to_blob(np.zeros(1000, np.float32)))
    data = encode(net)
    with pytest.raises(CaffemodelError) as info:
        decode(data[:-100], source="bvlc.caffemodel")
    msg = str(info.value)
    assert msg.startswith(f"bvlc.caffemodel: truncated at byte {len(data) - 100} ")
    assert "field 'data' of BlobProto in layer[3].blobs[1]" in msg and "needs 4000 bytes" in msg


def test_random_corruption_only_raises_caffemodel_error():
    data = bytearray(_small_model())
    rng = np.random.default_rng(1234)
    deadline = time.monotonic() + 10
    outcomes = {"ok": 0, "error": 0}
    for i in range(3000):
        if time.monotonic() > deadline:
            break
        mutated = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(len(mutated)))
            choice = int(rng.integers(4))
            if choice == 0:
                mutated[pos] = int(rng.integers(256))
            elif choice == 1:
                mutated[pos] ^= 1 << int(rng.integers(8))
            elif choice == 2:
                del mutated[pos : pos + int(rng.integers(1, 8))]
            else:
                mutated[pos:pos] = rng.bytes(int(rng.integers(1, 8)))
        try:
            decode(bytes(mutated), source="fuzz")
            outcomes["ok"] += 1
        except CaffemodelError:
            outcomes["error"] += 1
    assert outcomes["ok"] and outcomes["error"] and sum(outcomes.values()) >= 500


def test_wrong_file_types_get_a_plain_message(tmp_path):
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(20)
    with pytest.raises(CaffemodelError, match=r"x.caffemodel: looks like a PNG image, not a binary caffemodel"):
        decode(png, source="x.caffemodel")
    text = b'# LeNet\nname: "LeNet"\nlayer {\n  name: "data"\n  type: "Input"\n}\n'
    path = tmp_path / "deploy.prototxt"
    path.write_bytes(text)
    with pytest.raises(CaffemodelError, match="deploy.prototxt: looks like a text prototxt, not a binary caffemodel"):
        load_caffemodel(path)
    with pytest.raises(CaffemodelError, match="looks like a text prototxt, not a binary .binaryproto"):
        load_binaryproto(path)
    with pytest.raises(CaffemodelError, match="NumPy .npy"):
        decode(b"\x93NUMPY\x01\x00v\x00{'descr': '<f8'", "BlobProto", source="mean.npy")
    (tmp_path / "empty.caffemodel").write_bytes(b"")
    with pytest.raises(CaffemodelError, match="empty file"):
        load_caffemodel(tmp_path / "empty.caffemodel")


def test_decode_is_fast():
    net = Message("NetParameter")
    for i in range(4):
        net.add("layer", name=f"fc{i}").blobs.append(array_to_blob(np.ones((1000, 2000), np.float32)))
    data = encode(net)
    start = time.perf_counter()
    again = decode(data)
    elapsed = time.perf_counter() - start
    assert again.layer[3].blobs[0].data.size == 2_000_000
    assert elapsed < 1.0, f"decoding 8M floats took {elapsed:.2f} s"


# -- an independent reader: OpenCV DNN ------------------------------------------------------------------
LENET_DEPLOY = """name: "LeNet"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 28 dim: 28 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 20 kernel_size: 5 stride: 1 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 50 kernel_size: 5 stride: 1 } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1" inner_product_param { num_output: 500 } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "ip2" top: "prob" }
"""
LENET_PARAMS = {
    "conv1": ((20, 1, 5, 5), (20,)),
    "conv2": ((50, 20, 5, 5), (50,)),
    "ip1": ((500, 800), (500,)),
    "ip2": ((10, 500), (10,)),
}


def _lenet_weights(legacy: bool, v1: bool) -> tuple[Message, dict[str, list[np.ndarray]]]:
    rng = np.random.default_rng(42)
    net = Message("NetParameter", name="LeNet")
    weights = {}
    v1_types = {"conv": "CONVOLUTION", "ip": "INNER_PRODUCT"}
    for name, shapes in LENET_PARAMS.items():
        arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        if v1:
            layer = net.add("layers", name=name, type=v1_types[name.rstrip("12")])
        else:
            layer = net.add("layer", name=name, type="Convolution" if name.startswith("conv") else "InnerProduct")
        layer.blobs.extend(array_to_blob(a, legacy=legacy) for a in arrays)
        weights[name] = arrays
    net.add("layer" if not v1 else "layers", name="relu1", **({"type": "ReLU"} if not v1 else {"type": "RELU"}))
    return net, weights


@pytest.mark.parametrize(
    "legacy, v1", [(False, False), (True, False), (True, True)], ids=["shape", "legacy-dims", "v1-layers"]
)
def test_opencv_reads_our_caffemodel(tmp_path, legacy, v1):
    cv2 = pytest.importorskip("cv2")
    net, weights = _lenet_weights(legacy, v1)
    prototxt, model = tmp_path / "lenet.prototxt", tmp_path / "lenet.caffemodel"
    prototxt.write_text(LENET_DEPLOY)
    model.write_bytes(encode(net))
    ref = cv2.dnn.readNetFromCaffe(str(prototxt), str(model))
    for name, arrays in weights.items():
        layer_id = ref.getLayerId(name)
        for i, expected in enumerate(arrays):
            got = ref.getParam(layer_id, i)
            assert got.size == expected.size, (name, i, got.shape)
            assert np.array_equal(got.reshape(-1), expected.reshape(-1)), (name, i)
        assert ref.getParam(layer_id, 0).shape[0] == arrays[0].shape[0]
    # and OpenCV runs the net on those weights (finite softmax output summing to 1)
    ref.setInput(np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32))
    out = ref.forward()
    assert out.shape == (1, 10) and abs(float(out.sum()) - 1.0) < 1e-5
