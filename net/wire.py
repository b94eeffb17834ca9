"""Protobuf wire format over crema's Caffe schema: a from-scratch decoder and encoder.

    decode_message(buf, "NetParameter", source="bvlc.caffemodel") -> Message
    encode_chunks(msg) -> (list of bytes-like chunks, total size)   # b"".join(chunks) is the file

Wire format (caffe_facts §1): a message is a flat run of records; key = varint((number << 3) | wire type);
wire types 0 varint, 1 fixed 8 bytes, 2 length-delimited, 5 fixed 4 bytes (3/4 = groups, rejected).
int32/int64 are two's-complement 64-bit varints (no zigzag anywhere in caffe.proto).

Speed: the Python loop runs once per record, never per float. Packed float/double payloads of
BlobProto (`data`, `diff`, `double_data`, `double_diff`) are sliced with `numpy.frombuffer` from the
caller's buffer (bytes or memoryview, never copied whole) and copied once into native float32/float64
arrays; runs of unpacked float records are gathered with one strided numpy view. Encoding appends
chunks (array payloads as memoryviews, not copied) so a 240 MB model costs one join or one write.

Decoded values: scalars as Python values, enums as their names (unknown numbers kept as int),
strings as str (undecodable bytes kept via 'surrogateescape', so they re-encode unchanged), repeated
scalars as lists, except the four BlobProto arrays above, which are 1-D numpy arrays.

Errors: `CaffemodelError(ValueError)` naming the source, the byte offset and the message path
(`layer[3].blobs[0]`); nothing else escapes the decoder.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from .schema import ENUM_NAMES, ENUMS, MESSAGES, Message

MASK64 = (1 << 64) - 1
WIRE_NAMES = {0: "varint", 1: "fixed64", 2: "length-delimited", 3: "group start", 4: "group end", 5: "fixed32"}

# field kinds
VARINT, F32, F64, STR, BYTES, MSG = range(6)
_KIND_OF = {"float": F32, "double": F64, "string": STR, "bytes": BYTES}
_EXPECTED_WT = {VARINT: 0, F32: 5, F64: 1, STR: 2, BYTES: 2, MSG: 2}
_ARRAY_DTYPES = {F32: np.dtype("<f4"), F64: np.dtype("<f8")}
_NATIVE = {F32: np.float32, F64: np.float64}
_F32 = struct.Struct("<f")
_F64 = struct.Struct("<d")


class CaffemodelError(ValueError):
    """A binary protobuf file (.caffemodel, .binaryproto) that cannot be decoded or a message that
    cannot be encoded; the text names the file, the byte offset and the message path."""


class _Bad(Exception):
    """Internal: raised inside the decoder, turned into CaffemodelError (with the file name) at the top."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


# -- per-type tables ------------------------------------------------------------------------------
def _varint_conv(type_: str):
    """Function mapping a raw 64-bit varint to the field's Python value."""
    if type_ == "int32" or type_ in ENUMS:

        def to_int32(v: int) -> int:
            v &= 0xFFFFFFFF
            return v - (1 << 32) if v >= 1 << 31 else v

        if type_ in ENUMS:
            names = ENUM_NAMES[type_]
            return lambda v: names.get(to_int32(v), to_int32(v))
        return to_int32
    if type_ == "int64":
        return lambda v: v - (1 << 64) if v >= 1 << 63 else v
    if type_ == "uint32":
        return lambda v: v & 0xFFFFFFFF
    if type_ == "bool":
        return lambda v: v != 0
    return lambda v: v  # uint64


def _build_tables() -> tuple[dict, dict]:
    decode: dict[str, dict[int, tuple]] = {}
    encode: dict[str, dict[str, tuple]] = {}
    for tname, fields in MESSAGES.items():
        dtab, etab = {}, {}
        for f in fields:
            kind = MSG if f.type in MESSAGES else _KIND_OF.get(f.type, VARINT)
            conv = _varint_conv(f.type) if kind == VARINT else None
            as_array = f.repeated and f.packed and kind in (F32, F64)
            dtab[f.number] = (f.name, kind, conv, f.repeated, as_array, f.type)
            etab[f.name] = (f.number, kind, f.repeated, f.packed, f.type)
        decode[tname], encode[tname] = dtab, etab
    return decode, encode


_DECODE, _ENCODE = _build_tables()


# -- decoding -------------------------------------------------------------------------------------
def _path(ctx: tuple | None) -> str:
    parts = []
    while ctx is not None:
        ctx, name, idx = ctx
        parts.append(name if idx is None else f"{name}[{idx}]")
    return ".".join(reversed(parts))


def _where(tname: str, ctx: tuple | None) -> str:
    path = _path(ctx)
    return f"{tname} in {path}" if path else tname


