"""server.bodies.read_form (Starlette's multipart parser under crema's limits) against httpx's multipart encoder
(an independent implementation), on malformed bodies, and its limits: parts (counted as they arrive), text field
size, header lines and bytes, a body cut before its closing boundary. Through a one-route Starlette app."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from server.bodies import MAX_FIELD_BYTES, MAX_PARTS, BodyRefused, read_form, releases_body
from server.pools import ByteBudget

LIMIT = 1_000_000


def form_app(budget: ByteBudget, **limits) -> Starlette:
    """POST / answers the form's parts in order: [name, filename or None, content type, text or bytes as latin-1]."""

    @releases_body
    async def route(request: Request) -> JSONResponse:
        try:
            form = await read_form(request, limit=LIMIT, what="the upload", timeout=10.0, budget=budget, **limits)
        except BodyRefused as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)
        parts = []
        for name, value in form.multi_items():
            if isinstance(value, str):
                parts.append([name, None, None, value])
            else:
                parts.append([name, value.filename, value.content_type, (await value.read()).decode("latin-1")])
        await form.close()
        return JSONResponse(parts)

    return Starlette(routes=[Route("/", route, methods=["POST"])])


@pytest.fixture
def budget() -> ByteBudget:
    return ByteBudget(10 * LIMIT)


@pytest.fixture
def client(budget):
    with TestClient(form_app(budget)) as c:
        yield c
    assert budget.held == 0  # every request gave its bytes back


def post(client, body: bytes, ctype: str):
    return client.post("/", content=body, headers={"Content-Type": ctype})


def encode(files: dict, data: dict | None = None) -> tuple[bytes, str]:
    req = httpx.Request("POST", "http://x/", files=files, data=data or {})
    return req.read(), req.headers["content-type"]


def test_roundtrip_with_httpx_encoder(client):
    payload = bytes(range(256)) * 50 + b"\r\n--boundary-lookalike\r\n" + b"\r\n\r\n"
    body, ctype = encode({"image": ('a;b "c".png', payload, "image/png")}, {"note": "hello"})
    parts = post(client, body, ctype).json()
    assert parts == [
        ["note", None, None, "hello"],
        ["image", "a;b %22c%22.png", "image/png", payload.decode("latin-1")],  # quotes escaped as browsers do
    ]


def test_first_part_of_a_name_comes_first_and_empty_files(client):
    body, ctype = encode({"image": ("1.png", b"one", "image/png")}, {"image": "two"})
    assert [p[3] for p in post(client, body, ctype).json()] == ["two", "one"]  # in the order httpx writes them
    body, ctype = encode({"image": ("e.png", b"", "image/png")})
    assert post(client, body, ctype).json() == [["image", "e.png", "image/png", ""]]


@pytest.mark.parametrize(
    "body, ctype, words",
    [
        (b"x", "multipart/form-data", "Missing boundary"),
        (b"nothing here", "multipart/form-data; boundary=zz", "Expected boundary character"),
        (b"--zz\r\nContent-Disposition: form-data; name=a\r\n", "multipart/form-data; boundary=zz", "closing boundary"),
        (
            b"--zz\r\nContent-Disposition: form-data; name=a\r\n\r\ndata",
            "multipart/form-data; boundary=zz",
            "ends before its closing boundary",
        ),
        (b"--zz\r\nX-A: b\r\n\r\nd\r\n--zz--", "multipart/form-data; boundary=zz", "Content-Disposition"),
        (b"--zzjunk", "multipart/form-data; boundary=zz", "CR at end of boundary"),
        (b"--b\r\nno headers end", "multipart/form-data; boundary=b", "invalid character"),
    ],
)
def test_malformed(client, body, ctype, words):
    r = post(client, body, ctype)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error.startswith("the upload is not valid multipart/form-data: ") and words in error, error


# -- limits ------------------------------------------------------------------------------------------------------
def parts_body(n: int, boundary: str = "zz", filename: bool = False) -> tuple[bytes, str]:
    fn = '; filename="f"' if filename else ""
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"{fn}\r\n\r\nv{i}\r\n'.encode()
                    for i in range(n))  # fmt: skip
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("filename", [False, True])
def test_part_limit(client, filename):
    body, ctype = parts_body(MAX_PARTS, filename=filename)
    assert len(post(client, body, ctype).json()) == MAX_PARTS
    body, ctype = parts_body(MAX_PARTS + 1, filename=filename)
    r = post(client, body, ctype)
    assert r.status_code == 400 and f"too many parts: more than {MAX_PARTS}" in r.json()["error"]
    assert r.headers["connection"] == "close"


