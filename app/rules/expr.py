"""A small, safe filter-expression language over catalog items, compiled once into a `Filter`.

Grammar (keywords are lowercase; `or` < `and` < `not` in precedence)::

    expr       := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" expr ")" | comparison
    comparison := operand [ ("==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "not" "in") operand ]
    operand    := field | literal | "[" [literal ("," literal)*] "]"
    field      := "item_id" | "title" | "categories" | "tags" | "price" | "available" | "published_at"
                | "attributes" "." NAME | "attributes" "[" STRING "]"
    literal    := STRING | NUMBER | "true" | "false" | "null"

Semantics (SQL-like, with "unknown" collapsed to false): a comparison with a missing value, or with a value
of another type, is false; `a != b` is `not (a == b)` and `x not in y` is `not (x in y)`; `x == null` is
true when x is missing; `f in [a, b]` is `f == a or f == b` for a scalar field and "any overlap" for a
multi-valued one (`categories`, `tags`, a list attribute); `v in f` is true when the multi-valued field
holds v. A bare boolean field (`available`, `attributes.x`) is true when its value is true. Numbers are
compared as float64, bools are not numbers. `published_at` compares with an ISO-8601 string (parsed at
compile time; naive means UTC) or a number of epoch seconds. Core fields are typed: comparing one with a
literal of another type is a compile-time error; `attributes.*` are dynamically typed.

The input is never evaluated as Python: a hand-written tokenizer and recursive-descent parser build a
small AST, which `Filter.mask` evaluates with numpy over an `ItemTable` and `Filter.matches` evaluates
row-wise on one `ItemRecord` (the reference semantics).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeAlias

import numpy as np

from app.records import ItemRecord, as_utc
from app.rules.table import (
    CORE_FIELDS,
    K_FALSE,
    K_LIST,
    K_MISSING,
    K_NUMBER,
    K_STRING,
    K_TRUE,
    ItemTable,
    Key,
    as_epoch,
    as_number,
    attr_value,
    element_key,
    multi_values,
)

MAX_LENGTH = 2000
MAX_DEPTH = 32
MAX_COMPARISONS = 64
MAX_LIST = 1000

_FIELD_LIST = ", ".join([*CORE_FIELDS, "attributes.<name>"])
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_KEYWORDS = {"and", "or", "not", "in", "true", "false", "null"}
_OPS = ("==", "!=", "<=", ">=", "<", ">")
_FLIP = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "n": "\n", "t": "\t", "r": "\r", "/": "/", "b": "\b", "f": "\f"}

# Field types
T_STR = "string"
T_NUM = "number"
T_BOOL = "bool"
T_TIME = "datetime"
T_MULTI = "list of strings"
T_DYN = "any"

_CORE_TYPES = {
    "item_id": T_STR,
    "title": T_STR,
    "categories": T_MULTI,
    "tags": T_MULTI,
    "price": T_NUM,
    "available": T_BOOL,
    "published_at": T_TIME,
}


class ExpressionError(ValueError):
    """A filter expression that does not compile; `position` is the 0-based offset of the offending token."""

    def __init__(self, position: int, message: str) -> None:
        super().__init__(f"at position {position}: {message}")
        self.position = position
        self.message = message


# --- tokens -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "name" | "string" | "number" | "op" | "punct" | "end"
    value: Any
    pos: int
    text: str


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
            continue
        if c in "()[],.":
            tokens.append(_Token("punct", c, i, c))
            i += 1
            continue
        if c in "=!<>":
            op = text[i : i + 2] if text[i : i + 2] in _OPS else c
            if op not in _OPS:
                raise ExpressionError(i, f"unexpected character {c!r} (did you mean '{c}='?)")
            tokens.append(_Token("op", op, i, op))
            i += len(op)
            continue
        if c in "\"'":
            value, end = _read_string(text, i)
            tokens.append(_Token("string", value, i, text[i:end]))
            i = end
            continue
        if c.isascii() and (
            c.isdigit() or (c == "-" and i + 1 < n and text[i + 1].isascii() and text[i + 1].isdigit())
        ):
            m = _NUMBER.match(text, i)
            assert m is not None
            end = m.end()
            if end < n and (text[end].isalnum() or text[end] in "_."):
                raise ExpressionError(i, f"malformed number {text[i : end + 1]!r}")
            try:
                number = float(m.group())
            except (OverflowError, ValueError):  # pragma: no cover - float() of a matched literal gives inf
                number = math.inf
            if not math.isfinite(number):
                raise ExpressionError(i, f"number out of range {m.group()[:40]!r}")
            tokens.append(_Token("number", number, i, m.group()))
            i = end
            continue
        m = _NAME.match(text, i)
        if m is not None:
            tokens.append(_Token("name", m.group(), i, m.group()))
            i = m.end()
            continue
        raise ExpressionError(i, f"unexpected character {c!r}")
    tokens.append(_Token("end", None, n, ""))
    return tokens


def _read_string(text: str, start: int) -> tuple[str, int]:
    quote = text[start]
    out: list[str] = []
    i = start + 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == quote:
            return "".join(out), i + 1
        if c != "\\":
            out.append(c)
            i += 1
            continue
        if i + 1 >= n:
            break
        e = text[i + 1]
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
            i += 2
            continue
        if e != "u":
            raise ExpressionError(i, f"unknown escape '\\{e}'")
        code = _hex4(text, i)
        i += 6
        if 0xD800 <= code <= 0xDBFF:
            low = _hex4(text, i) if text.startswith("\\u", i) else -1
            if not 0xDC00 <= low <= 0xDFFF:
                raise ExpressionError(i - 6, "unpaired surrogate in \\u escape")
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
            i += 6
        elif 0xDC00 <= code <= 0xDFFF:
            raise ExpressionError(i - 6, "unpaired surrogate in \\u escape")
        out.append(chr(code))
    raise ExpressionError(start, "unterminated string")


def _hex4(text: str, i: int) -> int:
    digits = text[i + 2 : i + 6]
    if len(digits) != 4 or any(d not in "0123456789abcdefABCDEF" for d in digits):
        raise ExpressionError(i, "bad \\u escape (needs 4 hex digits)")
    return int(digits, 16)


# --- AST ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Field:
    """A field reference: `name` as written canonically, `type` one of the T_* names, `attr` for attributes."""

    name: str
    type: str
    attr: str | None = None


@dataclass(frozen=True, slots=True)
class Const:
    """`true` / `false` as a whole predicate."""

    value: bool


@dataclass(frozen=True, slots=True)
class Truthy:
    """A bare boolean field: true when the value is true."""

    field: Field


@dataclass(frozen=True, slots=True)
class Compare:
    """`field op value`; `value` is a str / float / bool / None (published_at: epoch float); `shown` its text."""

    field: Field
    op: str
    value: Any
    shown: str


@dataclass(frozen=True, slots=True)
class InList:
    """`field [not] in [values]`."""

    field: Field
    values: tuple[Any, ...]
    shown: tuple[str, ...]
    negated: bool


@dataclass(frozen=True, slots=True)
class Contains:
    """`value [not] in field` for a multi-valued field."""

    field: Field
    value: Any
    shown: str
    negated: bool


@dataclass(frozen=True, slots=True)
class Not:
    """`not child`."""

    child: Node


@dataclass(frozen=True, slots=True)
class BoolOp:
    """`a and b and ...` / `a or b or ...`."""

    op: str  # "and" | "or"
    children: tuple[Node, ...]


Node: TypeAlias = Const | Truthy | Compare | InList | Contains | Not | BoolOp


# --- parser -------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Literal:
    value: Any
    token: _Token


@dataclass(slots=True)
class _ListLiteral:
    items: list[_Literal]
    token: _Token


@dataclass(slots=True)
class _FieldRef:
    field: Field
    token: _Token


_Operand = _Literal | _ListLiteral | _FieldRef


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return _quote(str(value))


def _quote(s: str) -> str:
    out = ['"']
    for c in s:
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, float):
        return "number"
    return "string"


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.i = 0
        self.depth = 0
        self.comparisons = 0
        self.fields: set[str] = set()

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def is_name(self, value: str) -> bool:
        t = self.tokens[self.i]
        return t.kind == "name" and t.value == value

    def expect_punct(self, value: str, what: str) -> _Token:
        t = self.tok
        if t.kind != "punct" or t.value != value:
            raise ExpressionError(t.pos, f"expected {what}, got {_describe(t)}")
        self.i += 1
        return t

    def parse(self) -> Node:
        if self.tok.kind == "end":
            raise ExpressionError(0, "empty expression")
        node = self.parse_or()
        if self.tok.kind != "end":
            raise ExpressionError(
                self.tok.pos, f"unexpected {_describe(self.tok)} after a complete expression"
            )
        return node

    def enter(self, t: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExpressionError(t.pos, f"expression nested too deeply (at most {MAX_DEPTH} levels)")

    def parse_or(self) -> Node:
        children = [self.parse_and()]
        while self.is_name("or"):
            self.i += 1
            children.append(self.parse_and())
        return _join("or", children)

    def parse_and(self) -> Node:
        children = [self.parse_not()]
        while self.is_name("and"):
            self.i += 1
            children.append(self.parse_not())
        return _join("and", children)

    def parse_not(self) -> Node:
        t = self.tok
        if self.is_name("not"):
            self.enter(t)
            self.i += 1
            node: Node = Not(self.parse_not())
            self.depth -= 1
            return node
        if t.kind == "punct" and t.value == "(":
            self.enter(t)
            self.i += 1
            node = self.parse_or()
            self.expect_punct(")", "')'")
            self.depth -= 1
            return node
        return self.parse_comparison()

    def count(self, t: _Token) -> None:
        self.comparisons += 1
        if self.comparisons > MAX_COMPARISONS:
            raise ExpressionError(t.pos, f"too many comparisons (at most {MAX_COMPARISONS})")

    def parse_comparison(self) -> Node:
        start = self.tok
        left = self.parse_operand()
        t = self.tok
        if t.kind == "op":
            self.i += 1
            right = self.parse_operand()
            self.count(start)
            return self.build_compare(left, t, right)
        if t.kind == "name" and t.value == "in":
            self.i += 1
            right = self.parse_operand()
            self.count(start)
            return self.build_in(left, t, right, negated=False)
        if (
            t.kind == "name"
            and t.value == "not"
            and self.tokens[self.i + 1].kind == "name"
            and self.tokens[self.i + 1].value == "in"
        ):
            self.i += 2
            right = self.parse_operand()
            self.count(start)
            return self.build_in(left, t, right, negated=True)
        self.count(start)
        if not (
            t.kind == "end"
            or (t.kind == "punct" and t.value == ")")
            or (t.kind == "name" and t.value in ("and", "or"))
        ):
            raise ExpressionError(
                t.pos, f"unexpected {_describe(t)} (expected an operator, 'and', 'or' or ')')"
            )
        if isinstance(left, _FieldRef):
            if left.field.type in (T_BOOL, T_DYN):
                return Truthy(left.field)
            raise ExpressionError(
                start.pos,
                f"field '{left.field.name}' ({left.field.type}) is not a condition; compare it with a value",
            )
        if isinstance(left, _Literal) and isinstance(left.value, bool):
            return Const(left.value)
        raise ExpressionError(start.pos, f"expected a condition, got {_describe(start)}")

    def parse_operand(self) -> _Operand:
        t = self.tok
        if t.kind == "string" or t.kind == "number":
            self.i += 1
            return _Literal(t.value, t)
        if t.kind == "name":
            if t.value in ("true", "false", "null"):
                self.i += 1
                return _Literal({"true": True, "false": False, "null": None}[t.value], t)
            if t.value in _KEYWORDS:
                raise ExpressionError(t.pos, f"expected a field or a value, got keyword '{t.value}'")
            return _FieldRef(self.parse_field(), t)
        if t.kind == "punct" and t.value == "[":
            return self.parse_list()
        if t.kind == "end":
            raise ExpressionError(t.pos, "unexpected end of expression (expected a field or a value)")
        raise ExpressionError(t.pos, f"expected a field or a value, got {_describe(t)}")

    def parse_field(self) -> Field:
        t = self.tok
        self.i += 1
        name = t.value
        if name == "attributes":
            nxt = self.tok
            if nxt.kind == "punct" and nxt.value == ".":
                self.i += 1
                attr_tok = self.tok
                if attr_tok.kind != "name":
                    raise ExpressionError(
                        attr_tok.pos,
                        f"expected an attribute name after 'attributes.', got {_describe(attr_tok)}",
                    )
                self.i += 1
                attr = attr_tok.value
            elif nxt.kind == "punct" and nxt.value == "[":
                self.i += 1
                attr_tok = self.tok
                if attr_tok.kind != "string":
                    raise ExpressionError(
                        attr_tok.pos, f"expected a quoted attribute name, got {_describe(attr_tok)}"
                    )
                self.i += 1
                attr = attr_tok.value
                if not attr:
                    raise ExpressionError(attr_tok.pos, "empty attribute name")
                self.expect_punct("]", "']'")
            else:
                raise ExpressionError(nxt.pos, "expected '.name' or '[\"name\"]' after 'attributes'")
            shown = f"attributes.{attr}" if _NAME.fullmatch(attr) else f"attributes[{_quote(attr)}]"
            self.fields.add(f"attributes.{attr}")
            return Field(shown, T_DYN, attr)
        if name not in _CORE_TYPES:
            raise ExpressionError(t.pos, f"unknown field '{name}' (fields: {_FIELD_LIST})")
        self.fields.add(name)
        return Field(name, _CORE_TYPES[name])

    def parse_list(self) -> _ListLiteral:
        start = self.tok
        self.i += 1
        items: list[_Literal] = []
        if self.tok.kind == "punct" and self.tok.value == "]":
            self.i += 1
            return _ListLiteral(items, start)
        while True:
            t = self.tok
            operand = self.parse_operand() if t.kind != "punct" or t.value != "[" else None
            if not isinstance(operand, _Literal):
                raise ExpressionError(t.pos, f"a list holds only literal values, got {_describe(t)}")
            items.append(operand)
            if len(items) > MAX_LIST:
                raise ExpressionError(t.pos, f"list too long (at most {MAX_LIST} values)")
            t = self.tok
            if t.kind == "punct" and t.value == ",":
                self.i += 1
                continue
            if t.kind == "punct" and t.value == "]":
                self.i += 1
                return _ListLiteral(items, start)
            raise ExpressionError(t.pos, f"expected ',' or ']' in a list, got {_describe(t)}")

    # -- typing

    def literal_for(self, fld: Field, lit: _Literal, op: str) -> tuple[Any, str]:
        """The literal converted for `fld` and its canonical text; ExpressionError when the types clash."""
        v = lit.value
        ordering = op in ("<", "<=", ">", ">=")
        if v is None:
            if ordering or op == "in":
                raise ExpressionError(lit.token.pos, "null can only be compared with '==' or '!='")
            if fld.type == T_MULTI and op not in ("==", "!="):
                raise ExpressionError(lit.token.pos, "null is not a value of a list field")
            return None, "null"
        t = fld.type
        ok = (
            t == T_DYN
            or (t == T_STR and isinstance(v, str))
            or (t == T_NUM and isinstance(v, float))
            or (t == T_BOOL and isinstance(v, bool))
            or (t == T_TIME and isinstance(v, str | float) and not isinstance(v, bool))
            or (t == T_MULTI and isinstance(v, str))
        )
        if not ok:
            raise ExpressionError(
                lit.token.pos,
                f"cannot compare '{fld.name}' ({t}) with a {_type_name(v)} ({lit.token.text[:40]})",
            )
        if ordering and isinstance(v, bool):
            raise ExpressionError(lit.token.pos, f"'{op}' does not apply to a bool")
        if t == T_TIME and isinstance(v, str):
            try:
                ts = as_utc(datetime.fromisoformat(v))
                epoch = ts.timestamp()
            except (ValueError, OverflowError):
                raise ExpressionError(
                    lit.token.pos, f"not an ISO-8601 date/time: {lit.token.text[:60]}"
                ) from None
            return epoch, _quote(ts.isoformat())
        return v, _show(v)

    def build_compare(self, left: _Operand, op_tok: _Token, right: _Operand) -> Node:
        op = op_tok.value
        if isinstance(left, _Literal) and isinstance(right, _FieldRef):
            left, right, op = right, left, _FLIP[op]
        if not isinstance(left, _FieldRef):
            raise ExpressionError(left.token.pos, "a comparison needs a field on one side")
        if isinstance(right, _FieldRef):
            raise ExpressionError(
                right.token.pos, "comparing two fields is not supported; compare with a value"
            )
        if isinstance(right, _ListLiteral):
            raise ExpressionError(right.token.pos, f"cannot use '{op}' with a list (use 'in')")
        fld = left.field
        if fld.type == T_MULTI and not (right.value is None and op in ("==", "!=")):
            raise ExpressionError(
                op_tok.pos,
                f"'{fld.name}' holds several values: use '\"v\" in {fld.name}' or '{fld.name} in [...]'",
            )
        if fld.type == T_BOOL and op not in ("==", "!="):
            raise ExpressionError(op_tok.pos, f"'{op}' does not apply to '{fld.name}' (bool)")
        value, shown = self.literal_for(fld, right, op)
        return Compare(fld, op, value, shown)

    def build_in(self, left: _Operand, in_tok: _Token, right: _Operand, negated: bool) -> Node:
        if isinstance(right, _ListLiteral):
            if not isinstance(left, _FieldRef):
                raise ExpressionError(left.token.pos, "expected a field before 'in [...]'")
            fld = left.field
            values: list[Any] = []
            shown: list[str] = []
            for item in right.items:
                if fld.type == T_MULTI and item.value is None:
                    raise ExpressionError(item.token.pos, "null is not a value of a list field")
                if fld.type == T_DYN and item.value is None:
                    values.append(None)
                    shown.append("null")
                    continue
                v, s = self.literal_for(fld, item, "==")
                values.append(v)
                shown.append(s)
            return InList(fld, tuple(values), tuple(shown), negated)
        if isinstance(right, _FieldRef):
            fld = right.field
            if not isinstance(left, _Literal):
                raise ExpressionError(left.token.pos, "expected a value before 'in <field>'")
            if fld.type not in (T_MULTI, T_DYN):
                raise ExpressionError(
                    right.token.pos,
                    f"'{fld.name}' ({fld.type}) holds one value: use '==' or '{fld.name} in [...]'",
                )
            if left.value is None and fld.type == T_MULTI:
                raise ExpressionError(left.token.pos, "null is not a value of a list field")
            if fld.type == T_MULTI:
                v, s = self.literal_for(fld, left, "==")
            else:
                v, s = left.value, _show(left.value)
            return Contains(fld, v, s, negated)
        raise ExpressionError(right.token.pos, "expected a field or a list after 'in'")


def _join(op: str, children: list[Node]) -> Node:
    """`children` joined by `op`, flattening nested joins of the same op (`a and (b and c)`)."""
    if len(children) == 1:
        return children[0]
    flat: list[Node] = []
    for child in children:
        flat.extend(child.children if isinstance(child, BoolOp) and child.op == op else (child,))
    return BoolOp(op, tuple(flat))


def _describe(t: _Token) -> str:
    if t.kind == "end":
        return "end of expression"
    if t.kind == "name" and t.value in _KEYWORDS:
        return f"keyword '{t.value}'"
    return f"'{t.text[:40]}'"


# --- canonical text -----------------------------------------------------------------------------------


def _canonical(node: Node) -> str:
    if isinstance(node, Const):
        return "true" if node.value else "false"
    if isinstance(node, Truthy):
        return node.field.name
    if isinstance(node, Compare):
        return f"{node.field.name} {node.op} {node.shown}"
    if isinstance(node, InList):
        return f"{node.field.name} {'not in' if node.negated else 'in'} [{', '.join(node.shown)}]"
    if isinstance(node, Contains):
        return f"{node.shown} {'not in' if node.negated else 'in'} {node.field.name}"
    if isinstance(node, Not):
        inner = _canonical(node.child)
        return f"not {inner}" if isinstance(node.child, Const | Truthy | Not) else f"not ({inner})"
    parts = []
    for child in node.children:
        s = _canonical(child)
        parts.append(f"({s})" if isinstance(child, BoolOp) else s)
    return f" {node.op} ".join(parts)


# --- row-wise reference evaluation --------------------------------------------------------------------

_MISSING: tuple[int, Any] = (K_MISSING, None)


def _row_value(rec: ItemRecord | None, fld: Field) -> tuple[int, Any]:
    """The field's value as (kind, payload) with the table's kind codes; lists as tuples of keys."""
    if rec is None:
        return _MISSING
    if fld.attr is not None:
        attributes = rec.attributes if isinstance(rec.attributes, dict) else {}
        return attr_value(attributes.get(fld.attr))
    name = fld.name
    if name in ("categories", "tags"):
        vals = multi_values(getattr(rec, name))
        return (K_LIST, tuple(("s", v) for v in vals)) if vals else _MISSING
    if name == "price":
        p = as_number(rec.price)
        return _MISSING if p is None else (K_NUMBER, p)
    if name == "published_at":
        t = as_epoch(rec.published_at)
        return _MISSING if t is None else (K_NUMBER, t)
    if name == "available":
        return (K_TRUE, None) if rec.available else (K_FALSE, None)
    v = getattr(rec, name)
    return (K_STRING, v) if isinstance(v, str) else _MISSING


def _scalar_equal(kind: int, payload: Any, lit: Any) -> bool:
    if lit is None:
        return kind == K_MISSING
    if isinstance(lit, bool):
        return kind == (K_TRUE if lit else K_FALSE)
    if isinstance(lit, float):
        return kind == K_NUMBER and payload == lit
    return kind == K_STRING and payload == lit


def _order(a: Any, op: str, b: Any) -> bool:
    if op == "<":
        return bool(a < b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    return bool(a >= b)


def _lit_key(lit: Any) -> Key:
    key = element_key(lit)
    assert key is not None  # literals are scalars
    return key


def _eval_row(node: Node, rec: ItemRecord | None) -> bool:
    if isinstance(node, Const):
        return node.value
    if isinstance(node, BoolOp):
        if node.op == "and":
            return all(_eval_row(c, rec) for c in node.children)
        return any(_eval_row(c, rec) for c in node.children)
    if isinstance(node, Not):
        return not _eval_row(node.child, rec)
    kind, payload = _row_value(rec, node.field)
    if isinstance(node, Truthy):
        return kind == K_TRUE
    if isinstance(node, Compare):
        if node.op in ("==", "!="):
            eq = _scalar_equal(kind, payload, node.value)
            return eq if node.op == "==" else not eq
        lit = node.value
        if isinstance(lit, float):
            return kind == K_NUMBER and _order(payload, node.op, lit)
        return kind == K_STRING and _order(payload, node.op, lit)
    if isinstance(node, InList):
        if kind == K_LIST:
            keys = {_lit_key(v) for v in node.values}
            hit = any(k in keys for k in payload)
        else:
            hit = any(_scalar_equal(kind, payload, v) for v in node.values)
        return hit != node.negated
    # Contains
    hit = kind == K_LIST and _lit_key(node.value) in payload
    return hit != node.negated


# --- vectorised evaluation ----------------------------------------------------------------------------


def _rows_mask(n: int, rows: Iterable[np.ndarray]) -> np.ndarray:
    out = np.zeros(n, dtype=bool)  # [n_rows]
    for r in rows:
        out[r] = True
    return out


def _string_cmp(table: ItemTable, codes: np.ndarray, op: str, lit: str) -> np.ndarray:
    """Ordering of a dictionary-coded string column against `lit`. # [n_rows] bool"""
    values = table.pool.as_array()  # [len(pool)] object
    if len(values) == 0:
        return np.zeros(len(codes), dtype=bool)
    lut = np.asarray(
        {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}[op](values, lit),
        dtype=bool,
    )  # [len(pool)]
    present = codes >= 0
    return present & lut[np.where(present, codes, 0)]