def _read_varint(buf, pos: int, end: int, tname: str, ctx: tuple | None) -> tuple[int, int]:
    """(value, new position) of the varint at `pos`; at most 10 bytes, value masked to 64 bits."""
    start, result, shift = pos, 0, 0
    while True:
        if pos >= end:
            left = "end of file" if end == len(buf) else f"end of the enclosing {_where(tname, ctx)}"
            raise _Bad(f"truncated varint at byte {start} (runs past the {left})")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & MASK64, pos
        shift += 7
        if shift >= 70:
            raise _Bad(f"corrupt varint at byte {start} (more than 10 bytes) in {_where(tname, ctx)}")


def _need(buf, pos: int, n: int, end: int, what: str, tname: str, ctx: tuple | None) -> int:
    """End position of `n` bytes at `pos`, or a truncation error naming `what`."""
    stop = pos + n
    if stop > end:
        if end == len(buf):
            raise _Bad(
                f"truncated at byte {end} ({what} of {_where(tname, ctx)} at byte {pos} needs {n} bytes, "
                f"{end - pos} left)"
            )
        raise _Bad(
            f"corrupt length at byte {pos} ({what} of {_where(tname, ctx)} needs {n} bytes, "
            f"only {end - pos} left in the enclosing message)"
        )
    return stop


def _skip(buf, pos: int, end: int, key: int, key_pos: int, tname: str, ctx: tuple | None) -> int:
    """Position after the value of an unknown field (skipped by wire type)."""
    wt, num = key & 7, key >> 3
    what = f"unknown field {num}"
    if wt == 0:
        return _read_varint(buf, pos, end, tname, ctx)[1]
    if wt == 1:
        return _need(buf, pos, 8, end, what, tname, ctx)
    if wt == 5:
        return _need(buf, pos, 4, end, what, tname, ctx)
    if wt == 2:
        n, pos = _read_varint(buf, pos, end, tname, ctx)
        return _need(buf, pos, n, end, what, tname, ctx)
    kind = "groups are not used by caffe.proto" if wt in (3, 4) else "no such wire type"
    raise _Bad(f"corrupt record at byte {key_pos}: wire type {wt} for field {num} in {_where(tname, ctx)} ({kind})")


def _unpacked_run(buf, pos: int, end: int, key: int, kind: int) -> tuple[np.ndarray, int]:
    """Gather a run of consecutive unpacked records `key, value` (1-byte key, fixed-size value) that
    starts at the value `pos`, with strided numpy views over windows that double in size."""
    size = 4 if kind == F32 else 8
    rec = size + 1
    start = pos - 1  # the key byte of the first record
    n = 1
    window = 64
    while True:
        avail = (end - start) // rec - n
        if avail <= 0:
            break
        take = min(window, avail)
        keys = np.frombuffer(buf, np.uint8, count=take * rec, offset=start + n * rec)[::rec]
        bad = np.flatnonzero(keys != key)
        if bad.size:
            n += int(bad[0])
            break
        n += take
        window *= 2
    raw = np.frombuffer(buf, np.uint8, count=n * rec, offset=start).reshape(n, rec)[:, 1:]
    return np.ascontiguousarray(raw).view(_ARRAY_DTYPES[kind]).reshape(-1), start + n * rec


def _packed_scalars(buf, pos: int, stop: int, kind: int, conv, tname: str, ctx: tuple | None) -> list:
    """Elements of a packed (length-delimited) chunk of a repeated scalar field kept as a list."""
    if kind == VARINT:
        out = []
        while pos < stop:
            v, pos = _read_varint(buf, pos, stop, tname, ctx)
            out.append(conv(v))
        return out
    st = _F32 if kind == F32 else _F64
    if (stop - pos) % st.size:
        raise _Bad(
            f"corrupt packed field at byte {pos} in {_where(tname, ctx)}: "
            f"{stop - pos} bytes is not a multiple of {st.size}"
        )
    return [t[0] for t in st.iter_unpack(buf[pos:stop])]


