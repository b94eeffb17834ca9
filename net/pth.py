"""PyTorch state-dict files (.pth / .pt) read into NumPy arrays, without torch and without running the file.

    sd = load_state_dict("efficientnet-lite0.pth")   # {"_conv_stem.weight": float32 (32, 3, 3, 3), ...}

Both formats of `torch.save` (see `_legacy_load` and `_load` in torch/serialization.py):

* zip, the default since PyTorch 1.6: uncompressed records `<prefix>/data.pkl` (the pickled object),
  `<prefix>/data/<key>` (one raw storage per key) and optionally `<prefix>/byteorder` ("little" or "big").
* legacy (`_use_new_zipfile_serialization=False`, and every file before 1.6), back to back:
  pickle(MAGIC_NUMBER), pickle(1001), pickle(sys_info dict), pickle(object), pickle(list of storage keys),
  then for each listed key an int64 element count and the storage's raw bytes, all little-endian.

In the object pickle a tensor is `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
requires_grad, backward_hooks[, metadata])` (`_rebuild_tensor_v3(..., dtype)` over a byte storage for dtypes
with no legacy storage class, e.g. uint16), offset/size/stride counted in elements; a storage is a persistent
id `('storage', storage_type, key, location, numel[, view_metadata])`, storage_type a global such as
`torch.FloatStorage` (or `torch.storage.UntypedStorage`: bytes), view_metadata `None` or (old files only)
`(view_key, offset, numel)`. Tensors sharing a storage (tied weights, views) name the same key.

Safety: every pickle goes through `_Unpickler`, whose `find_class` maps the few globals above to inert
stand-ins and raises `PthError` for any other, so nothing in the file runs and torch is never imported.
Before it is unpickled each pickle is scanned with `pickletools.genops` through a reader that will not read
past the end of the file (no length in the file can make us allocate more than the file holds) and memo
indices are checked (the C unpickler sizes its memo by the largest index). Storages are checked against the
bytes left before they are read, tensor views against their storage, and the returned arrays may need at most
4 x the file size + 64 MiB in all (only overlapping views, e.g. stride 0 or tied weights, can exceed it).

Exceptions: `PthError` (a ValueError) names the file and the problem; OSError when the file cannot be opened.
"""

from __future__ import annotations

import _compat_pickle
import dataclasses
import io
import math
import os
import pickle
import pickletools
import re
import reprlib
import struct
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

__all__ = ["PthError", "load_state_dict"]

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # torch/serialization.py, legacy format
PROTOCOL_VERSION = 1001
MAX_NDIM = 32  # NumPy 1.x's limit
EXTRA_OUTPUT_BYTES = 64 << 20  # output allowed beyond 4 x the file size (overlapping views)

# Storage class -> element type; UntypedStorage holds bytes (the tensor then names its dtype). Little-endian.
_STORAGES = {"DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2", "LongStorage": "<i8",
             "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1",
             "BoolStorage": "?", "ComplexFloatStorage": "<c8", "ComplexDoubleStorage": "<c16", "UntypedStorage": "u1"}
_DTYPES = {"float64": "<f8", "float32": "<f4", "float16": "<f2", "int64": "<i8", "int32": "<i4", "int16": "<i2",
           "int8": "i1", "uint8": "u1", "uint16": "<u2", "uint32": "<u4", "uint64": "<u8", "bool": "?",
           "complex64": "<c8", "complex128": "<c16"}
_UNSUPPORTED = re.compile(r"\w+Storage|bfloat16|float8_\w+|float4_\w+|complex32|bits\w+|qu?int\w+")


class PthError(ValueError):
    """Not a PyTorch state dict this reader accepts; the message names the file and the problem."""


def _describe(x: object) -> str:
    return f"{type(x).__name__} {reprlib.repr(x)}"


class _Inert:
    """Base of the stand-ins: BUILD (pickle's __setstate__ hook) on them is refused."""

    __slots__ = ()

    def __setstate__(self, state: object) -> None:
        raise PthError(f"refused BUILD (__setstate__) on a {type(self).__name__.strip('_').lower()}")


@dataclass(frozen=True, eq=False)
class _Type(_Inert):  # what torch.FloatStorage, torch.uint16, ... unpickle to
    name: str
    dtype: np.dtype


@dataclass(frozen=True, eq=False)
class _Storage(_Inert):
    key: str
    dtype: np.dtype  # element type of the storage
    nbytes: int  # of the whole storage in the file
    view: tuple[int, int]  # (first byte, bytes) the tensors see: (0, nbytes) but for legacy views


