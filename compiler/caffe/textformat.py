"""A small reader for the protobuf text format (Caffe's .prototxt): messages of `name: value` fields and
`name { ... }` sub-messages, every field with the line it was written on.

It checks the text against a table of the fields each message may have (`netspec.compiler.caffe.proto`): an
unknown field or a value of the wrong kind is a `file:line: what — fix` error, like a spec error.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from netspec.errors import Pos, UserError, did_you_mean
from netspec.compiler.caffe.proto import MESSAGES, OPAQUE, base, repeated


class Ident(str):
    """A bare word in the text (an enum value such as MAX or TRAIN)."""


@dataclass
class Field:
    name: str
    value: Any  # int, float, bool, str, Ident or Message
    line: int


@dataclass
class Message:
    """A parsed message: its fields in order (a repeated field occurs several times)."""

    type: str
    file: str
    line: int
    fields: list[Field] = field(default_factory=list)

    def all(self, name: str) -> list[Any]:
        return [f.value for f in self.fields if f.name == name]

    def get(self, name: str, default: Any = None) -> Any:
        values = self.all(name)
        return values[-1] if values else default

    def has(self, name: str) -> bool:
        return any(f.name == name for f in self.fields)

    def pos(self, name: str | None = None) -> Pos:
        """Where a field (else the message) was written."""
        for f in self.fields:
            if f.name == name:
                return Pos(self.file, f.line)
        return Pos(self.file, self.line)

    def sub(self, name: str) -> "Message":
        """A sub-message, or an empty one of the right type when it is absent."""
        value = self.get(name)
        if value is None:
            kind = base(MESSAGES.get(self.type, {}).get(name, OPAQUE))
            return Message(kind, self.file, self.line)
        return value


BREAKS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")  # control characters and what YAML reads as line breaks


def one_line(text: str) -> str:
    """`text` with every control character escaped (a Caffe name may hold a newline): it stays one line."""
    return BREAKS.sub(lambda m: json.dumps(m.group())[1:-1], text)


class CaffeError(UserError):
    """A Caffe file netspec cannot import: one line, whatever names it quotes."""

    def __str__(self) -> str:
        return one_line(super().__str__())


class TextFormatError(CaffeError):
    """A syntax or schema error in a .prototxt."""


TOKEN = re.compile(r"""
    (?P<space>[ \t\r\f\v]+) | (?P<newline>\n) | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>-?(?:0[xX][0-9A-Fa-f]+|(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?[fF]?)(?![A-Za-z0-9_])
               |-?(?i:infinity|inf|nan)(?![A-Za-z0-9_]))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[{}<>:;,\[\]])