def test_files_and_fields_count_together(client):
    files = {f"f{i}": ("f", b"x", "image/png") for i in range(MAX_PARTS // 2 + 1)}
    body, ctype = encode(files, {f"t{i}": "y" for i in range(MAX_PARTS // 2)})
    r = post(client, body, ctype)  # 17 parts: 9 files and 8 fields
    assert r.status_code == 400 and "too many parts" in r.json()["error"]


def test_many_empty_parts_are_refused_at_the_first_chunk(budget):
    """The issue's body: 180,000 empty parts (~9.5 MB) sent in 64 KiB chunks: refused after the first chunk, the
    rest never read (counted at the ASGI receive, so no timing is involved)."""
    part = b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\n\r\n'
    body = part * 180_000 + b"--b--\r\n"
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    received = []
    sent = []

    async def receive():
        received.append(len(chunks[len(received)]))
        return {"type": "http.request", "body": chunks[len(received) - 1], "more_body": len(received) < len(chunks)}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/", "raw_path": b"/", "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"multipart/form-data; boundary=b")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }  # fmt: skip
    asyncio.run(form_app(budget)(scope, receive, send))
    assert sent[0]["status"] == 400 and b"too many parts" in sent[1]["body"]
    assert len(received) == 1 and len(chunks) == 141
    assert budget.held == 0


def field_body(name: str, value: str) -> tuple[bytes, str]:
    head = f'--zz\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
    return f"{head}{value}\r\n--zz--\r\n".encode(), "multipart/form-data; boundary=zz"


def test_text_field_limit(client):
    body, ctype = field_body("note", "n" * MAX_FIELD_BYTES)
    assert post(client, body, ctype).json() == [["note", None, None, "n" * MAX_FIELD_BYTES]]
    body, ctype = field_body("note", "n" * (MAX_FIELD_BYTES + 1))
    r = post(client, body, ctype)
    assert r.status_code == 400 and "Part exceeded maximum size of 64KB" in r.json()["error"]
    body, ctype = encode({"image": ("big.png", b"n" * (MAX_FIELD_BYTES + 1), "image/png")})  # files may be larger
    assert len(post(client, body, ctype).json()[0][3]) == MAX_FIELD_BYTES + 1


def test_header_limits(client):
    long_head = b'--zz\r\nContent-Disposition: form-data; name="a"\r\nX-Pad: ' + b"p" * 9000 + b"\r\n\r\nd\r\n--zz--"
    r = post(client, long_head, "multipart/form-data; boundary=zz")
    assert r.status_code == 400 and "Maximum header size exceeded" in r.json()["error"]
    many = b"--zz\r\n" + b"X-A: b\r\n" * 8 + b'Content-Disposition: form-data; name="a"\r\n\r\nd\r\n--zz--'
    r = post(client, many, "multipart/form-data; boundary=zz")
    assert r.status_code == 400 and "Maximum header count exceeded" in r.json()["error"]
    few = b"--zz\r\n" + b"X-A: b\r\n" * 7 + b'Content-Disposition: form-data; name="a"\r\n\r\nd\r\n--zz--'
    assert post(client, few, "multipart/form-data; boundary=zz").json() == [["a", None, None, "d"]]


def test_size_limit(budget):
    """413 from the Content-Length before reading, and while reading a chunked body (the budget and the time
    limit: tests/server/test_app.py)."""
    with TestClient(form_app(budget)) as c:
        body, ctype = encode({"image": ("big.png", b"\0" * LIMIT, "image/png")})
        r = post(c, body, ctype)
        assert r.status_code == 413 and "too large" in r.json()["error"] and r.headers["connection"] == "close"

        def chunked():
            yield body[:1000]
            yield body[1000:]

        r = c.post("/", content=chunked(), headers={"Content-Type": ctype})
        assert r.status_code == 413 and "more than the limit of 1,000,000 bytes" in r.json()["error"]
    assert budget.held == 0