@dataclass(frozen=True, eq=False)
class _Tensor(_Inert):
    storage: _Storage
    dtype: np.dtype
    offset: Any  # checked by _check_tensor, where the error can name the key
    size: Any
    stride: Any


class _Dict(dict):  # collections.OrderedDict; state_dict()'s `_metadata` arrives by BUILD and is dropped
    __slots__ = ()

    def __setstate__(self, state: object) -> None:
        pass


def _rebuild_tensor_v2(storage: object, offset: object, size: object, stride: object, *_: object) -> _Tensor:
    if not isinstance(storage, _Storage):
        raise PthError(f"a tensor built on {_describe(storage)} instead of a storage")
    return _Tensor(storage, storage.dtype, offset, size, stride)


def _rebuild_tensor_v3(storage: object, offset: object, size: object, stride: object, grad: object,
                       hooks: object, dtype: object, *_: object) -> _Tensor:
    if not isinstance(dtype, _Type) or dtype.name.endswith("Storage"):
        raise PthError(f"a tensor whose dtype is {_describe(dtype)}")
    return dataclasses.replace(_rebuild_tensor_v2(storage, offset, size, stride), dtype=dtype.dtype)


_GLOBALS = {"collections.OrderedDict": _Dict, "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
            "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
            "torch._utils._rebuild_parameter": lambda data, *_: data}  # nn.Parameter -> its tensor


def _find_global(module: str, name: str) -> object:
    if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names, as protocol 2 writes e.g. __builtin__.exec
        module, name = _compat_pickle.NAME_MAPPING[module, name]
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    full = f"{module}.{name}"
    if full in _GLOBALS:
        return _GLOBALS[full]
    if module in ("torch", "torch.storage", "torch.cuda") and name in _STORAGES:
        return _Type(full, np.dtype(_STORAGES[name]))
    if module == "torch" and name in _DTYPES:
        return _Type(full, np.dtype(_DTYPES[name]))
    if module.split(".")[0] == "torch" and _UNSUPPORTED.fullmatch(name):
        raise PthError(f"unsupported tensor type {full}: NumPy has no such dtype (convert it, e.g. .float(), first)")
    raise PthError(f"refused global {full}: a state dict holds only tensors, this pickle asks for other Python "
                   "objects (a whole model saved with torch.save(model)? save model.state_dict() instead)")


def _storage(pid: object, storages: dict[str, _Storage]) -> _Storage:
    """The stand-in for persistent id ('storage', storage_type, key, location, numel[, view_metadata])."""
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] in ("storage", b"storage")):
        raise PthError(f"unexpected persistent id {_describe(pid)}: expected ('storage', type, key, location, numel)")
    kind, key, numel, view = pid[1], pid[2], pid[4], pid[5] if len(pid) == 6 else None
    if not (isinstance(kind, _Type) and kind.name.endswith("Storage") and type(key) is str
            and type(numel) is int and numel >= 0):
        raise PthError(f"malformed storage id {_describe(pid)}")
    nbytes = numel * kind.dtype.itemsize
    root = storages.setdefault(key, _Storage(key, kind.dtype, nbytes, (0, nbytes)))
    if (root.dtype, root.nbytes) != (kind.dtype, nbytes):
        raise PthError(f"storage {key!r} declared both as {root.nbytes} bytes of {root.dtype} and as {_describe(pid)}")
    if view is None:
        return root
    if not (isinstance(view, tuple) and len(view) == 3 and all(type(v) is int for v in view[1:])
            and 0 <= view[1] and 0 <= view[2] and view[1] + view[2] <= numel):
        raise PthError(f"storage {key!r}: view {_describe(view)} outside its {numel} elements")
    return _Storage(key, kind.dtype, nbytes, (view[1] * kind.dtype.itemsize, view[2] * kind.dtype.itemsize))


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, storages: dict[str, _Storage] | None) -> None:
        super().__init__(io.BytesIO(data))
        self.storages = storages

    def find_class(self, module: str, name: str) -> object:
        return _find_global(module, name)

    def persistent_load(self, pid: object) -> object:
        if self.storages is None:
            raise PthError(f"persistent id {_describe(pid)} outside the object pickle")
        return _storage(pid, self.storages)