def _decode_into(msg: Message, buf, pos: int, end: int, ctx: tuple | None) -> None:
    """Merge the records in buf[pos:end] into `msg` (protobuf merge semantics)."""
    tname = msg.type_name
    table = _DECODE[tname]
    values = msg._values
    arrays: dict[str, list[np.ndarray]] = {}  # BlobProto float arrays, joined at the end
    while pos < end:
        key_pos = pos
        key = buf[pos]
        pos += 1
        if key >= 0x80:
            key, pos = _read_varint(buf, key_pos, end, tname, ctx)
        spec = table.get(key >> 3)
        if spec is None:
            if key >> 3 == 0:
                raise _Bad(f"corrupt record at byte {key_pos}: field number 0 in {_where(tname, ctx)}")
            pos = _skip(buf, pos, end, key, key_pos, tname, ctx)
            continue
        name, kind, conv, repeated, as_array, _ = spec
        wt = key & 7
        if wt == 2:
            pos = _decode_delimited(msg, arrays, spec, buf, pos, end, key_pos, ctx)
        elif wt != _EXPECTED_WT[kind]:
            raise _mismatch(name, wt, kind, key_pos, tname, ctx)
        elif kind == VARINT:
            raw_v, pos = _read_varint(buf, pos, end, tname, ctx)
            if repeated:
                values.setdefault(name, []).append(conv(raw_v))
            else:
                values[name] = conv(raw_v)
        elif as_array and key < 0x80:
            _need(buf, pos, 4 if kind == F32 else 8, end, f"field '{name}'", tname, ctx)
            chunk, pos = _unpacked_run(buf, pos, end, key, kind)
            arrays.setdefault(name, []).append(chunk)
        else:
            st = _F32 if kind == F32 else _F64
            stop = _need(buf, pos, st.size, end, f"field '{name}'", tname, ctx)
            v = st.unpack_from(buf, pos)[0]
            pos = stop
            if as_array:
                arrays.setdefault(name, []).append(np.array([v], _NATIVE[kind]))
            elif repeated:
                values.setdefault(name, []).append(v)
            else:
                values[name] = v
    for name, chunks in arrays.items():
        _finish_array(values, name, chunks)


