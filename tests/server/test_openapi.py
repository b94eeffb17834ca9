"""The OpenAPI description (server/openapi.py) against real answers of the app: every documented route is called
in process (Starlette's TestClient; the random-weight LeNet, a gallery, a personal gallery, a fake Bing, a fake URL
fetcher), for its success and for each documented error status, and the answer is checked against the document:
its status is one the route documents, its Content-Type one the response names, and its JSON body validates
against the schema. The validator (below; `jsonschema` is not a dependency) is strict where the document is
silent: an object may hold only the properties its schema names, so a field the app adds without documenting it
fails here."""

from __future__ import annotations

import asyncio
import errno
import json
from collections.abc import Iterator

import numpy as np
import pytest
from starlette.testclient import TestClient

import server.personal
from scraper.fetch import FetchError
from server.app import AppConfig, create_app
from server.gallery import build_array_index
from server.openapi import openapi_spec
from server.personal import open_personal
from server.web import WebSearch
from tests.server.conftest import FakeBing, digit, png_bytes

TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}
KEYWORDS = {"type", "properties", "required", "items", "enum", "allOf", "oneOf", "anyOf", "minimum", "maximum",
            "maxLength", "format", "description", "$ref", "additionalProperties", "default"}  # fmt: skip


def resolve(spec: dict, node: dict) -> dict:
    while "$ref" in node:
        path = node["$ref"].removeprefix("#/").split("/")
        node = spec
        for key in path:
            node = node[key]
    return node


def properties_of(spec: dict, schema: dict) -> set[str] | None:
    """Every property name a value may hold under `schema` (allOf parts pooled); None: any (no properties named)."""
    schema = resolve(spec, schema)
    names = set(schema.get("properties", {}))
    parts = schema.get("allOf", [])
    for part in parts:
        more = properties_of(spec, part)
        if more is None:
            return None
        names |= more
    return names if names or parts or "additionalProperties" in schema else None


