"""Binary Caffe files: .caffemodel (NetParameter), .binaryproto (BlobProto mean files), and blobs.

    net = load_caffemodel("bvlc_reference_caffenet.caffemodel")   # decoded + upgraded to V2
    w = blob_to_array(net.layer[1].blobs[0])                       # (96, 3, 11, 11) float32
    save_caffemodel("copy.caffemodel", net)                        # atomic write
    mean = load_binaryproto("imagenet_mean.binaryproto")           # (1, 3, 256, 256) float32

`decode` / `encode` are the protobuf wire codec of `net.wire` plus a check that the bytes are a
binary protobuf at all (a PNG, an .npy or a text prototxt given by mistake gets a plain message).

Exceptions (all `ValueError`s):
    CaffemodelError   undecodable file (names the file, byte offset and message path), a blob whose
                      value count does not match its shape, or a value that cannot be encoded
Errors from `net.upgrade.upgrade_net` (V0/V1 nets Caffe rejects) pass through unchanged.

Blob shapes (caffe_facts §2.5, §7.3): a BlobProto with any of num/channels/height/width present has
the legacy 4-D shape (num, channels, height, width); otherwise its shape is `shape.dim`. Old files store
InnerProduct weights as (1, 1, N, K); `blob_shape_matches` accepts them for a target (N, K).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from .paths import write_atomic
from .schema import MESSAGES, Message
from .wire import CaffemodelError, decode_message, encode_chunks

__all__ = [
    "CaffemodelError",
    "array_to_blob",
    "blob_shape",
    "blob_shape_matches",
    "blob_to_array",
    "decode",
    "encode",
    "load_binaryproto",
    "load_caffemodel",
    "save_binaryproto",
    "save_caffemodel",
]

LEGACY_DIMS = ("num", "channels", "height", "width")

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (Caffe's .caffemodel.h5 format, which crema does not read)"),
    (b"\x93NUMPY", "a NumPy .npy file (read it with numpy.load)"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x1f\x8b", "a gzip archive (decompress it first)"),
)
# the start of a text-format protobuf: comments, then `name:` or `name {`
_TEXT_START = re.compile(rb"\A(?:\s|#[^\n]*\n)*(?:#|[A-Za-z_][A-Za-z0-9_]*\s*[:{])")
_TEXT_BYTES = bytes(range(0x20, 0x7F)) + b"\t\n\r\f\v" + bytes(range(0x80, 0x100))  # UTF-8 allowed


def _what(type_name: str) -> str:
    return {"NetParameter": "binary caffemodel", "BlobProto": "binary .binaryproto blob"}.get(
        type_name, f"binary {type_name}"
    )


def _looks_like_text(head: bytes) -> bool:
    """True if `head` (the first few KB) is plain text that starts like a prototxt."""
    if not _TEXT_START.match(head):
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:  # allow a multi-byte character cut at the end of the window
        if exc.start < len(head) - 4:
            return False
    return not head.translate(None, _TEXT_BYTES)


def _sniff(data: bytes | bytearray | memoryview, type_name: str, source: str) -> None:
    """Raise a plain CaffemodelError when `data` is clearly some other kind of file."""
    head = bytes(data[:4096])
    for magic, kind in _SIGNATURES:
        if head.startswith(magic):
            raise CaffemodelError(f"{source}: looks like {kind}, not a {_what(type_name)}")
    if _looks_like_text(head):
        hint = (
            " (give the .prototxt as the model definition and the .caffemodel as the weights)"
            if type_name == "NetParameter"
            else ""
        )
        raise CaffemodelError(f"{source}: looks like a text prototxt, not a {_what(type_name)}{hint}")


def decode(
    data: bytes | bytearray | memoryview, type_name: str = "NetParameter", *, source: str = "<bytes>"
) -> Message:
    """Decode binary protobuf `data` as a `type_name` message (no upgrade).

    O(len(data)); float payloads become float32/float64 arrays without a per-element loop. `source`
    names the data in errors. Raises CaffemodelError for anything that is not a valid encoding.
    """
    if type_name not in MESSAGES:
        raise KeyError(f"unknown message type {type_name!r}")
    _sniff(data, type_name, source)
    return decode_message(data, type_name, source)


def encode(msg: Message) -> bytes:
    """The binary protobuf encoding of `msg`: set fields in field-number order, packed fields packed."""
    chunks, _ = encode_chunks(msg)
    return b"".join(chunks)


# -- files -----------------------------------------------------------------------------------------
def _read(path: str | os.PathLike) -> bytes:
    data = Path(path).read_bytes()
    if not data:
        raise CaffemodelError(f"{path}: empty file")
    return data


def _write_atomic(path: str | os.PathLike, msg: Message) -> None:
    """Write the encoding of `msg` to `path` atomically (net.paths.write_atomic)."""
    chunks, _ = encode_chunks(msg)
    write_atomic(path, chunks)


def load_caffemodel(path: str | os.PathLike) -> Message:
    """Read a .caffemodel, decode it as a NetParameter and upgrade it (V0/V1 -> V2, legacy inputs)."""
    msg = decode(_read(path), "NetParameter", source=str(path))
    if not msg.layer and not msg.layers:
        raise CaffemodelError(f"{path}: decodes as a NetParameter with no layers; is it really a caffemodel?")
    from .upgrade import upgrade_net  # imported late: the codec works without the upgrader

    return upgrade_net(msg, source=str(path))


def save_caffemodel(path: str | os.PathLike, msg: Message) -> None:
    """Write NetParameter `msg` as a binary caffemodel, atomically (temp file + fsync + rename)."""
    if msg.type_name != "NetParameter":
        raise TypeError(f"save_caffemodel needs a NetParameter, got {msg.type_name}")
    _write_atomic(path, msg)


def load_binaryproto(path: str | os.PathLike) -> np.ndarray:
    """A mean file (one BlobProto) as a float32 array of the blob's shape, e.g. (1, 3, 256, 256)."""
    blob = decode(_read(path), "BlobProto", source=str(path))
    if not len(blob.data) and not len(blob.double_data):
        raise CaffemodelError(f"{path}: the BlobProto holds no values; is it really a mean .binaryproto?")
    return blob_to_array(blob, source=str(path)).astype(np.float32, copy=False)