def _decode_delimited(
    msg: Message, arrays: dict, spec: tuple, buf, pos: int, end: int, key_pos: int, ctx: tuple | None
) -> int:
    """Decode one wire-type-2 record of a known field (the length varint starts at `pos`): a
    sub-message, a string, or a packed chunk of a repeated scalar. Returns the position after it."""
    name, kind, conv, repeated, as_array, ftype = spec
    tname, values = msg.type_name, msg._values
    n, pos = _read_varint(buf, pos, end, tname, ctx)
    if kind == MSG and pos + n > end == len(buf):  # a cut file: report the innermost field cut off
        _decode_into(Message(ftype), buf, pos, end, (ctx, name, len(values.get(name, ())) if repeated else None))
    stop = _need(buf, pos, n, end, f"field '{name}'", tname, ctx)
    if kind == MSG:
        if repeated:
            lst = values.setdefault(name, [])
            child = Message(ftype)
            lst.append(child)
            _decode_into(child, buf, pos, stop, (ctx, name, len(lst) - 1))
        else:
            child = values.get(name)
            if child is None:
                child = values[name] = Message(ftype)
            _decode_into(child, buf, pos, stop, (ctx, name, None))
    elif kind == STR or kind == BYTES:
        raw = bytes(buf[pos:stop])
        v = raw.decode("utf-8", "surrogateescape") if kind == STR else raw
        if repeated:
            values.setdefault(name, []).append(v)
        else:
            values[name] = v
    elif not repeated:
        raise _mismatch(name, 2, kind, key_pos, tname, ctx)
    elif as_array:
        dt = _ARRAY_DTYPES[kind]
        if n % dt.itemsize:
            raise _Bad(
                f"corrupt packed field '{name}' at byte {pos} in {_where(tname, ctx)}: "
                f"{n} bytes is not a multiple of {dt.itemsize}"
            )
        arrays.setdefault(name, []).append(np.frombuffer(buf, dt, count=n // dt.itemsize, offset=pos))
    else:
        values.setdefault(name, []).extend(_packed_scalars(buf, pos, stop, kind, conv, tname, ctx))
    return stop


def _finish_array(values: dict, name: str, chunks: list[np.ndarray]) -> None:
    """Join the chunks of a BlobProto array field (after any value merged earlier) into one native,
    writable array that no longer refers to the file buffer."""
    dtype = np.float32 if chunks[0].itemsize == 4 else np.float64
    prev = values.get(name)
    if prev is not None and len(prev):
        chunks = [np.asarray(prev, dtype).reshape(-1)] + chunks
    values[name] = chunks[0].astype(dtype) if len(chunks) == 1 else np.concatenate(chunks).astype(dtype, copy=False)


def _mismatch(name: str, wt: int, kind: int, key_pos: int, tname: str, ctx: tuple | None) -> _Bad:
    exp = _EXPECTED_WT[kind]
    return _Bad(
        f"corrupt record at byte {key_pos}: field '{name}' of {_where(tname, ctx)} arrived as wire type "
        f"{wt} ({WIRE_NAMES.get(wt, 'invalid')}), expected {exp} ({WIRE_NAMES[exp]})"
    )


def decode_message(buf: bytes | bytearray | memoryview, type_name: str, source: str) -> Message:
    """Decode `buf` as one message of `type_name`; CaffemodelError('<source>: ...') on bad input."""
    if not isinstance(buf, bytes):
        buf = memoryview(buf).cast("B")
    msg = Message(type_name)
    try:
        _decode_into(msg, buf, 0, len(buf), None)
    except _Bad as exc:
        raise CaffemodelError(f"{source}: {exc.text}") from None
    return msg


# -- encoding -------------------------------------------------------------------------------------
def varint_bytes(v: int) -> bytes:
    """The varint encoding of a non-negative int < 2**64 (negative ints: pass v & MASK64)."""
    if v < 0x80:
        return bytes((v,))
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


_INT_RANGES = {
    "int32": (-(1 << 31), (1 << 31) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1),
    "uint32": (0, (1 << 32) - 1),
    "uint64": (0, MASK64),
}


def _varint_value(v: Any, ftype: str) -> int:
    """The raw (unsigned 64-bit) varint for a Python value of scalar/enum type `ftype`."""
    if ftype == "bool":
        return 1 if v else 0
    if ftype in ENUMS:
        if isinstance(v, str):
            if v not in ENUMS[ftype]:
                raise ValueError(f"unknown {ftype} value {v!r} (known: {', '.join(ENUMS[ftype])})")
            v = ENUMS[ftype][v]
        lo, hi = _INT_RANGES["int32"]
    else:
        lo, hi = _INT_RANGES[ftype]
    if isinstance(v, (bool, float, str, bytes)) or not hasattr(v, "__index__"):
        raise TypeError(f"expected an integer, got {type(v).__name__}")
    v = int(v)
    if not lo <= v <= hi:
        raise ValueError(f"{v} is out of range for {ftype}")
    return v & MASK64


def _float_bytes(v: Any, st: struct.Struct) -> bytes:
    try:
        return st.pack(v)
    except OverflowError:  # a double beyond float32 range: store inf like a C++ float conversion would
        with np.errstate(over="ignore"):
            return np.float32(v).tobytes()


def _encode_field(out: list, num: int, kind: int, repeated: bool, packed: bool, ftype: str, v: Any) -> int:
    """Append field `num` with value `v` to `out`; return the number of bytes appended."""
    size = 0
    if kind == MSG:
        for child in v if repeated else (v,):
            if not isinstance(child, Message) or child.type_name != ftype:
                raise TypeError(f"expected a {ftype} message, got {type(child).__name__}")
            idx = len(out)
            out.append(b"")
            n = _encode_msg(child, out)
            out[idx] = varint_bytes(num << 3 | 2) + varint_bytes(n)
            size += len(out[idx]) + n
        return size
    items = v if repeated else (v,)
    if repeated and packed:
        if kind == VARINT:
            payload = b"".join(varint_bytes(_varint_value(x, ftype)) for x in items)
        else:
            arr = np.ascontiguousarray(v, dtype="<f4" if kind == F32 else "<f8").reshape(-1)
            payload = memoryview(arr).cast("B")
        head = varint_bytes(num << 3 | 2) + varint_bytes(len(payload))
        out += (head, payload)
        return len(head) + len(payload)
    key = varint_bytes(num << 3 | _EXPECTED_WT[kind])
    for x in items:
        if kind == VARINT:
            body = varint_bytes(_varint_value(x, ftype))
        elif kind == F32 or kind == F64:
            body = _float_bytes(x, _F32 if kind == F32 else _F64)
        elif isinstance(x, str):
            raw = x.encode("utf-8", "surrogateescape")
            body = varint_bytes(len(raw)) + raw
        elif isinstance(x, (bytes, bytearray, memoryview)):
            body = varint_bytes(len(x)) + bytes(x)
        else:
            raise TypeError(f"expected a string, got {type(x).__name__}")
        out += (key, body)
        size += len(key) + len(body)
    return size


def _encode_msg(msg: Message, out: list) -> int:
    """Append the records of `msg` (set fields in field-number order) to `out`; return their size."""
    table = _ENCODE[msg.type_name]
    values = msg._values
    size = 0
    for name in sorted(values, key=lambda k: table[k][0]):
        v = values[name]
        num, kind, repeated, packed, ftype = table[name]
        if repeated and len(v) == 0:
            continue
        try:
            size += _encode_field(out, num, kind, repeated, packed, ftype, v)
        except (TypeError, ValueError, OverflowError) as exc:
            if isinstance(exc, CaffemodelError):
                raise
            raise CaffemodelError(f"cannot encode field '{name}' of {msg.type_name}: {exc}") from None
    return size


def encode_chunks(msg: Message) -> tuple[list, int]:
    """The encoding of `msg` as a list of bytes-like chunks (join or write them in order) and its size."""
    out: list = []
    size = _encode_msg(msg, out)
    return out, size
