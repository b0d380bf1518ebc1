"""A small reader for the protobuf text format (Caffe's .prototxt): messages of `name: value` fields and
`name { ... }` sub-messages, every field with the line it was written on.

It checks the text against a table of the fields each message may have (`netspec.compiler.caffe.proto`): an
unknown field or a value of the wrong kind is a `file:line: what — fix` error, like a spec error.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from netspec.errors import Pos, UserError, did_you_mean
from netspec.compiler.caffe.proto import MESSAGES, OPAQUE


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
            kind = MESSAGES.get(self.type, {}).get(name, OPAQUE)
            return Message(kind, self.file, self.line)
        return value


class TextFormatError(UserError):
    """A syntax or schema error in a .prototxt."""


TOKEN = re.compile(r"""
    (?P<space>[ \t\r\f\v]+) | (?P<newline>\n) | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?[fF]?|[-+]?(?:inf|nan)\b)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[{}<>:;,\[\]])
""", re.VERBOSE)

ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"'}


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


def _string(token: Token) -> str:
    body = token.text[1:-1]
    return re.sub(r"\\(.)", lambda m: ESCAPES.get(m.group(1), m.group(1)), body)


def _number(text: str) -> int | float:
    if text.lower().lstrip("+-") in ("inf", "nan"):
        return float(text)
    if re.fullmatch(r"[-+]?\d+", text):
        return int(text)
    return float(text.rstrip("fF"))


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
        if token.kind == "string":
            value: Any = _string(token)
            while self.token.kind == "string":  # adjacent strings concatenate
                value += _string(self.take())
        elif token.kind == "number":
            value = _number(token.text)
        elif token.kind == "ident":
            value = {"true": True, "false": False, "True": True, "False": False}.get(token.text, Ident(token.text))
        else:
            raise self.error(f"expected a value for '{name.text}', found {token.text!r}" if token.kind != "end"
                             else f"the file ends before the value of '{name.text}'", f"write `{name.text}: VALUE`",
                             token)
        return check_value(name.text, value, kind, Pos(self.file, token.line))


def check_value(name: str, value: Any, kind: str, pos: Pos) -> Any:
    """The value fits the field's kind (i int, f float, b bool, s string, e:A|B enum); else a UserError."""
    if kind == OPAQUE:
        return value
    if kind[0].isupper():
        raise TextFormatError(f"'{name}' is a message", f"write `{name} {{ ... }}`", pos)
    if kind == "s":
        if isinstance(value, str) and not isinstance(value, Ident):
            return value
        raise TextFormatError(f"'{name}' takes a quoted string, not {value!r}", f'write {name}: "{value}"', pos)
    if kind == "b":
        if isinstance(value, bool):
            return value
        if value in (0, 1) and not isinstance(value, Ident):
            return bool(value)
        raise TextFormatError(f"'{name}' takes true or false, not {value!r}", f"write {name}: true", pos)
    if kind in ("i", "f"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TextFormatError(f"'{name}' takes a number, not {value!r}", f"write {name}: NUMBER", pos)
        if kind == "i" and not float(value).is_integer():
            raise TextFormatError(f"'{name}' takes a whole number, not {value}", f"write {name}: {int(value)}", pos)
        return int(value) if kind == "i" else float(value)
    if kind.startswith("e:"):
        numbers = enum_numbers(kind)
        choices = list(numbers)
        if isinstance(value, str) and value in numbers:
            return Ident(value)
        by_number = {n: c for c, n in numbers.items()}
        if isinstance(value, int) and not isinstance(value, bool) and value in by_number:
            return Ident(by_number[value])  # an enum may be written as its number
        raise TextFormatError(f"'{name}' must be one of {', '.join(choices)}, not {value!r}",
                              did_you_mean(str(value), choices), pos)
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
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"no such file: {path}", "check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}", "give a text-format .prototxt") from None
    return parse_text(text, str(path), kind)