""", re.VERBOSE)

# protobuf's text-format escapes (C's): simple ones, \ooo octal (1-3 digits), \xHH hex (1-2), \uXXXX, \UXXXXXXXX
SIMPLE_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, "'": 39, '"': 34, "?": 63}
ESCAPE = re.compile(r"\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8})|(.))", re.DOTALL)
INTEGER = re.compile(r"-?(?:0[xX][0-9A-Fa-f]+|0[0-7]*|[1-9]\d*)")
INT_RANGES = {"i": (-2**31, 2**31 - 1, "int32"), "u": (0, 2**32 - 1, "uint32"), "l": (-2**63, 2**63 - 1, "int64")}
BOOLS = {"true": True, "True": True, "t": True, "false": False, "False": False, "f": False}


@dataclass
class Token:
    kind: str
    text: str
    line: int


def tokens(text: str, file: str) -> list[Token]:
    out, line, at = [], 1, 0
    while at < len(text):
        match = TOKEN.match(text, at)
        if match is None:
            raise TextFormatError(f"unexpected character {text[at]!r}", "check the quoting and braces near here",
                                  Pos(file, line))
        kind = match.lastgroup
        if kind == "newline":
            line += 1
        elif kind not in ("space", "comment"):
            out.append(Token(kind, match.group(), line))
        at = match.end()
    out.append(Token("end", "", line))
    return out


def unescape(body: str, pos: Pos) -> str:
    """A quoted string's body with protobuf's escapes decoded (they give bytes; a string field is UTF-8)."""
    out = bytearray()
    at = 0
    for m in ESCAPE.finditer(body):
        out += body[at:m.start()].encode("utf-8")
        octal, hexa, u4, u8, char = m.groups()
        if octal or hexa:
            out.append(int(octal, 8) & 0xFF if octal else int(hexa, 16))
        elif u4 or u8:
            code = int(u4 or u8, 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise TextFormatError(f"\\{'u' if u4 else 'U'}{u4 or u8} is not a Unicode character",
                                      "give a code point below 0x110000, outside the surrogates", pos)
            out += chr(code).encode("utf-8")
        elif char in SIMPLE_ESCAPES:
            out.append(SIMPLE_ESCAPES[char])
        else:
            raise TextFormatError(f"invalid escape sequence '\\{char}' in a string",
                                  "protobuf's escapes are \\n \\t \\r \\a \\b \\f \\v \\\\ \\' \\\" \\? \\ooo \\xHH "
                                  "\\uXXXX; write a backslash as \\\\", pos)
        at = m.end()
    out += body[at:].encode("utf-8")
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise TextFormatError("the string's escapes make bytes that are not UTF-8 text",
                              "a Caffe string field holds UTF-8 text: fix the \\x / octal escapes", pos) from None


class _Parser:
    def __init__(self, text: str, file: str):
        self.file = file
        self.tokens = tokens(text, file)
        self.at = 0
        self.open: list[Message] = []  # the messages being read, outermost first

    @property
    def token(self) -> Token:
        return self.tokens[self.at]

    def error(self, what: str, fix: str, token: Token | None = None) -> TextFormatError:
        return TextFormatError(what, fix, Pos(self.file, (token or self.token).line))

    def take(self) -> Token:
        token = self.token
        self.at += 1
        return token

    def message(self, kind: str, line: int, close: str | None) -> Message:
        message = Message(kind, self.file, line)
        self.open.append(message)
        try:
            return self._fields(message, line, close)
        finally:
            self.open.pop()

    def _fields(self, message: Message, line: int, close: str | None) -> Message:
        while True:
            token = self.token
            if token.kind == "end":
                if close:
                    raise TextFormatError(f"this message is not closed: the file ends first", f"add its '{close}'",
                                          Pos(self.file, line))
                return message
            if token.kind == "punct" and token.text in "}>":
                if token.text != close:
                    raise self.error(f"unexpected '{token.text}'", "remove it, or open the message it closes"
                                     if close is None else f"close with '{close}'")
                self.take()
                return message
            if token.kind != "ident":
                raise self.error(f"expected a field name, found {token.text!r}", "fields are written `name: value` "
                                 "or `name { ... }`")
            message.fields.extend(self.field(message))

    def field(self, parent: Message) -> Iterator[Field]:
        name = self.take()
        schema = MESSAGES.get(parent.type)
        if schema is not None and name.text not in schema:
            where = parent.type if parent.type != "LayerParameter" else "layer"
            if any(name.text in MESSAGES.get(m.type, {}) for m in self.open[:-1]):  # it belongs further out
                raise self.error(f"'{name.text}' inside the {where} opened on line {parent.line}",
                                 f"is that {where}'s closing '}}' missing?", name)
            raise self.error(f"unknown field '{name.text}' in {where}", did_you_mean(name.text, schema), name)
        kind = schema.get(name.text, OPAQUE) if schema is not None else OPAQUE
        if kind != OPAQUE and not repeated(kind) and parent.has(name.text):
            raise self.error(f"'{name.text}' is given twice (lines {parent.pos(name.text).line} and {name.line}): "
                             f"it is not a repeated field of {parent.type}, and Caffe's protobuf parser refuses "
                             "it", "keep one of the two", name)
        kind = base(kind)
        colon = self.token.kind == "punct" and self.token.text == ":"
        if colon:
            self.take()
        token = self.token
        if token.kind == "punct" and token.text in "{<":
            self.take()
            if kind[0].islower() and kind != OPAQUE:
                raise self.error(f"'{name.text}' is a value, not a message", f"write `{name.text}: VALUE`", token)
            yield Field(name.text, self.message(kind, name.line, "}" if token.text == "{" else ">"), name.line)
        elif not colon:
            raise self.error(f"expected ':' after '{name.text}'", f"write `{name.text}: VALUE` or `{name.text} {{ ... }}`")
        elif token.kind == "punct" and token.text == "[":
            if schema is not None and name.text in schema and not repeated(schema[name.text]):
                raise self.error(f"'{name.text}' is not a repeated field: it takes one value, not a list",
                                 f"write `{name.text}: VALUE`", token)
            self.take()
            while not (self.token.kind == "punct" and self.token.text == "]"):
                yield Field(name.text, self.scalar(name, kind), self.token.line)
                if self.token.kind == "punct" and self.token.text == ",":
                    self.take()
                elif not (self.token.kind == "punct" and self.token.text == "]"):
                    raise self.error("expected ',' or ']' in the list", "separate list values with commas")
            self.take()
        else:
            yield Field(name.text, self.scalar(name, kind), token.line)
        if self.token.kind == "punct" and self.token.text in ";,":
            self.take()

    def scalar(self, name: Token, kind: str) -> Any:
        token = self.take()
        pos = Pos(self.file, token.line)
        if token.kind == "string":
            value: Any = unescape(token.text[1:-1], pos)
            while self.token.kind == "string":  # adjacent strings concatenate
                value += unescape(self.take().text[1:-1], pos)
            return check_value(name.text, value, kind, pos)
        if token.kind in ("number", "ident"):
            return check_value(name.text, Raw(token.text), kind, pos)
        raise self.error(f"expected a value for '{name.text}', found {token.text!r}" if token.kind != "end"
                         else f"the file ends before the value of '{name.text}'", f"write `{name.text}: VALUE`",
                         token)


class Raw(str):
    """An unquoted value as written (a number or a word): converted by the field's kind."""


