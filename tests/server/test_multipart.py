"""The multipart parser against httpx's multipart encoder (an independent implementation), on malformed bodies,
and its limits (parts, header bytes and lines; the streaming part counter over any chunking)."""

from __future__ import annotations

import time

import httpx
import pytest

from server.multipart import (
    MAX_HEADER_FIELDS,
    MAX_PARTS,
    MultipartError,
    PartCounter,
    parse_multipart,
    parse_options_header,
)


def encode(files: dict, data: dict | None = None) -> tuple[bytes, str]:
    req = httpx.Request("POST", "http://x/", files=files, data=data or {})
    return req.read(), req.headers["content-type"]


def test_roundtrip_with_httpx_encoder():
    payload = bytes(range(256)) * 50 + b"\r\n--boundary-lookalike\r\n" + b"\r\n\r\n"
    body, ctype = encode({"image": ('a;b "c".png', payload, "image/png")}, {"note": "hello"})
    parts = parse_multipart(body, ctype)
    assert parts["image"].data == payload
    assert parts["image"].filename == "a;b %22c%22.png"  # quotes escaped on the wire as browsers do (HTML spec)
    assert parts["image"].content_type == "image/png"
    assert parts["note"].data == b"hello" and parts["note"].filename is None


def test_first_part_of_a_name_wins():
    body, ctype = encode({"image": ("1.png", b"one", "image/png")}, {"image": "two"})
    assert parse_multipart(body, ctype)["image"].data in (b"one", b"two")  # order as httpx writes it
    assert len(parse_multipart(body, ctype)) == 1


def test_empty_file():
    body, ctype = encode({"image": ("e.png", b"", "image/png")})
    assert parse_multipart(body, ctype)["image"].data == b""


@pytest.mark.parametrize(
    "body, ctype, words",
    [
        (b"x", "text/plain", "expected multipart/form-data"),
        (b"x", "multipart/form-data", "boundary"),
        (b"nothing here", "multipart/form-data; boundary=zz", "does not contain"),
        (b"--zz\r\nContent-Disposition: form-data; name=a\r\n", "multipart/form-data; boundary=zz", "never end"),
        (
            b"--zz\r\nContent-Disposition: form-data; name=a\r\n\r\ndata",
            "multipart/form-data; boundary=zz",
            "not closed",
        ),
        (b"--zz\r\nX-A: b\r\n\r\nd\r\n--zz--", "multipart/form-data; boundary=zz", "Content-Disposition"),
        (b"--zzjunk", "multipart/form-data; boundary=zz", "line break"),
    ],
)
def test_malformed(body, ctype, words):
    with pytest.raises(MultipartError, match=words):
        parse_multipart(body, ctype)


def test_options_header():
    assert parse_options_header('multipart/form-data; boundary="a;b"') == ("multipart/form-data", {"boundary": "a;b"})
    assert parse_options_header('Form-Data; NAME=x ;filename="q\\"r"') == (
        "form-data",
        {"name": "x", "filename": 'q"r'},
    )
    assert parse_options_header("") == ("", {})


# -- limits ------------------------------------------------------------------------------------------------------
def parts_body(n: int, boundary: str = "zz") -> tuple[bytes, str]:
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nv{i}\r\n'.encode()
                    for i in range(n))  # fmt: skip
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_part_limit():
    body, ctype = parts_body(MAX_PARTS)
    assert len(parse_multipart(body, ctype)) == MAX_PARTS
    body, ctype = parts_body(MAX_PARTS + 1)
    with pytest.raises(MultipartError, match=f"too many parts: 17 or more \\(at most {MAX_PARTS}\\)"):
        parse_multipart(body, ctype)
    assert len(parse_multipart(body, ctype, max_parts=MAX_PARTS + 1)) == MAX_PARTS + 1


def test_many_empty_parts_are_refused_in_milliseconds():
    """The issue's body: 180,000 empty parts, ~9.5 MB, took 2.2 s of Python; one bytes.count refuses it now."""
    part = b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\n\r\n'
    body = part * 180_000 + b"--b--\r\n"
    t0 = time.perf_counter()
    with pytest.raises(MultipartError, match="too many parts: 180,000"):
        parse_multipart(body, "multipart/form-data; boundary=b")
    assert time.perf_counter() - t0 < 0.5


def test_header_limits():
    long_head = b'--zz\r\nContent-Disposition: form-data; name="a"\r\nX-Pad: ' + b"p" * 9000 + b"\r\n\r\nd\r\n--zz--"
    with pytest.raises(MultipartError, match="headers are longer than 8,192 bytes"):
        parse_multipart(long_head, "multipart/form-data; boundary=zz")
    many = b"--zz\r\n" + b"X-A: b\r\n" * 20 + b'Content-Disposition: form-data; name="a"\r\n\r\nd\r\n--zz--'
    with pytest.raises(MultipartError, match=f"more than {MAX_HEADER_FIELDS} header lines"):
        parse_multipart(many, "multipart/form-data; boundary=zz")
    assert parse_multipart(many, "multipart/form-data; boundary=zz", max_header_fields=30)["a"].data == b"d"


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64, 4096])
def test_part_counter_over_chunks(chunk):
    """PartCounter fed in chunks counts as parse_multipart does on the whole body, delimiters split between chunks
    included, and refuses at the same part."""
    body, ctype = parts_body(MAX_PARTS)
    counter = PartCounter(ctype)
    for i in range(0, len(body), chunk):
        counter.feed(body[i : i + chunk])
    assert counter.parts == body.count(b"\r\n--zz") == MAX_PARTS
    body, ctype = parts_body(MAX_PARTS + 1)
    counter = PartCounter(ctype)
    with pytest.raises(MultipartError, match="too many parts"):
        for i in range(0, len(body), chunk):
            counter.feed(body[i : i + chunk])


def test_part_counter_needs_a_boundary():
    with pytest.raises(MultipartError, match="boundary"):
        PartCounter("multipart/form-data")
    with pytest.raises(MultipartError, match="expected multipart/form-data"):
        PartCounter("text/plain")
