"""A small multipart/form-data parser for bodies already read into memory (RFC 7578).

    parts = parse_multipart(body, request.headers["content-type"])   # {field name: Part}
    parts["image"].data                                               # the file's bytes

The server reads the body itself, counting bytes against the upload limit (the total size), and hands the bytes
here, so no temporary files are written and the client's file name is kept only as an opaque string (never used
as a path). The first part of a given name wins. Raises MultipartError (a ValueError) on a malformed body or one
past the limits:

    max_parts           parts in the body (default 16; the API reads one field). Counted before any part is
                        parsed with one C-speed `bytes.count` of the delimiter, which the RFC forbids inside a
                        part, so a body of 180,000 empty parts costs a few milliseconds, not seconds of Python
    max_header_bytes    bytes of one part's header block (default 8 KiB)
    max_header_fields   header lines of one part (default 16)

Cost: O(body) C-level scans and one copy of each part's data; fine on the event loop for a body within the
upload limit once the part count is bounded.

`PartCounter(content_type).feed(chunk)` applies the part limit while the body arrives (the server feeds it each
chunk), so a body of 180,000 parts is refused after its first chunk instead of after 10 MB.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_HEADER_FIELDS",
    "MAX_PARTS",
    "MultipartError",
    "Part",
    "PartCounter",
    "parse_multipart",
    "parse_options_header",
]

MAX_PARTS = 16
MAX_HEADER_BYTES = 8 * 1024
MAX_HEADER_FIELDS = 16


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


def _delimiter(content_type: str) -> bytes:
    kind, params = parse_options_header(content_type)
    if kind != "multipart/form-data":
        raise MultipartError(f"expected multipart/form-data, got {kind or 'no content type'}")
    boundary = params.get("boundary", "")
    if not boundary or len(boundary) > 200:
        raise MultipartError("multipart/form-data without a valid boundary parameter")
    return b"--" + boundary.encode("latin-1")


def _too_many(n: int, max_parts: int) -> MultipartError:
    return MultipartError(f"too many parts: {n:,} or more (at most {max_parts}); send one file field 'image'")


class PartCounter:
    """Counts the delimiters of a multipart body fed chunk by chunk, raising MultipartError once it has more than
    `max_parts` parts (the count of `parse_multipart`, over chunks: a delimiter split between two chunks counts)."""

    def __init__(self, content_type: str, max_parts: int = MAX_PARTS) -> None:
        self.sep = b"\r\n" + _delimiter(content_type)
        self.max_parts = max_parts
        self.parts = 0
        self._tail = b""  # the last len(sep) - 1 bytes fed: a delimiter may start there

    def feed(self, chunk: bytes) -> None:
        k = len(self.sep) - 1
        self.parts += chunk.count(self.sep) + (self._tail + chunk[:k]).count(self.sep)
        self._tail = (self._tail + chunk)[-k:] if len(chunk) < k else chunk[-k:]
        if self.parts > self.max_parts:
            raise _too_many(self.parts, self.max_parts)


def parse_multipart(
    body: bytes,
    content_type: str,
    *,
    max_parts: int = MAX_PARTS,
    max_header_bytes: int = MAX_HEADER_BYTES,
    max_header_fields: int = MAX_HEADER_FIELDS,
) -> dict[str, Part]:
    """Split a multipart/form-data body into its named parts (see the module docstring for the limits)."""
    delim = _delimiter(content_type)
    start = body.find(delim)
    if start < 0:
        raise MultipartError("multipart body does not contain its boundary")
    parts_seen = body.count(b"\r\n" + delim, start)  # every later delimiter closes one part
    if parts_seen > max_parts:
        raise _too_many(parts_seen, max_parts)
    parts: dict[str, Part] = {}
    pos = start + len(delim)
    while True:
        if body[pos : pos + 2] == b"--":
            return parts  # closing delimiter
        if body[pos : pos + 2] != b"\r\n":
            raise MultipartError("malformed multipart body (no line break after a boundary)")
        pos += 2
        head_end = body.find(b"\r\n\r\n", pos, pos + max_header_bytes + 4)
        if head_end < 0:
            if body.find(b"\r\n\r\n", pos) < 0:
                raise MultipartError("malformed multipart body (part headers never end)")
            raise MultipartError(f"a part's headers are longer than {max_header_bytes:,} bytes")
        lines = body[pos:head_end].split(b"\r\n", max_header_fields)
        if len(lines) > max_header_fields:
            raise MultipartError(f"a part has more than {max_header_fields} header lines")
        headers: dict[str, str] = {}
        for line in lines:
            key, sep, val = line.decode("utf-8", "replace").partition(":")
            if sep:
                headers[key.strip().lower()] = val.strip()
        nxt = body.find(b"\r\n" + delim, head_end + 4)
        if nxt < 0:
            raise MultipartError("malformed multipart body (a part is not closed by the boundary)")
        disp, dparams = parse_options_header(headers.get("content-disposition", ""))
        name = dparams.get("name")
        if disp != "form-data" or name is None:
            raise MultipartError("a multipart part has no 'Content-Disposition: form-data; name=...' header")
        if name not in parts:
            parts[name] = Part(name, dparams.get("filename"), headers.get("content-type"), body[head_end + 4 : nxt])
        pos = nxt + 2 + len(delim)