def _codes_equal(table: ItemTable, codes: np.ndarray | None, lits: list[str]) -> np.ndarray:
    """Rows whose code is one of the codes of `lits`. # [n_rows] bool"""
    n = table.n_rows
    if codes is None:
        return np.zeros(n, dtype=bool)
    found = [c for c in (table.pool.code(s) for s in lits) if c is not None]
    if not found:
        return np.zeros(n, dtype=bool)
    if len(found) == 1:
        return np.asarray(codes == found[0])
    return np.isin(codes, np.asarray(found, dtype=np.int32))


def _mask(node: Node, table: ItemTable) -> np.ndarray:
    n = table.n_rows
    if isinstance(node, Const):
        return np.full(n, node.value, dtype=bool)
    if isinstance(node, BoolOp):
        out = _mask(node.children[0], table)  # every node answers a fresh array
        for child in node.children[1:]:
            if node.op == "and":
                out &= _mask(child, table)
            else:
                out |= _mask(child, table)
        return out
    if isinstance(node, Not):
        return ~_mask(node.child, table)
    fld = node.field
    if fld.attr is not None:
        return _mask_attr(node, table, fld.attr)
    return _mask_core(node, table, fld)


def _mask_core(node: Node, table: ItemTable, fld: Field) -> np.ndarray:
    n = table.n_rows
    name = fld.name
    if isinstance(node, Truthy):  # available
        return np.asarray(table.column("available") == 1)
    if fld.type == T_MULTI:
        index = table.index(name)
        if isinstance(node, Compare):  # == null / != null
            empty = np.asarray(table.count(name) == 0)
            return empty if node.op == "==" else ~empty
        if isinstance(node, Contains):
            hit = _rows_mask(n, [index[node.value]] if node.value in index else [])
        else:
            assert isinstance(node, InList)
            hit = _rows_mask(n, [index[v] for v in set(node.values) if v in index])
        return ~hit if node.negated else hit
    if isinstance(node, Compare):
        eq = node.op in ("==", "!=")
        if node.value is None:
            hit = _missing_core(table, fld)
        elif fld.type == T_STR:
            codes = table.column(name)
            hit = (
                _codes_equal(table, codes, [node.value])
                if eq
                else _string_cmp(table, codes, node.op, node.value)
            )
        elif fld.type == T_BOOL:
            hit = np.asarray(table.column(name) == (1 if node.value else 0))
        else:
            hit = _float_cmp(table.column(name), "==" if eq else node.op, node.value)
        return ~hit if node.op == "!=" else hit
    assert isinstance(node, InList)
    parts: list[np.ndarray] = []
    if any(v is None for v in node.values):
        parts.append(_missing_core(table, fld))
    lits = [v for v in node.values if v is not None]
    if lits:
        col = table.column(name)
        if fld.type == T_STR:
            parts.append(_codes_equal(table, col, lits))
        elif fld.type == T_BOOL:
            parts.append(np.isin(col, np.asarray([1 if v else 0 for v in lits], dtype=np.int8)))
        else:
            parts.append(np.isin(col, np.asarray(lits, dtype=np.float64)))
    hit = functools.reduce(np.logical_or, parts, np.zeros(n, dtype=bool))
    return ~hit if node.negated else hit