def errors(spec: dict, schema: dict, value, where: str = "$", strict: bool = True) -> list[str]:
    """The ways `value` breaks `schema` (empty: valid). strict: refuse properties that `schema` does not name (off
    for the parts of an allOf, which pool their names)."""
    schema = resolve(spec, schema)
    assert set(schema) <= KEYWORDS, f"{where}: the validator does not know {set(schema) - KEYWORDS}"
    out: list[str] = []
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(TYPES[t](value) for t in types):
            return [f"{where}: expected {'/'.join(types)}, got {type(value).__name__} {str(value)[:60]!r}"]
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(f"{where}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            out.append(f"{where}: {value} > maximum {schema['maximum']}")
    if isinstance(value, str) and "maxLength" in schema and len(value) > schema["maxLength"]:
        out.append(f"{where}: longer than {schema['maxLength']}")
    for part in schema.get("allOf", []):
        out += errors(spec, part, value, where, strict=False)
    for key, check in (("oneOf", lambda n: n == 1), ("anyOf", lambda n: n >= 1)):
        if key in schema:
            n = sum(not errors(spec, part, value, where) for part in schema[key])
            if not check(n):
                out.append(f"{where}: {n} of the {key} schemas match")
    if isinstance(value, dict):
        out += [f"{where}: missing required {k!r}" for k in schema.get("required", []) if k not in value]
        for k, sub in schema.get("properties", {}).items():
            if k in value:
                out += errors(spec, sub, value[k], f"{where}.{k}")
        named = properties_of(spec, schema)
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            if not strict or named is None or k in named or "oneOf" in schema or "anyOf" in schema:
                continue
            if isinstance(extra, dict):
                out += errors(spec, extra, v, f"{where}.{k}")
            elif extra is not True:
                out.append(f"{where}: undocumented property {k!r}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            out += errors(spec, schema["items"], v, f"{where}[{i}]")
    return out


# -- the validator on its own ------------------------------------------------------------------------------------
def test_validator_finds_each_kind_of_mismatch():
    spec = {"components": {"schemas": {"P": {"type": "object", "required": ["a"], "properties": {
        "a": {"type": "integer", "minimum": 0}, "b": {"type": ["string", "null"], "enum": ["x", None]},
        "c": {"type": "array", "items": {"$ref": "#/components/schemas/Q"}}}},
        "Q": {"type": "object", "properties": {"n": {"type": "number"}}}}}}  # fmt: skip
    p = {"$ref": "#/components/schemas/P"}
    assert errors(spec, p, {"a": 1, "b": None, "c": [{"n": 1.5}]}) == []
    assert errors(spec, p, {"b": "x"}) == ["$: missing required 'a'"]
    assert errors(spec, p, {"a": True}) == ["$.a: expected integer, got bool 'True'"]
    assert errors(spec, p, {"a": -1, "b": "y"}) == ["$.a: -1 < minimum 0", "$.b: 'y' is not one of ['x', None]"]
    assert errors(spec, p, {"a": 0, "c": [{"n": "1"}]}) == ["$.c[0].n: expected number, got str '1'"]
    assert errors(spec, p, {"a": 0, "z": 1}) == ["$: undocumented property 'z'"]
    both = {"allOf": [p, {"type": "object", "properties": {"z": {"type": "integer"}}}]}
    assert errors(spec, both, {"a": 0, "z": 1}) == []
    maybe = {"oneOf": [p, {"type": "null"}]}
    assert errors(spec, maybe, None) == [] and errors(spec, maybe, 3) == ["$: 0 of the oneOf schemas match"]
    free = {"type": "object", "additionalProperties": {"type": "integer"}}
    assert errors(spec, free, {"k": 1}) == [] and errors(spec, free, {"k": "v"}) == [
        "$.k: expected integer, got str 'v'"
    ]


# -- the app ---------------------------------------------------------------------------------------------------------
UPLOAD_LIMIT = 200_000


def fetcher(url: str, *, max_bytes: int, timeout: float, allow_private: bool) -> bytes:
    """URLs: https://ok.example/... a digit PNG; .../slow times out (504); anything else fails (502)."""
    if url.startswith("https://ok.example/"):
        return png_bytes(digit(7))
    raise FetchError("timed out after 1 s" if url.endswith("/slow") else "connection refused")


@pytest.fixture(scope="module")
def app_parts(model, tmp_path_factory):
    images = np.stack([digit(d) for d in range(10)])
    gallery = build_array_index(images, np.arange(10), model, tmp_path_factory.mktemp("g") / "idx", name="t",
                                progress=False)  # fmt: skip
    return gallery, tmp_path_factory.mktemp("cache")


@pytest.fixture
def client(model, app_parts) -> Iterator[TestClient]:
    gallery, cache = app_parts
    personal = open_personal(model, cache, max_photos=2, max_bytes=10_000_000)
    personal.clear()
    config = AppConfig(warmup=False, max_upload=UPLOAD_LIMIT)
    app = create_app(model, gallery=gallery, personal=personal, web=WebSearch(FakeBing()), config=config,
                     fetcher=fetcher)  # fmt: skip
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def spec() -> dict:
    return openapi_spec(UPLOAD_LIMIT)


SEEN: set[tuple[str, str, str]] = set()  # (path, method, status) checked, across the tests of this module


def check(spec: dict, path: str, method: str, r) -> dict | None:
    """Assert that answer `r` of `method path` is documented; returns its JSON body (None when not JSON)."""
    op = spec["paths"][path][method]
    status = str(r.status_code)
    assert status in op["responses"], f"{method.upper()} {path} answered {status}, not documented: {r.text[:200]}"
    SEEN.add((path, method, status))
    doc = resolve(spec, op["responses"][status])
    media = r.headers.get("content-type", "").partition(";")[0]
    content = doc.get("content", {})
    assert media in content, f"{method.upper()} {path} {status}: Content-Type {media!r}, documented {list(content)}"
    if media != "application/json":
        return None
    body = r.json()
    problems = errors(spec, content[media]["schema"], body)
    assert not problems, f"{method.upper()} {path} {status}:\n" + "\n".join(problems[:20])
    return body


def upload(c: TestClient, route: str, data: bytes, name: str = "q.png", **kw):
    return c.post(route, files={"image": (name, data, "image/png")}, **kw)


def test_search_and_inside(client, spec):
    body = check(spec, "/api/search", "post", upload(client, "/api/search", png_bytes(digit(3))))
    assert body["predictions"] and body["similar"] and body["inside"]["layers"]
    check(spec, "/api/search", "post", upload(client, "/api/search", png_bytes(digit(3)), params={"page": 1}))
    check(spec, "/api/search", "post", client.post("/api/search", json={"url": "https://ok.example/7.png"}))
    for request in (
        lambda: client.post("/api/search", json={"link": 1}),  # 400
        lambda: upload(client, "/api/search", b"\0" * (UPLOAD_LIMIT + 1)),  # 413
        lambda: client.post("/api/search", content=b"x", headers={"Content-Type": "text/plain"}),  # 415
        lambda: client.post("/api/search", json={"url": "https://down.example/a.png"}),  # 502
        lambda: client.post("/api/search", json={"url": "https://down.example/slow"}),  # 504
    ):
        assert check(spec, "/api/search", "post", request())["error"]

    inside = body["inside"]
    layer = inside["layers"][0]
    r = client.get(layer["maps_url"])
    check(spec, "/api/inside/{id}/maps", "get", r)
    assert r.content.startswith(b"\x89PNG")
    base = f"/api/inside/{inside['id']}/maps"
    check(spec, "/api/inside/{id}/maps", "get", client.get(base))  # 400: no layer
    check(spec, "/api/inside/{id}/maps", "get", client.get(base, params={"layer": "nope"}))  # 404
    check(spec, "/api/inside/{id}/maps", "get", client.get("/api/inside/0123/maps", params={"layer": "conv1"}))
    filters = [x for x in inside["layers"] if x["filters"]]
    assert filters and check(spec, "/api/filters", "get", client.get(filters[0]["filters_url"])) is None
    check(spec, "/api/filters", "get", client.get("/api/filters"))  # 400
    check(spec, "/api/filters", "get", client.get("/api/filters", params={"layer": "nope"}))  # 404
    not_filters = [x for x in inside["layers"] if not x["filters"]]
    check(spec, "/api/filters", "get", client.get("/api/filters", params={"layer": not_filters[0]["name"]}))  # 400


def test_maps_busy(model, spec):
    """503 from the maps route: no room for maps forwards on the inference thread (inside_queue=0)."""
    with TestClient(create_app(model, config=AppConfig(warmup=False, inside_queue=0))) as c:
        inside = upload(c, "/api/search", png_bytes(digit(3))).json()["inside"]
        r = c.get(inside["layers"][0]["maps_url"])
        assert r.status_code == 503 and check(spec, "/api/inside/{id}/maps", "get", r)["error"]


def test_search_timeout_and_busy(model, spec):
    """408 (a body that stops arriving) and 503 (the body budget spent), each on an app made for it."""
    app = create_app(model, config=AppConfig(warmup=False, body_timeout=0.2))
    messages = [{"type": "http.request", "body": b"--b\r\n", "more_body": True}]
    sent: list[dict] = []

    async def receive():
        if messages:
            return messages.pop()
        await asyncio.sleep(5)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/api/search", "raw_path": b"/api/search", "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"multipart/form-data; boundary=b")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    app.state.crema.batcher.close()

    class Answer:  # what check() reads of an answer
        def __init__(self) -> None:
            self.status_code = sent[0]["status"]
            self.headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
            self.text = sent[1]["body"].decode()

        def json(self):
            return json.loads(self.text)

    r = Answer()
    assert r.status_code == 408 and check(spec, "/api/search", "post", r)["error"]
    with TestClient(create_app(model, config=AppConfig(warmup=False, body_budget=100))) as c:
        r = upload(c, "/api/search", png_bytes(digit(1)))
        assert r.status_code == 503 and check(spec, "/api/search", "post", r)["error"]


def test_web_health_models_openapi_gallery(client, spec):
    assert check(spec, "/api/web", "get", client.get("/api/web", params={"q": "cat", "page": 1}))["web"]
    check(spec, "/api/web", "get", client.get("/api/web"))  # 400
    check(spec, "/api/health", "get", client.get("/api/health"))
    check(spec, "/api/models", "get", client.get("/api/models"))
    assert check(spec, "/api/openapi.json", "get", client.get("/api/openapi.json")) == spec
    for kind in ("thumb", "image"):
        path = f"/api/gallery/{{id}}/{kind}"
        r = client.get(f"/api/gallery/3/{kind}")
        assert check(spec, path, "get", r) is None and r.content
        check(spec, path, "get", client.get(f"/api/gallery/99/{kind}"))  # 404
    check(spec, "/api/gallery/{id}/image", "get", client.get("/api/gallery/3/image", params={"download": 1}))


def test_personal(client, spec, monkeypatch):
    for d in (1, 2):
        r = upload(client, "/api/personal", png_bytes(digit(d)), name=f"{d}.png")
        assert check(spec, "/api/personal", "post", r)["item"]["id"] == d - 1
    check(spec, "/api/personal", "post", upload(client, "/api/personal", png_bytes(digit(3))))  # 409: 2 photos
    body = check(spec, "/api/personal", "get", client.get("/api/personal"))
    assert len(body["items"]) == 2
    for kind in ("thumb", "image"):
        path = f"/api/personal/{{id}}/{kind}"
        assert check(spec, path, "get", client.get(f"/api/personal/0/{kind}")) is None
        check(spec, path, "get", client.get(f"/api/personal/9/{kind}"))  # 404
    check(spec, "/api/personal/{id}", "delete", client.delete("/api/personal/1"))
    check(spec, "/api/personal/{id}", "delete", client.delete("/api/personal/1"))  # 404
    for request in (
        lambda: client.post("/api/personal", content=b"x", headers={"Content-Type": "multipart/form-data"}),  # 400
        lambda: upload(client, "/api/personal", b"not an image"),  # 415
        lambda: upload(client, "/api/personal", b"\0" * (UPLOAD_LIMIT + 1)),  # 413
        lambda: client.post("/api/personal", json={"url": "https://ok.example/1.png"}),  # 415
    ):
        assert check(spec, "/api/personal", "post", request())["error"]

    def full_disk(*args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(server.personal.PersonalGallery, "add", full_disk)
    r = upload(client, "/api/personal", png_bytes(digit(4)))
    assert r.status_code == 507 and check(spec, "/api/personal", "post", r)["error"]
    monkeypatch.undo()
    assert check(spec, "/api/personal", "delete", client.delete("/api/personal"))["removed"] == 1


def test_personal_gallery_off(model, spec):
    with TestClient(create_app(model, config=AppConfig(warmup=False))) as c:
        for method, route, path in (
            ("get", "/api/personal", "/api/personal"),
            ("post", "/api/personal", "/api/personal"),
            ("delete", "/api/personal", "/api/personal"),
            ("delete", "/api/personal/0", "/api/personal/{id}"),
            ("get", "/api/personal/0/thumb", "/api/personal/{id}/thumb"),
            ("get", "/api/personal/0/image", "/api/personal/{id}/image"),
        ):
            r = c.request(method.upper(), route)
            assert r.status_code == 403 and check(spec, path, method, r)["error"]


def test_every_documented_answer_was_checked(spec):
    """Runs last in this module: each (route, method, status) the document lists was met by one of the tests
    above (the 500 of a bug is not listed)."""
    if not SEEN:
        pytest.skip("run with the other tests of this module")
    documented = {(p, m, s) for p, ops in spec["paths"].items() for m, op in ops.items() for s in op["responses"]}
    assert documented - SEEN == set()