def save_binaryproto(path: str | os.PathLike, arr: np.ndarray, *, legacy: bool = True) -> None:
    """Write `arr` as one BlobProto (float32), atomically. `legacy=True` (the default, as Caffe's
    compute_image_mean writes it) stores the 4-D num/channels/height/width, so a (3, H, W) array
    reads back as (1, 3, H, W); `legacy=False` stores `shape` and reads back unchanged."""
    arr = np.asarray(arr)
    _write_atomic(path, array_to_blob(arr, legacy=legacy and arr.ndim <= 4))


# -- blobs -----------------------------------------------------------------------------------------
def _is_legacy(blob: Message) -> bool:
    return any(blob.has(d) for d in LEGACY_DIMS)


def blob_shape(blob: Message) -> tuple[int, ...]:
    """The shape of a BlobProto by Caffe's presence rule (legacy 4-D dims, else `shape.dim`)."""
    if _is_legacy(blob):
        return tuple(int(getattr(blob, d)) for d in LEGACY_DIMS)
    return tuple(int(d) for d in blob.shape.dim)


def blob_to_array(blob: Message, *, source: str = "") -> np.ndarray:
    """The values of a BlobProto reshaped to its shape (`blob_shape`).

    `double_data` (float64) is used when non-empty, else `data` (float32); the array is the stored
    one reshaped (no copy). An empty shape is a scalar blob of count 1. Raises CaffemodelError when
    the number of values does not match the shape.
    """
    shape = blob_shape(blob)
    double = len(blob.double_data) > 0
    values = np.asarray(blob.double_data if double else blob.data, np.float64 if double else np.float32)
    count = int(np.prod(shape, dtype=np.int64)) if all(d >= 0 for d in shape) else -1
    if count != values.size:
        where = f"{source}: " if source else ""
        field = "double_data" if double else "data"
        raise CaffemodelError(
            f"{where}blob with shape {shape} needs {max(count, 0)} values, its '{field}' holds {values.size}"
        )
    return values.reshape(shape)


def array_to_blob(arr: np.ndarray, *, legacy: bool = False) -> Message:
    """A BlobProto holding a float32 copy of `arr`.

    Writes `shape` normally; with `legacy=True` writes num/channels/height/width instead (the shape
    right-aligned and padded on the left with 1s, as old Caffe did: a (N, K) weight becomes (1, 1, N, K)).
    """
    arr = np.asarray(arr)
    blob = Message("BlobProto")
    if legacy:
        if arr.ndim > 4:
            raise ValueError(f"a legacy blob has at most 4 axes, got shape {arr.shape}")
        dims = (1,) * (4 - arr.ndim) + arr.shape
        for name, d in zip(LEGACY_DIMS, dims):
            setattr(blob, name, int(d))
    else:
        blob.mutable("shape").dim = [int(d) for d in arr.shape]
    blob.data = np.array(arr, dtype=np.float32).reshape(-1)
    return blob


def blob_shape_matches(blob: Message, target_shape: tuple[int, ...] | list[int]) -> bool:
    """Caffe's `Blob::ShapeEquals`: a legacy blob is compared with the target (at most 4 axes)
    right-aligned and padded with 1s on the left; otherwise `shape.dim` must equal the target exactly."""
    target = tuple(int(d) for d in target_shape)
    if _is_legacy(blob):
        if len(target) > 4:
            return False
        return (1,) * (4 - len(target)) + target == blob_shape(blob)
    return tuple(int(d) for d in blob.shape.dim) == target