def _missing_core(table: ItemTable, fld: Field) -> np.ndarray:
    col = table.column(fld.name)
    if fld.type == T_STR or fld.type == T_BOOL:
        return np.asarray(col == -1)
    return np.isnan(col)


def _float_cmp(col: np.ndarray, op: str, value: float) -> np.ndarray:
    fn: Callable[[np.ndarray, float], np.ndarray] = {
        "==": np.equal,
        "<": np.less,
        "<=": np.less_equal,
        ">": np.greater,
        ">=": np.greater_equal,
    }[op]
    return np.asarray(fn(col, value))  # NaN compares false


def _mask_attr(node: Node, table: ItemTable, attr: str) -> np.ndarray:
    n = table.n_rows
    ac = table.attribute(attr)
    negated = (isinstance(node, InList | Contains) and node.negated) or (
        isinstance(node, Compare) and node.op == "!="
    )
    if ac is None:
        hit = np.zeros(n, dtype=bool)
        if (isinstance(node, Compare) and node.value is None) or (
            isinstance(node, InList) and any(v is None for v in node.values)
        ):
            hit = np.ones(n, dtype=bool)
        return ~hit if negated else hit
    if isinstance(node, Truthy):
        return np.asarray(ac.kind == K_TRUE)
    if isinstance(node, Contains):
        key = _lit_key(node.value)
        hit = _rows_mask(n, [ac.lists[key]] if key in ac.lists else [])
        return ~hit if negated else hit
    if isinstance(node, Compare):
        if node.op in ("==", "!="):
            hit = _attr_equal(table, ac, [node.value])
        elif isinstance(node.value, float):
            hit = _float_cmp(ac.num, node.op, node.value) if ac.num is not None else np.zeros(n, dtype=bool)
        else:
            hit = (
                _string_cmp(table, ac.text, node.op, node.value)
                if ac.text is not None
                else np.zeros(n, dtype=bool)
            )
        return ~hit if negated else hit
    assert isinstance(node, InList)
    hit = _attr_equal(table, ac, list(node.values))
    keys = {_lit_key(v) for v in node.values}
    rows = [ac.lists[k] for k in keys if k in ac.lists]
    if rows:
        hit |= _rows_mask(n, rows)
    return ~hit if negated else hit


