"""The multipart parser against httpx's multipart encoder (an independent implementation) and on
malformed bodies."""

from __future__ import annotations

import httpx
import pytest

from server.multipart import MultipartError, parse_multipart, parse_options_header


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