def _integer(text: str) -> int | None:
    """Protobuf's integer forms: decimal, 0x hex, 0 octal, with a leading '-'; None if `text` is not one."""
    if not INTEGER.fullmatch(text):
        return None
    sign, digits = (-1, text[1:]) if text.startswith("-") else (1, text)
    if digits[:2].lower() == "0x":
        return sign * int(digits[2:], 16)
    return sign * (int(digits, 8) if digits.startswith("0") else int(digits))


def _float(text: str) -> float | None:
    """Protobuf's float forms: decimal numbers (an optional f suffix), inf, infinity, nan, with a leading '-';
    hex and octal integers are not floats."""
    body = text.lstrip("-").lower()
    if body in ("inf", "infinity", "nan"):
        return float(text.lower().replace("infinity", "inf"))
    if body.startswith("0x") or re.fullmatch(r"0[0-9]+", body) or not re.fullmatch(
            r"(?:\d+\.\d*|\.\d+|\d+)(?:e[-+]?\d+)?f?", body):
        return None
    return float(text.rstrip("fF"))


def loose(value: Any) -> Any:
    """A value of a field that is not checked (OPAQUE): a number, a bool, a word or a string."""
    if not isinstance(value, Raw):
        return value
    number = _integer(value)
    if number is not None:
        return number
    number = _float(value)
    if number is not None:
        return number
    return {"true": True, "false": False, "True": True, "False": False}.get(value, Ident(value))