def _attr_equal(table: ItemTable, ac: Any, lits: list[Any]) -> np.ndarray:
    """Rows whose scalar attribute value equals one of `lits` (None: missing). # [n_rows] bool"""
    n = table.n_rows
    out = np.zeros(n, dtype=bool)
    strs = [v for v in lits if isinstance(v, str)]
    nums = [v for v in lits if isinstance(v, float)]
    if strs:
        out |= _codes_equal(table, ac.text, strs)
    if nums and ac.num is not None:
        out |= np.asarray(ac.num == nums[0]) if len(nums) == 1 else np.isin(ac.num, np.asarray(nums))
    if any(v is True for v in lits):
        out |= ac.kind == K_TRUE
    if any(v is False for v in lits):
        out |= ac.kind == K_FALSE
    if any(v is None for v in lits):
        out |= ac.kind == K_MISSING
    return out


# --- public API ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filter:
    """A compiled filter expression: `mask` evaluates it over an `ItemTable`, `matches` over one record."""

    text: str
    canonical: str
    fields: frozenset[str]
    node: Node = field(repr=False)
    matches_empty: bool = field(default=False)

    def mask(self, table: ItemTable) -> np.ndarray:
        """Which rows of `table` the filter keeps. # [table.n_rows] bool"""
        out = _mask(self.node, table)
        return out if out.flags.writeable else out.copy()

    def matches(self, record: ItemRecord) -> bool:
        """The reference, row-wise evaluation on one record."""
        return _eval_row(self.node, record)


def _check_limits(text: str) -> None:
    if not isinstance(text, str):
        raise ExpressionError(0, "an expression must be a string")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(
            MAX_LENGTH, f"expression too long ({len(text)} characters, at most {MAX_LENGTH})"
        )


@functools.lru_cache(maxsize=1024)
def compile_filter(text: str) -> Filter:
    """Parse and type-check `text` into a `Filter`; ExpressionError (with a position) when it does not compile."""
    _check_limits(text)
    parser = _Parser(text)
    node = parser.parse()
    return Filter(
        text=text,
        canonical=_canonical(node),
        fields=frozenset(parser.fields),
        node=node,
        matches_empty=_eval_row(node, None),
    )