def _scan(stream: _Reader | io.BytesIO) -> None:
    """Walk one pickle's opcodes up to STOP: lengths within the data, memo indices not beyond the opcode count."""
    try:
        for count, (op, arg, _) in enumerate(pickletools.genops(stream)):
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and not 0 <= arg <= count:
                raise PthError(f"pickle memo index {arg} at opcode {count}: corrupt or hostile file")
    except PthError:
        raise
    except Exception as e:  # noqa: BLE001 - pickletools raises ValueError, UnicodeDecodeError, ... on bad data
        raise PthError(f"corrupt or truncated pickle: {e}") from None


def _unpickle(data: bytes, storages: dict[str, _Storage] | None = None, scanned: bool = False) -> object:
    if not scanned:
        _scan(io.BytesIO(data))
    try:
        return _Unpickler(data, storages).load()
    except PthError:
        raise
    except Exception as e:  # noqa: BLE001 - the C unpickler raises many types on malformed data
        raise PthError(f"corrupt pickle: {type(e).__name__}: {e}") from None


class _Reader:
    """Reads that refuse to pass the end of the file, before allocating what a (lying) length asks for."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f, self.size = f, size

    def read(self, n: int = -1, what: str = "pickle data") -> bytes:
        pos = self.f.tell()
        if n < 0 or n > self.size - pos:
            raise PthError(f"truncated: {what} needs {n} bytes at offset {pos}, {self.size - pos} left")
        return self.f.read(n)

    def readline(self) -> bytes:
        return self.f.readline()

    def pickle(self, storages: dict[str, _Storage] | None = None) -> object:
        """The next pickle: scanned through `read` to find its end, then unpickled from memory."""
        start = self.f.tell()
        _scan(self)
        end = self.f.tell()
        self.f.seek(start)
        return _unpickle(self.f.read(end - start), storages, scanned=True)


def _check_tensor(key: str, t: _Tensor) -> int:
    """Bytes the tensor's array will take; PthError unless its view lies inside its storage."""
    size, stride, offset = t.size, t.stride, t.offset
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride) <= MAX_NDIM
            and all(type(i) is int and i >= 0 for i in (offset, *size, *stride))):
        raise PthError(f"{key!r}: malformed tensor (offset {offset!r}, size {reprlib.repr(size)}, "
                       f"stride {reprlib.repr(stride)})")
    length = t.storage.view[1]
    if length % t.dtype.itemsize:
        raise PthError(f"{key!r}: a storage of {length} bytes is not a whole number of {t.dtype} elements")
    elements = length // t.dtype.itemsize
    numel = math.prod(size)
    if numel and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= elements:
        raise PthError(f"{key!r}: view (offset {offset}, size {size}, stride {stride}) reaches past the end "
                       f"of its storage of {elements} elements")
    return numel * t.dtype.itemsize


def _check_state_dict(obj: object, file_size: int) -> dict[str, _Tensor]:
    if not isinstance(obj, dict):
        found = "a single tensor" if isinstance(obj, _Tensor) else _describe(obj)
        raise PthError(f"expected a state dict (a mapping of str to tensors), found {found}")
    total = 0
    for key, t in obj.items():
        if type(key) is not str:
            raise PthError(f"expected str keys, found the key {_describe(key)}")
        if not isinstance(t, _Tensor):
            hint = " (a training checkpoint? save its state dict on its own)" if isinstance(t, dict) else ""
            raise PthError(f"{key!r}: expected a tensor, found {_describe(t)}{hint}")
        total += _check_tensor(key, t)
    if total > 4 * file_size + EXTRA_OUTPUT_BYTES:
        raise PthError(f"the tensors would need {total} bytes from a {file_size}-byte file (overlapping views)")
    return dict(obj)


def _materialize(
    tensors: dict[str, _Tensor], raws: Iterable[tuple[str, np.ndarray]], order: str
) -> dict[str, np.ndarray]:
    """Copy each tensor out of its storage's bytes as soon as that storage is read, so at most one raw storage
    is alive beside the results. `raws` yields (key, uint8 array); `order` is the storages' byte order."""
    users: dict[str, list[str]] = {}
    for name, t in tensors.items():
        users.setdefault(t.storage.key, []).append(name)
    arrays = {}
    for key, raw in raws:
        for name in users.pop(key, ()):
            t = tensors[name]
            dtype = t.dtype.newbyteorder(order)
            start, length = t.storage.view
            flat = raw[start:start + length].view(dtype)
            if math.prod(t.size):
                strides = tuple(s * dtype.itemsize for s in t.stride)
                view = np.lib.stride_tricks.as_strided(flat[t.offset:], t.size, strides, writeable=False)
            else:
                view = np.empty(t.size, dtype)
            arrays[name] = np.array(view, dtype=dtype.newbyteorder("="), order="C")  # a copy that owns its memory
    assert not users, f"storages never read: {sorted(users)}"
    return {name: arrays[name] for name in tensors}