def check_value(name: str, value: Any, kind: str, pos: Pos) -> Any:
    """A value as written (a decoded string, or Raw text) converted for the field's kind (i int32, u uint32, l int64,
    f float, b bool, s string, e:A|B enum), as protobuf's text parser does; else a TextFormatError."""
    if kind == OPAQUE:
        return loose(value)
    if kind[0].isupper():
        raise TextFormatError(f"'{name}' is a message", f"write `{name} {{ ... }}`", pos)
    if kind == "s":
        if not isinstance(value, Raw):
            return value
        raise TextFormatError(f"'{name}' takes a quoted string, not {value}", f'write {name}: "{value}"', pos)
    if isinstance(value, str) and not isinstance(value, Raw):
        raise TextFormatError(f"'{name}' takes {'a number' if kind in 'iulf' else 'an unquoted value'}, not the "
                              f"string {value!r}", f"write {name}: VALUE without quotes", pos)
    if kind == "b":
        if value in BOOLS:
            return BOOLS[value]
        if _integer(value) in (0, 1):
            return bool(_integer(value))
        raise TextFormatError(f"'{name}' takes true or false, not {value}", f"write {name}: true", pos)
    if kind in INT_RANGES:
        low, high, proto = INT_RANGES[kind]
        number = _integer(value)
        if number is None:
            if _float(value) is not None:
                raise TextFormatError(f"'{name}' takes a whole number, not {value}", f"write {name}: N", pos)
            if re.fullmatch(r"-?0\d+", value):
                raise TextFormatError(f"'{name}': {value} starts with 0, which makes an octal number, but has a digit "
                                      "8 or 9", "drop the leading 0", pos)
            raise TextFormatError(f"'{name}' takes a number, not {value}", f"write {name}: NUMBER", pos)
        if not low <= number <= high:
            raise TextFormatError(f"'{name}' is {value} = {number}, outside the {proto} range {low}..{high} of "
                                  "Caffe's caffe.proto", f"give {name} a value in {low}..{high}", pos)
        return number
    if kind == "f":
        number = _float(value)
        if number is None:
            raise TextFormatError(f"'{name}' takes a number, not {value}", f"write {name}: 0.5 (a decimal number: "
                                  "hex and octal are for integer fields)", pos)
        return number
    if kind.startswith("e:"):
        numbers = enum_numbers(kind)
        by_number = {n: c for c, n in numbers.items()}
        if value in numbers:
            return Ident(value)
        if _integer(value) in by_number:
            return Ident(by_number[_integer(value)])  # an enum may be written as its number
        raise TextFormatError(f"'{name}' must be one of {', '.join(numbers)}, not {value}",
                              did_you_mean(str(value), list(numbers)), pos)
    return value


def enum_numbers(kind: str) -> dict[str, int]:
    """`e:A|B|C=7` → {A: 0, B: 1, C: 7}: values are numbered in order unless `=N` says otherwise."""
    out, number = {}, 0
    for choice in kind[2:].split("|"):
        name, _, explicit = choice.partition("=")
        number = int(explicit) if explicit else number
        out[name] = number
        number += 1
    return out


def parse_text(text: str, file: str, kind: str) -> Message:
    """Parse text-format `text` (from `file`, for messages) as a message of type `kind`."""
    return _Parser(text, file).message(kind, 1, None)


def parse_file(path: str | Path, kind: str) -> Message:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"no such file: {path}", "check the path") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}", "give a text-format .prototxt") from None
    try:
        text = data.decode("utf-8")
        bad = text.find("\0")
    except UnicodeDecodeError as e:
        text, bad = None, e.start
    if bad >= 0:
        what = "a .caffemodel or other binary protobuf" if kind == "NetParameter" else "a binary file"
        raise TextFormatError(f"this is not a text-format prototxt: byte {bad} ({data[bad:bad + 1].hex()}) is not "
                              f"text — is it {what}?", "give the .prototxt (trained weights go to --weights)"
                              if kind == "NetParameter" else "give the text-format .prototxt",
                              Pos(str(path), data.count(b"\n", 0, bad) + 1))
    return parse_text(text, str(path), kind)
