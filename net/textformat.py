"""Protobuf text format, lexical layer: the tokenizer, string (un)escaping and number spelling.

The parser and printer that build `schema.Message` objects live in `net.prototxt_loader`; this
module knows nothing about the schema. Everything a user can get wrong is reported as a
`PrototxtError` (a `ValueError`) whose message starts with `FILE:LINE:COLUMN:`:

    deploy.prototxt:12:5: unterminated string (a string must close on the line it opens)

Tokens (`Token.kind`):

    ident   field names, enum values, true/false, inf/nan        kernel_size  MAX  true
    number  decimal / hex / octal ints, floats in any spelling   64  0x1F  -  1e-4  .5  5.  1f
    string  one quoted literal, quotes and escapes included      "data"  'a\\tb'  "\\x41\\101"
    symbol  one of  { } < > [ ] : , ; -
    eof     the end of the text (its position is the text length)

Comments (`#` to end of line) and whitespace are skipped. A number glued to letters (`12ab`,
`1.2.3`) is an error here rather than two tokens. `iter_tokens` yields tokens lazily (linear time, flat
memory); `tokenize` lists them.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np


class PrototxtError(ValueError):
    """A syntax or schema error in a text-format file, located as ``FILE:LINE:COLUMN: reason``.

    Attributes: `filename`, `line` and `column` (both 1-based) and `reason` (the message without
    the location prefix).
    """

    def __init__(self, reason: str, filename: str = "<string>", line: int = 0, column: int = 0) -> None:
        super().__init__(f"{filename}:{line}:{column}: {reason}")
        self.reason = reason
        self.filename = filename
        self.line = line
        self.column = column


class Token(NamedTuple):
    kind: str  # 'ident' | 'number' | 'string' | 'symbol' | 'eof'
    text: str
    pos: int  # character offset into the source text


_TOKEN_RE = re.compile(
    r"""
    (?:[ \t\r\n\f\v]|\#[^\n]*)*  # whitespace and comments, taken with the token that follows them
    (?:
     (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<number>(?:0[xX][0-9A-Fa-f]+|(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[fF]?)(?![A-Za-z0-9_.]))
    |(?P<badnumber>(?:[0-9]|\.[0-9])[A-Za-z0-9_.+-]*)
    |(?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    |(?P<badstring>["'])
    |(?P<symbol>[{}<>\[\]:,;\-])
    |(?P<bad>.)
    |(?P<eof>\Z)
    )
    """,
    re.VERBOSE | re.DOTALL,
)
# Linear time: every quantifier in `number` is followed by something that cannot match what it gives back (digits
# then '.', 'e' or the lookahead), so a number glued to letters (`1111...1x`) fails after one step back per
# character instead of trying every split of the digits (as `[0-9]+\.?[0-9]*` did: benchmarks/perf_notes.md). The
# alternatives after the skipped prefix always match (`bad` takes any character, `eof` the end), so nothing ever
# backtracks into the prefix. One match per token (the prefix included) halves the Python work per token.


class Source:
    """The text being parsed, with offset -> (line, column) lookup for error messages."""

    def __init__(self, text: str, filename: str = "<string>") -> None:
        self.text = text
        self.filename = filename
        self._line_starts: list[int] | None = None

    def location(self, pos: int) -> tuple[int, int]:
        """1-based (line, column) of character offset `pos`."""
        if self._line_starts is None:
            self._line_starts = [0] + [m.end() for m in re.finditer("\n", self.text)]
        line = bisect.bisect_right(self._line_starts, pos)
        return line, pos - self._line_starts[line - 1] + 1

    def error(self, pos: int, reason: str) -> PrototxtError:
        """A PrototxtError located at offset `pos` (return it; the caller raises)."""
        line, col = self.location(pos)
        return PrototxtError(reason, self.filename, line, col)

    def where(self, pos: int) -> str:
        """'LINE:COL' of offset `pos`, for messages that point at a second place."""
        line, col = self.location(pos)
        return f"{line}:{col}"


def iter_tokens(source: Source) -> Iterator[Token]:
    """The tokens of `source.text`, one at a time, ending with one 'eof' token. Raises PrototxtError when it
    reaches a bad one. Nothing is kept: memory stays flat however long the text (the parser reads it this way)."""
    make = tuple.__new__  # Token(...) without NamedTuple's keyword handling: a third of the time per token
    for m in _TOKEN_RE.finditer(source.text):
        kind = m.lastgroup
        if kind in ("ident", "number", "string", "symbol"):
            yield make(Token, (kind, m.group(kind), m.start(kind)))
        elif kind == "eof":
            yield Token("eof", "", len(source.text))
            return
        elif kind == "badnumber":
            raise source.error(m.start(kind), f"invalid number {m.group(kind)!r}")
        elif kind == "badstring":
            raise source.error(
                m.start(kind), "unterminated string (a string must close, with the same quote, on the line it opens)"
            )
        else:
            raise source.error(m.start(kind), f"unexpected character {m.group(kind)!r}")


def tokenize(source: Source) -> list[Token]:
    """All tokens of `source.text` as a list, ending with one 'eof' token. Raises PrototxtError."""
    return list(iter_tokens(source))


def describe(tok: Token) -> str:
    """How a token is named in 'found ...' messages."""
    if tok.kind == "eof":
        return "end of file"
    text = tok.text if len(tok.text) <= 40 else tok.text[:37] + "..."
    return text if tok.kind == "string" else f"'{text}'"


# -- strings ---------------------------------------------------------------------------------

_SIMPLE_ESCAPES = {
    "n": b"\n",
    "t": b"\t",
    "r": b"\r",
    "a": b"\a",
    "b": b"\b",
    "f": b"\f",
    "v": b"\v",
    "\\": b"\\",
    "'": b"'",
    '"': b'"',
    "?": b"?",
}
_ESCAPE_RE = re.compile(r"\\(?:([0-7]{1,3})|[xX]([0-9A-Fa-f]{1,2})|u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8})|(.))", re.DOTALL)


def unescape(literal: str, source: Source, pos: int) -> bytes:
    """The bytes of one quoted literal (quotes included in `literal`, which starts at offset `pos`).

    C escapes: \\n \\t \\r \\a \\b \\f \\v \\\\ \\' \\" \\? , \\xNN (1-2 hex digits), \\NNN (1-3 octal
    digits), \\uXXXX and \\UXXXXXXXX (written as UTF-8). Other characters are taken as UTF-8.
    """
    body = literal[1:-1]
    out = bytearray()
    last = 0
    for m in _ESCAPE_RE.finditer(body):
        out += body[last : m.start()].encode("utf-8")
        last = m.end()
        octal, hexa, u4, u8, other = m.groups()
        if octal is not None:
            value = int(octal, 8)
            if value > 255:
                raise source.error(pos + 1 + m.start(), f"octal escape '\\{octal}' is larger than a byte (max \\377)")
            out.append(value)
        elif hexa is not None:
            out.append(int(hexa, 16))
        elif u4 is not None or u8 is not None:
            code = int(u4 or u8, 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise source.error(pos + 1 + m.start(), f"invalid unicode escape {m.group()!r}")
            out += chr(code).encode("utf-8")
        elif other in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[other]
        else:
            hint = " (\\x needs hex digits)" if other in "xX" else ""
            raise source.error(pos + 1 + m.start(), f"invalid escape sequence '\\{other}' in string{hint}")
    out += body[last:].encode("utf-8")
    return bytes(out)


_PLAIN_STRING_RE = re.compile(r"[^\x00-\x1f\x7f\"\\]*\Z")
_STR_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", '"': '\\"', "\\": "\\\\"}


def quote_string(value: str) -> str:
    """A double-quoted literal for `value`; control characters are written as octal escapes."""
    if _PLAIN_STRING_RE.match(value):
        return f'"{value}"'
    parts = []
    for ch in value:
        if ch in _STR_ESCAPES:
            parts.append(_STR_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            parts.append(f"\\{ord(ch):03o}")
        else:
            parts.append(ch)
    return '"' + "".join(parts) + '"'


def quote_bytes(value: bytes) -> str:
    """A double-quoted literal for raw bytes: printable ASCII as is, everything else octal."""
    parts = []
    for b in value:
        ch = chr(b)
        if ch in _STR_ESCAPES:
            parts.append(_STR_ESCAPES[ch])
        elif 0x20 <= b < 0x7F:
            parts.append(ch)
        else:
            parts.append(f"\\{b:03o}")
    return '"' + "".join(parts) + '"'


# -- numbers ---------------------------------------------------------------------------------


def parse_int_literal(text: str) -> int | None:
    """The value of an integer literal (decimal, 0x hex, 0-prefixed octal), or None if it is a float."""
    if text[:2] in ("0x", "0X"):
        return int(text, 16)
    if not text.isdigit():
        return None
    if len(text) > 1 and text[0] == "0":
        if not set(text) <= set("01234567"):
            raise ValueError(f"invalid octal number {text!r} (a leading 0 means octal)")
        return int(text, 8)
    return int(text)


def parse_float_literal(text: str) -> float:
    """The value of a number literal read as a float (`1e-4`, `.5`, `5.`, `1f`, `0x10`)."""
    if text[:2] in ("0x", "0X"):
        return float(int(text, 16))
    if text[-1] in "fF":
        text = text[:-1]
    return float(text)


def to_float32(value: float) -> float:
    """`value` rounded to the nearest float32 (out-of-range magnitudes become +-inf), as a Python float."""
    with np.errstate(over="ignore"):
        return float(np.float32(value))


def format_float(value: float, single: bool = True) -> str:
    """The shortest text that reads back as the same float32 (`single`) or float64.

    Caffe-like spelling: `1`, `0.0001`, `1e-05`, `1.2345679e+08`, `inf`, `-inf`, `nan`.
    """
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if not single:
        text = repr(float(value))
    else:
        f = np.float32(value)
        text = np.format_float_scientific(f, unique=True, trim="-", exp_digits=2)
        if -5 < int(text.rpartition("e")[2]) < 16:
            text = np.format_float_positional(f, unique=True, trim="-")
    text = text.removesuffix(".0")
    return text
