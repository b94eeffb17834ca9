"""Caffe .prototxt files: a from-scratch protobuf text-format parser and printer over `net.schema`.

    from net.prototxt_loader import load_net_prototxt, parse_text, format_text
    net = load_net_prototxt("models/lenet/deploy.prototxt")      # parsed + upgraded NetParameter
    conv = parse_text("num_output: 20 kernel_size: 5", "ConvolutionParameter")
    text = format_text(net)                                      # parse_text(text) == net

Grammar accepted (protobuf text format as Caffe's files use it): `field: value`, `field { ... }`,
`field: { ... }`, `field < ... >`, optional `,` or `;` after each field, repeated fields by
repetition or `field: [v1, v2]` (messages too), enums as bare names (or their numbers), adjacent
string literals concatenated, `#` comments. Values are checked against the schema: unknown fields
(with a did-you-mean), wrong value kinds, int ranges (int32/uint32/int64/uint64), a singular field
given twice. `float` fields are rounded to float32 as Caffe stores them; `double` fields are kept.

Errors (all user mistakes; never a traceback from inside the parser):

    ValueError
      PrototxtError          FILE:LINE:COL: what was expected, what was found
    OSError                  the file is missing or cannot be read (FileNotFoundError, ...)

A file that is not UTF-8 is a PrototxtError at the offending byte.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from .schema import BY_NAME, ENUM_NAMES, ENUMS, MESSAGES, Field, Message
from .textformat import (
    PrototxtError,
    Source,
    Token,
    describe,
    format_float,
    iter_tokens,
    parse_float_literal,
    parse_int_literal,
    quote_bytes,
    quote_string,
    to_float32,
    unescape,
)

__all__ = ["PrototxtError", "format_text", "load_net_prototxt", "load_solver_prototxt", "parse_text", "read_text"]

_INT_RANGES = {
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}
_TRUE = frozenset({"true", "True", "t"})
_FALSE = frozenset({"false", "False", "f"})
_CLOSERS = {"{": "}", "<": ">"}
_LOCATED = frozenset({"LayerParameter", "V1LayerParameter"})  # messages that remember their file and line


class _Parser:
    """Recursive-descent parser over the tokens of one text, read one at a time (`self.tok` is the next one, not
    yet taken; `_advance` takes it). No token list is built: memory beyond the text and the result stays flat."""

    def __init__(self, text: str, filename: str) -> None:
        self.src = Source(text, filename)
        self._tokens = iter_tokens(self.src)
        self.tok: Token = next(self._tokens)

    def _advance(self) -> None:
        """Take the current token; past the end, `tok` stays the 'eof' token."""
        if self.tok.kind != "eof":
            self.tok = next(self._tokens)

    def check_rest(self) -> None:
        """Read the tokens not yet taken, so a lexical error anywhere in the text raises (a parse error found
        earlier is reported only when the whole text tokenizes, as when the tokens were listed up front)."""
        for _ in self._tokens:
            pass

    # -- helpers -----------------------------------------------------------------------------
    def _error(self, tok: Token, reason: str) -> PrototxtError:
        return self.src.error(tok.pos, reason)

    def _take_symbol(self, symbols: str) -> Token | None:
        tok = self.tok
        if tok.kind == "symbol" and tok.text in symbols:
            self._advance()
            return tok
        return None

    # -- messages ----------------------------------------------------------------------------
    def parse_message(self, msg: Message, opener: Token | None, field_name: str = "") -> None:
        """Fill `msg` with fields up to the closer matching `opener` (or to the end for the top level)."""
        seen: dict[str, int] = {}
        while True:
            tok = self.tok
            if tok.kind == "symbol" and tok.text in "}>":
                if opener is None:
                    raise self._error(
                        tok,
                        f"unbalanced braces: '{tok.text}' has no matching opening '{'{' if tok.text == '}' else '<'}'",
                    )
                closer = _CLOSERS[opener.text]
                if tok.text != closer:
                    raise self._error(
                        tok,
                        f"expected '{closer}' to close '{opener.text}' of '{field_name}' "
                        f"opened at {self.src.where(opener.pos)}, found '{tok.text}'",
                    )
                self._advance()
                return
            if tok.kind == "eof":
                if opener is None:
                    return
                raise self._error(
                    opener,
                    f"unbalanced braces: '{opener.text}' of '{field_name}' opened here is "
                    f"never closed (reached the end of the file)",
                )
            if tok.kind != "ident":
                raise self._error(tok, f"expected a field name of {msg.type_name}, found {describe(tok)}")
            self._advance()
            self._parse_field(msg, tok, seen)
            self._take_symbol(",;")

    def _lookup(self, msg: Message, tok: Token) -> Field:
        field = BY_NAME[msg.type_name].get(tok.text)
        if field is not None:
            return field
        names = list(BY_NAME[msg.type_name])
        close = difflib.get_close_matches(tok.text, names, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise self._error(tok, f"unknown field '{tok.text}' in {msg.type_name}{hint}")

    def _parse_field(self, msg: Message, name_tok: Token, seen: dict[str, int]) -> None:
        if msg.type_name == "PoolingParameter" and name_tok.text == "ceil_mode":
            self._parse_ceil_mode(msg, name_tok, seen)
            return
        field = self._lookup(msg, name_tok)
        name = field.name
        if not field.repeated:
            if name in seen:
                raise self._error(
                    name_tok,
                    f"field '{name}' of {msg.type_name} is not repeated and was already "
                    f"set at {self.src.where(seen[name])}",
                )
            seen[name] = name_tok.pos
        colon = self._take_symbol(":")
        tok = self.tok
        if tok.kind == "symbol" and tok.text in "{<":
            if not field.is_message:
                raise self._error(
                    tok,
                    f"field '{name}' of {msg.type_name} is a {field.type}, not a message; "
                    f"expected {'a value' if colon else repr(':')}, found '{tok.text}'",
                )
            self._advance()
            self._store(msg, field, self._parse_submessage(field, tok))
        elif tok.kind == "symbol" and tok.text == "[":
            if not field.repeated:
                raise self._error(
                    tok,
                    f"field '{name}' of {msg.type_name} is not repeated; the list syntax [...] needs a repeated field",
                )
            if colon is None and not field.is_message:
                raise self._error(tok, f"expected ':' after field name '{name}', found '['")
            self._advance()
            self._parse_list(msg, field, tok)
        elif colon is None:
            raise self._error(tok, f"expected ':' or '{{' after field name '{name}', found {describe(tok)}")
        elif field.is_message:
            raise self._error(
                tok,
                f"field '{name}' of {msg.type_name} is a message ({field.type}); expected '{{' "
                f"after '{name}:', found {describe(tok)}",
            )
        else:
            self._store(msg, field, self.parse_scalar(field))

    def _parse_submessage(self, field: Field, opener: Token) -> Message:
        sub = Message(field.type)
        if field.type in _LOCATED and self.src.filename != "<string>":  # layer errors name their line (Layer.error)
            sub.set_origin(f"{self.src.filename}:{self.src.location(opener.pos)[0]}")
        self.parse_message(sub, opener, field.name)
        return sub

    def _parse_list(self, msg: Message, field: Field, opener: Token) -> None:
        if self._take_symbol("]"):
            getattr(msg, field.name)  # an empty list still creates the (empty) field
            return
        while True:
            tok = self.tok
            if field.is_message:
                if not (tok.kind == "symbol" and tok.text in "{<"):
                    raise self._error(
                        tok,
                        f"expected '{{' to start an element of '{field.name}' ({field.type}), found {describe(tok)}",
                    )
                self._advance()
                self._store(msg, field, self._parse_submessage(field, tok))
            else:
                self._store(msg, field, self.parse_scalar(field))
            if self._take_symbol("]"):
                return
            tok = self.tok
            if tok.kind == "eof":
                raise self._error(opener, f"unbalanced brackets: '[' of '{field.name}' opened here is never closed")
            if not self._take_symbol(","):
                raise self._error(tok, f"expected ',' or ']' in the list of '{field.name}', found {describe(tok)}")

    @staticmethod
    def _store(msg: Message, field: Field, value: object) -> None:
        if field.repeated:
            getattr(msg, field.name).append(value)
        else:
            setattr(msg, field.name, value)

    def _parse_ceil_mode(self, msg: Message, name_tok: Token, seen: dict[str, int]) -> None:
        """OpenCV/fork spelling `ceil_mode: false` == BVLC `round_mode: FLOOR` (caffe_facts §10.3)."""
        if "round_mode" in seen:
            raise self._error(
                name_tok,
                f"'ceil_mode' and 'round_mode' both set (round_mode at "
                f"{self.src.where(seen['round_mode'])}); give only one",
            )
        seen["round_mode"] = name_tok.pos
        if not self._take_symbol(":"):
            raise self._error(self.tok, f"expected ':' after field name 'ceil_mode', found {describe(self.tok)}")
        ceil = self.parse_scalar(Field("ceil_mode", 0, "bool"))
        msg.round_mode = "CEIL" if ceil else "FLOOR"

    # -- scalars -----------------------------------------------------------------------------
    def parse_scalar(self, field: Field) -> object:
        """One value for the scalar or enum `field`, converted and checked."""
        ftype = field.type
        if ftype in ("string", "bytes"):
            return self._parse_string(field)
        if ftype == "bool":
            return self._parse_bool(field)
        if ftype in ENUMS:
            return self._parse_enum(field)
        neg = self._take_symbol("-")
        tok = self.tok
        if ftype in _INT_RANGES:
            return self._parse_int(field, tok, neg)
        return self._parse_float(field, tok, neg)

    def _bad_value(self, field: Field, tok: Token, expected: str, hint: str = "") -> PrototxtError:
        return self._error(
            tok, f"expected {expected} for field '{field.name}' ({field.type}), found {describe(tok)}{hint}"
        )

    def _parse_string(self, field: Field) -> str | bytes:
        tok = self.tok
        if tok.kind != "string":
            hint = ""
            if tok.kind in ("ident", "number"):
                hint = f' (strings need quotes: "{tok.text}")'
                if field.name == "type" and tok.text in ENUMS["LayerType"]:
                    hint = (
                        f" ({tok.text} is a V1 enum type, valid inside 'layers {{ }}'; inside 'layer {{ }}' "
                        f'write the type as a string such as "Convolution")'
                    )
            raise self._bad_value(field, tok, "a quoted string", hint)
        run = []  # adjacent literals are one string
        while self.tok.kind == "string":
            run.append(self.tok)
            self._advance()
        if field.type == "string" and not any("\\" in t.text for t in run):
            return "".join(t.text[1:-1] for t in run)
        data = b"".join(unescape(t.text, self.src, t.pos) for t in run)
        if field.type == "bytes":
            return data
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise self._error(tok, f"string for field '{field.name}' is not valid UTF-8 after unescaping") from None

    def _parse_bool(self, field: Field) -> bool:
        tok = self.tok
        self._advance()
        if tok.kind == "ident":
            if tok.text in _TRUE:
                return True
            if tok.text in _FALSE:
                return False
        elif tok.kind == "number" and tok.text in ("0", "1"):
            return tok.text == "1"
        raise self._bad_value(field, tok, "true or false")

    def _parse_enum(self, field: Field) -> str:
        names = ENUMS[field.type]
        neg = self._take_symbol("-")
        tok = self.tok
        self._advance()
        if tok.kind == "ident" and neg is None:
            if tok.text in names:
                return tok.text
            close = difflib.get_close_matches(tok.text, list(names), n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise self._error(
                tok,
                f"unknown value '{tok.text}' for enum field '{field.name}' ({field.type}); "
                f"{hint}valid values: {', '.join(names)}",
            )
        if tok.kind == "number":
            value = self._int_value(field, tok)
            value = -value if neg else value
            if value in ENUM_NAMES[field.type]:
                return ENUM_NAMES[field.type][value]
            raise self._error(
                tok,
                f"{value} is not a value of enum field '{field.name}' ({field.type}); valid: "
                + ", ".join(f"{k}={v}" for k, v in names.items()),
            )
        raise self._bad_value(field, tok, f"one of {', '.join(names)}")

    def _int_value(self, field: Field, tok: Token) -> int:
        try:
            value = parse_int_literal(tok.text)
        except ValueError as exc:
            raise self._error(tok, str(exc)) from None
        if value is None:
            raise self._bad_value(field, tok, "an integer")
        return value

    def _parse_int(self, field: Field, tok: Token, neg: Token | None) -> int:
        if tok.kind != "number":
            raise self._bad_value(field, tok, "an integer")
        self._advance()
        value = self._int_value(field, tok)
        if neg is not None:
            value = -value
        lo, hi = _INT_RANGES[field.type]
        if not lo <= value <= hi:
            where = neg if neg is not None else tok
            raise self._error(
                where, f"value {value} is out of range for field '{field.name}' ({field.type}: {lo} to {hi})"
            )
        return value

    def _parse_float(self, field: Field, tok: Token, neg: Token | None) -> float:
        if tok.kind == "number":
            value = parse_float_literal(tok.text)
        elif tok.kind == "ident" and tok.text.lower() in ("inf", "infinity", "nan"):
            value = float(tok.text.lower())
        else:
            raise self._bad_value(field, tok, "a number")
        self._advance()
        if neg is not None:
            value = -value
        return to_float32(value) if field.type == "float" else value


# -- public API ------------------------------------------------------------------------------


def parse_text(text: str, type_name: str = "NetParameter", filename: str = "<string>") -> Message:
    """Parse protobuf text `text` as a message of type `type_name` (a key of `schema.MESSAGES`).

    `filename` only labels error messages. No upgrade is applied (see `net.upgrade`).
    Raises PrototxtError on any syntax or schema mistake.
    """
    if type_name not in MESSAGES:
        raise ValueError(f"unknown message type {type_name!r}")
    if text.startswith("\ufeff"):
        text = " " + text[1:]  # a BOM: keep offsets (and columns) aligned
    parser = _Parser(text, filename)
    msg = Message(type_name)
    try:
        parser.parse_message(msg, None)
    except PrototxtError:
        try:
            parser.check_rest()  # a lexical error anywhere wins, as it did when the text was tokenized first
        except PrototxtError as lexical:
            raise lexical from None
        raise
    return msg


def _format_scalar(field: Field, value: object) -> str:
    ftype = field.type
    if ftype == "string":
        return quote_string(str(value))
    if ftype == "bytes":
        return quote_bytes(bytes(value))  # type: ignore[arg-type]
    if ftype == "bool":
        return "true" if value else "false"
    if ftype in ("float", "double"):
        return format_float(float(value), single=ftype == "float")  # type: ignore[arg-type]
    if ftype in ENUMS and isinstance(value, str):
        return value
    return str(int(value))  # type: ignore[call-overload]


def _format_into(msg: Message, indent: int, out: list[str]) -> None:
    pad = " " * indent
    for field, value in msg.set_fields():
        values = value if field.repeated else (value,)
        if field.is_message:
            for sub in values:
                out.append(f"{pad}{field.name} {{\n")
                _format_into(sub, indent + 2, out)
                out.append(f"{pad}}}\n")
        else:
            prefix = f"{pad}{field.name}: "
            out.extend(f"{prefix}{_format_scalar(field, v)}\n" for v in values)


def format_text(msg: Message, indent: int = 0) -> str:
    """`msg` in protobuf text format, Caffe style: one field per line, nested messages as
    `name {` ... `}` indented by 2 spaces, `indent` spaces before every top-level line.

    Floats are written in the shortest form that reads back as the same float32 (double fields:
    float64), strings quoted and escaped, enums by name. `parse_text(format_text(m)) == m` for any
    message whose float fields hold float32 values (all parsed and decoded ones do) and whose enum
    fields hold known names (an unknown number kept from a binary file is printed as a number,
    which the parser rejects).
    """
    out: list[str] = []
    _format_into(msg, indent, out)
    return "".join(out)


def read_text(path: str | Path) -> str:
    """The UTF-8 text of file `path`. OSError (with a readable message) if it cannot be read,
    PrototxtError (with line:col of the bad byte) if it is not UTF-8."""
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"{name}: is a directory, not a text file") from None
    except PermissionError:
        raise PermissionError(f"{name}: permission denied") from None
    except OSError as exc:
        raise OSError(f"{name}: cannot read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        head = data[: exc.start]
        line = head.count(b"\n") + 1
        col = len(head) - (head.rfind(b"\n") + 1) + 1
        hint = " (is this a binary file such as a .caffemodel?)" if b"\x00" in data[:4096] else ""
        raise PrototxtError(f"not UTF-8 text: byte 0x{data[exc.start]:02x}{hint}", name, line, col) from None


def load_net_prototxt(path: str | Path, *, upgrade: bool = True) -> Message:
    """Read a net definition (.prototxt) as a NetParameter; with `upgrade`, apply `upgrade_net`
    (V0/V1 layers, legacy input fields, ... -> the current format)."""
    from .upgrade import upgrade_net

    param = parse_text(read_text(path), "NetParameter", str(path))
    return upgrade_net(param, str(path)) if upgrade else param


def load_solver_prototxt(path: str | Path) -> Message:
    """Read a solver definition as a SolverParameter and apply `upgrade_solver` (solver_type enum
    -> type string, default snapshot_prefix from the file name)."""
    from .upgrade import upgrade_solver

    param = parse_text(read_text(path), "SolverParameter", str(path))
    return upgrade_solver(param, str(path))