def _load_legacy(f: BinaryIO, size: int) -> dict[str, np.ndarray]:
    r = _Reader(f, size)
    head = f.read(16)
    if head[:1] != b"\x80":  # PROTO: torch.save pickles with protocol 2 or higher
        found = f"starts with {head!r}" if head else "empty file"
        raise PthError(f"not a PyTorch file: neither a zip archive nor a binary pickle ({found})")
    f.seek(0)
    magic = r.pickle()
    if type(magic) is not int or magic != MAGIC_NUMBER:
        raise PthError(f"a pickle, but not a torch.save file: it starts with {_describe(magic)}, not the magic number")
    version = r.pickle()
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise PthError(f"legacy protocol version {_describe(version)}, expected {PROTOCOL_VERSION}")
    r.pickle()  # sys_info: endianness and C type sizes of the writer; storages are little-endian regardless
    storages: dict[str, _Storage] = {}
    tensors = _check_state_dict(r.pickle(storages), size)
    keys = r.pickle()
    if not (isinstance(keys, list) and all(type(k) is str for k in keys) and len(set(keys)) == len(keys)):
        raise PthError(f"expected the list of storage keys after the object, found {_describe(keys)}")
    unlisted = [k for k in storages if k not in keys]
    if unlisted or len(keys) != len(storages):
        raise PthError(f"storage keys {reprlib.repr(keys)} differ from the storages the tensors use {list(storages)}")

    def raws() -> Iterator[tuple[str, np.ndarray]]:
        for key in keys:
            st = storages[key]
            (numel,) = struct.unpack("<q", r.read(8, f"storage {key!r}'s element count"))
            if numel * st.dtype.itemsize != st.nbytes:
                raise PthError(f"storage {key!r}: {numel} elements in the file, {st.nbytes // st.dtype.itemsize} "
                               "in the pickle")
            yield key, np.frombuffer(r.read(st.nbytes, f"storage {key!r}"), np.uint8)

    return _materialize(tensors, raws(), "<")


def _record(z: zipfile.ZipFile, name: str, file_size: int, nbytes: int | None = None) -> bytes:
    try:
        info = z.getinfo(name)
    except KeyError:
        raise PthError(f"record {name!r} is missing from the archive") from None
    if info.flag_bits & 1:
        raise PthError(f"record {name!r} is encrypted")
    if info.compress_type != zipfile.ZIP_STORED:
        raise PthError(f"record {name!r} is compressed (method {info.compress_type}); torch.save never compresses")
    if info.header_offset + max(info.file_size, info.compress_size) > file_size:
        raise PthError(f"record {name!r} claims {info.file_size} bytes, more than the file holds (truncated?)")
    if nbytes is not None and info.file_size != nbytes:
        raise PthError(f"record {name!r} holds {info.file_size} bytes, the pickle says {nbytes}")
    return z.read(name)


def _load_zip(f: BinaryIO, size: int) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(f) as z:
            pkl = [n for n in z.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pkl) != 1:
                raise PthError(f"a zip archive, but not from torch.save: {len(pkl)} records <name>/data.pkl")
            prefix = pkl[0][: -len("data.pkl")]
            order = _record(z, prefix + "byteorder", size) if prefix + "byteorder" in z.namelist() else b"little"
            if order not in (b"little", b"big"):
                raise PthError(f"byteorder record says {order!r}, expected b'little' or b'big'")
            storages: dict[str, _Storage] = {}
            tensors = _check_state_dict(_unpickle(_record(z, pkl[0], size), storages), size)
            raws = ((k, np.frombuffer(_record(z, f"{prefix}data/{k}", size, st.nbytes), np.uint8))
                    for k, st in storages.items())
            return _materialize(tensors, raws, "<" if order == b"little" else ">")
    except PthError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, RuntimeError, ValueError, struct.error, NotImplementedError) as e:
        raise PthError(f"corrupt or truncated zip archive: {e}") from None


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Tensors of a `torch.save`d state dict, in file order: C-contiguous arrays owning their memory, dtypes
    as stored (float32, int64, ...). PthError for anything else (see the module docstring)."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            zipped = f.read(4) == b"PK\x03\x04"
            f.seek(0)
            return _load_zip(f, size) if zipped else _load_legacy(f, size)
    except PthError as e:
        raise PthError(f"{name}: {e}") from None
