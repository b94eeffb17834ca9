"""A small multipart/form-data parser for bodies already read into memory (RFC 7578).

    parts = parse_multipart(body, request.headers["content-type"])   # {field name: Part}
    parts["image"].data                                               # the file's bytes

The server reads the body itself, counting bytes against the upload limit, and hands the bytes here, so
no temporary files are written and the client's file name is kept only as an opaque string (never used as
a path). The first part of a given name wins. Raises MultipartError (a ValueError) on a malformed body.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MultipartError", "Part", "parse_multipart", "parse_options_header"]


class MultipartError(ValueError):
    """The body is not well-formed multipart/form-data."""


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def parse_options_header(value: str) -> tuple[str, dict[str, str]]:
    """'form-data; name="image"; filename="a b.png"' -> ("form-data", {"name": "image", "filename": "a b.png"}).
    Quoted values may contain ';' and backslash escapes; keys are lower-cased."""
    main, _, rest = value.partition(";")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t;":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip().lower()
        i = eq + 1
        if i < n and rest[i] == '"':
            i += 1
            chars = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(rest[i])
                i += 1
            i += 1
            val = "".join(chars)
        else:
            end = rest.find(";", i)
            end = n if end < 0 else end
            val = rest[i:end].strip()
            i = end
        if key:
            params[key] = val
    return main.strip().lower(), params


def parse_multipart(body: bytes, content_type: str) -> dict[str, Part]:
    """Split a multipart/form-data body into its named parts (see the module docstring)."""
    kind, params = parse_options_header(content_type)
    if kind != "multipart/form-data":
        raise MultipartError(f"expected multipart/form-data, got {kind or 'no content type'}")
    boundary = params.get("boundary", "")
    if not boundary or len(boundary) > 200:
        raise MultipartError("multipart/form-data without a valid boundary parameter")
    delim = b"--" + boundary.encode("latin-1")
    start = body.find(delim)
    if start < 0:
        raise MultipartError("multipart body does not contain its boundary")
    parts: dict[str, Part] = {}
    pos = start + len(delim)
    while True:
        if body[pos : pos + 2] == b"--":
            return parts  # closing delimiter
        if body[pos : pos + 2] != b"\r\n":
            raise MultipartError("malformed multipart body (no line break after a boundary)")
        pos += 2
        head_end = body.find(b"\r\n\r\n", pos)
        if head_end < 0:
            raise MultipartError("malformed multipart body (part headers never end)")
        headers: dict[str, str] = {}
        for line in body[pos:head_end].split(b"\r\n"):
            key, sep, val = line.decode("utf-8", "replace").partition(":")
            if sep:
                headers[key.strip().lower()] = val.strip()
        nxt = body.find(b"\r\n" + delim, head_end + 4)
        if nxt < 0:
            raise MultipartError("malformed multipart body (a part is not closed by the boundary)")
        data = body[head_end + 4 : nxt]
        disp, dparams = parse_options_header(headers.get("content-disposition", ""))
        name = dparams.get("name")
        if disp != "form-data" or name is None:
            raise MultipartError("a multipart part has no 'Content-Disposition: form-data; name=...' header")
        if name not in parts:
            parts[name] = Part(name, dparams.get("filename"), headers.get("content-type"), data)
        pos = nxt + 2 + len(delim)
