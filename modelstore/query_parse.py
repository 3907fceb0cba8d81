"""Query language, part 1: the grammar (lark), the syntax tree and the parser.

Semantics are specified in docs/QUERY.md; modelstore.query compiles trees to SQL and
modelstore.query_eval evaluates them in Python (the oracle in property tests).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from decimal import Decimal

from lark import Lark, Token, Tree
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
)

from modelstore.catalog_values import BUILTINS, parse_time, scaled
from modelstore.errors import InvalidInputError

GRAMMAR = r"""
start: [expr] [order] [limit]

?expr: and_expr (_OR and_expr)*
?and_expr: not_expr (_AND not_expr)*
?not_expr: _NOT not_expr                -> not_
         | atom
?atom: "(" expr ")"
     | key OP value                     -> compare
     | key _IN list                     -> in_
     | key _NOT _IN list                -> not_in
     | _HAS "(" key ")"                 -> has
list: "[" [value ("," value)*] "]"
?value: NUMBER | STRING | DATE | TRUE | FALSE
key: (NAME | QUOTED_KEY) ["@" DATASET]
order: _ORDER _BY key [DIRECTION]
limit: _LIMIT INT

OP: "<=" | ">=" | "!=" | "=" | "<" | ">" | "~"
_AND.2: /and(?![A-Za-z0-9_.\-])/i
_OR.2: /or(?![A-Za-z0-9_.\-])/i
_NOT.2: /not(?![A-Za-z0-9_.\-])/i
_IN.2: /in(?![A-Za-z0-9_.\-])/i
_HAS.2: /has(?![A-Za-z0-9_.\-])/i
_ORDER.2: /order(?![A-Za-z0-9_.\-])/i
_BY.2: /by(?![A-Za-z0-9_.\-])/i
_LIMIT.2: /limit(?![A-Za-z0-9_.\-])/i
DIRECTION.2: /(asc|desc)(?![A-Za-z0-9_.\-])/i
TRUE.2: /true(?![A-Za-z0-9_.\-])/i
FALSE.2: /false(?![A-Za-z0-9_.\-])/i
DATE.3: /[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?/
NUMBER: /[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?[A-Za-z%]*/
INT: /[0-9]+/
STRING: /"([^"\\]|\\.)*"|'([^'\\]|\\.)*'/s
QUOTED_KEY: /`[^`]*`/
NAME: /[A-Za-z_][A-Za-z0-9_.\-]*/
DATASET: /[A-Za-z0-9][A-Za-z0-9_.\/\-]*/

%import common.WS
%ignore WS
"""

MAX_QUERY = 16_384
MAX_DEPTH = 50
MAX_LIMIT = 10**9

# Units (docs/QUERY.md "Units"): the literal is multiplied into the unit the catalog stores.
UNITS: dict[str, Decimal] = {"": Decimal(1), "%": Decimal("0.01")}
for _names, _factor in (
    (("KB", "kB", "kb"), "1e3"), (("MB", "mb"), "1e6"), (("GB", "gb"), "1e9"), (("TB", "tb"), "1e12"),
    (("KiB", "kib"), 2**10), (("MiB", "mib"), 2**20), (("GiB", "gib"), 2**30), (("TiB", "tib"), 2**40),
    (("K", "k"), "1e3"), (("M",), "1e6"), (("B",), "1e9"), (("T",), "1e12"),
    (("Hz", "hz"), "1e-9"), (("kHz", "KHz", "khz"), "1e-6"), (("MHz", "mhz"), "1e-3"), (("GHz", "ghz"), "1"),
    (("us",), "1e-3"), (("ms",), "1"), (("s",), "1e3"), (("min",), "6e4"), (("h",), "3.6e6"),
):
    for _n in _names:
        UNITS[_n] = Decimal(_factor)

_NUMBER = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)([A-Za-z%]*)$")
_REF = re.compile(r"^(.+)@(0|[1-9][0-9]*)$")
_SEPARATORS = ("-", "_", ".", "/")
_SEP_SQL = "(" + ",".join(f"'{c}'" for c in _SEPARATORS) + ")"  # constants, not user input

# Built-in attributes: query name -> (type, SQL over `versions v`, or None when special).
_BUILTIN = {
    "params": ("num", "v.params"), "size": ("num", "v.size"), "stored": ("num", "v.stored"),
    "tensors": ("num", "v.n_tensors"), "version": ("num", "v.number"), "dtype": ("str", "v.dtype"),
    "format": ("str", "v.format"), "author": ("str", "v.author"), "message": ("str", "v.message"),
    "content_id": ("str", "v.content_id"), "model": ("str", None), "created": ("time", None),
    "parent": ("str", None), "tag": ("str", None),
}
assert set(_BUILTIN) == set(BUILTINS)
_MULTI = ("parent", "tag")
_OPS = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


# -- syntax tree -------------------------------------------------------------------------
@dataclass(frozen=True)
class Lit:
    """A literal: type 'num' (float, units applied), 'str', 'bool' or 'time' (epoch seconds)."""

    type: str
    value: object
    text: str = field(default="", compare=False)


@dataclass(frozen=True)
class Key:
    """A key: a built-in attribute, a metric on one dataset (`name@dataset`), or a bare name
    (the user attribute and/or the metric of that name, see docs/QUERY.md)."""

    name: str
    dataset: str | None = None
    builtin: bool = False
    text: str = field(default="", compare=False)

    @property
    def kind(self) -> str:
        return "builtin" if self.builtin else ("metric" if self.dataset is not None else "bare")


@dataclass(frozen=True)
class Cmp:
    key: Key
    op: str  # = != < <= > >= ~
    lit: Lit


@dataclass(frozen=True)
class In:
    key: Key
    lits: tuple[Lit, ...]


@dataclass(frozen=True)
class Has:
    key: Key


@dataclass(frozen=True)
class And:
    items: tuple


@dataclass(frozen=True)
class Or:
    items: tuple


@dataclass(frozen=True)
class Not:
    item: object


@dataclass(frozen=True)
class All:
    """The empty condition: every version."""


@dataclass(frozen=True)
class Query:
    where: object
    order: Key | None = None
    desc: bool = False
    limit: int | None = None
    family: tuple[str, ...] | None = None  # datasets a bare metric name ranges over (None: any)
    columns: tuple[str, ...] = ()  # keys as written, in order of appearance (the table's columns)
    keys: tuple[Key, ...] = ()
    text: str = ""


# -- parsing -----------------------------------------------------------------------------
RESERVED = frozenset({"and", "or", "not", "in", "has", "order", "by", "limit", "asc", "desc", "true", "false"})


class _ReservedWord(Exception):
    def __init__(self, token: Token):
        self.token = token


def _no_reserved_names(tok: Token) -> Token:
    # The contextual lexer would read a keyword where only a key fits as a key named like it;
    # refuse that at once so `a = 1 and and b = 2` fails at the second `and`.
    if tok.value.lower() in RESERVED:
        raise _ReservedWord(tok)
    return tok


_parser = Lark(GRAMMAR, parser="lalr", lexer="contextual", maybe_placeholders=True, propagate_positions=True,
               lexer_callbacks={"NAME": _no_reserved_names})

_EXPECTED = {
    "NAME": "a key", "QUOTED_KEY": "a key", "NUMBER": "a number", "STRING": "a string", "DATE": "a date",
    "TRUE": "true", "FALSE": "false", "OP": "a comparison (= != < <= > >= ~)", "_IN": "'in'", "_NOT": "'not'",
    "_AND": "'and'", "_OR": "'or'", "_HAS": "has(KEY)", "_ORDER": "'order by'", "_BY": "'by'",
    "_LIMIT": "'limit'", "INT": "a whole number", "DIRECTION": "asc or desc", "DATASET": "a dataset name",
    "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'", "COMMA": "','", "AT": "'@'",
    "$END": "the end of the query",
}


def _where(text: str, line: int | None, column: int | None) -> str:
    if not line or not column or column < 1:
        lines = text.split("\n")
        line, column = len(lines), len(lines[-1]) + 1
    return f"at column {column}" if "\n" not in text else f"at line {line}, column {column}"


def _error(text: str, line, column, what: str) -> InvalidInputError:
    return InvalidInputError(f"query error {_where(text, line, column)}: {what}")


def _tok_error(text: str, tok: Token, what: str) -> InvalidInputError:
    return _error(text, tok.line, tok.column, what)


def _show(s: str) -> str:
    s = s if len(s) <= 40 else s[:37] + "..."
    return repr(s)


def _describe_expected(expected) -> str:
    names = sorted({_EXPECTED.get(e, e.lower()) for e in expected})
    if not names:
        return ""
    if len(names) > 6:
        names = names[:6] + ["..."]
    return " (expected " + ", ".join(names) + ")"


def parse(text: str) -> Query:
    """Parse a query; InvalidInputError names the column of the first mistake."""
    if not isinstance(text, str):
        raise InvalidInputError("a query is text")
    if len(text) > MAX_QUERY:
        raise InvalidInputError(f"query error: the query is {len(text)} characters long (at most {MAX_QUERY})")
    if "\x00" in text:
        i = text.index("\x00")
        raise _error(text, text.count("\n", 0, i) + 1, i - text.rfind("\n", 0, i), "NUL character in the query")
    try:
        tree = _parser.parse(text)
    except _ReservedWord as e:
        tok = e.token
        raise _tok_error(text, tok, f"unexpected {_show(str(tok))} (a reserved word; a key of that name is "
                                    f"written in backticks: `{tok}`)") from None
    except UnexpectedCharacters as e:
        ch = text[e.pos_in_stream] if e.pos_in_stream is not None and e.pos_in_stream < len(text) else ""
        hint = " (strings need double quotes)" if ch.isalpha() or ch in "'\"" else ""
        raise _error(text, e.line, e.column, f"unexpected character {_show(ch)}{hint}") from None
    except UnexpectedToken as e:
        tok = e.token
        if tok.type == "$END":
            raise _error(text, None, None, "unexpected end of query" + _describe_expected(e.expected)) from None
        hint = ""
        if tok.type in ("NAME", "DATASET") and "STRING" in e.expected:
            hint = f"; put text in double quotes: \"{str(tok)[:40]}\""
        raise _error(text, tok.line, tok.column,
                     f"unexpected {_show(str(tok))}" + _describe_expected(e.expected) + hint) from None
    except UnexpectedEOF as e:
        raise _error(text, None, None, "unexpected end of query" + _describe_expected(e.expected)) from None
    except UnexpectedInput as e:  # pragma: no cover - other lark input errors
        raise _error(text, getattr(e, "line", None), getattr(e, "column", None), str(e).splitlines()[0]) from None
    except RecursionError:  # pragma: no cover
        raise InvalidInputError("query error: the query nests too deeply") from None
    return _Builder(text).build(tree)


class _Builder:
    def __init__(self, text: str):
        self.text = text
        self.keys: list[Key] = []

    def build(self, tree: Tree) -> Query:
        self._check_depth(tree)
        expr, order, limit = tree.children
        where = self.node(expr) if expr is not None else All()
        okey, desc, lim = None, False, None
        if order is not None:
            okey = self.key(order.children[0])
            if okey.builtin and okey.name in _MULTI:
                raise self.err(order.children[0], f"cannot order by {okey.name} (a version may have several)")
            desc = order.children[1] is not None and str(order.children[1]).lower() == "desc"
        if limit is not None:
            tok = limit.children[0]
            lim = int(str(tok))
            if lim > MAX_LIMIT:
                raise _tok_error(self.text, tok, f"limit {_show(str(tok))} is too large (at most {MAX_LIMIT})")
        columns = tuple(dict.fromkeys(k.text for k in self.keys))
        keys = tuple({k.text: k for k in reversed(self.keys)}[c] for c in columns)
        return Query(where=where, order=okey, desc=desc, limit=lim, family=family_of(where), columns=columns,
                     keys=keys, text=self.text)

    def _check_depth(self, tree: Tree) -> None:
        stack = [(tree, 0)]
        while stack:
            t, d = stack.pop()
            if d > MAX_DEPTH:
                meta = t.meta if isinstance(t, Tree) else None
                raise _error(self.text, getattr(meta, "line", None), getattr(meta, "column", None),
                             f"the query nests too deeply (more than {MAX_DEPTH} levels)")
            if isinstance(t, Tree):
                stack.extend((c, d + 1) for c in t.children if isinstance(c, Tree))

    def err(self, node, what: str) -> InvalidInputError:
        if isinstance(node, Token):
            return _tok_error(self.text, node, what)
        meta = getattr(node, "meta", None)
        return _error(self.text, getattr(meta, "line", None), getattr(meta, "column", None), what)

    def node(self, t):
        kind = t.data
        if kind == "expr":
            return Or(tuple(self.node(c) for c in t.children))
        if kind == "and_expr":
            return And(tuple(self.node(c) for c in t.children))
        if kind == "not_":
            return Not(self.node(t.children[0]))
        if kind == "has":
            return Has(self.key(t.children[0]))
        if kind == "compare":
            keytree, optok, valtok = t.children
            key = self.key(keytree)
            op = str(optok)
            lit = self.lit(valtok)
            return self.check(Cmp(key, op, lit), optok, valtok)
        if kind in ("in_", "not_in"):
            keytree, lst = t.children
            key = self.key(keytree)
            lits = []
            for v in lst.children:
                if v is None:
                    continue
                lit = self.lit(v)
                self.check(Cmp(key, "=", lit), v, v)
                lits.append(lit)
            node = In(key, tuple(dict.fromkeys(lits)))
            return Not(node) if kind == "not_in" else node
        raise InternalQueryError(kind)  # pragma: no cover

    def key(self, t: Tree) -> Key:
        nametok, dstok = t.children
        raw = str(nametok)
        quoted = nametok.type == "QUOTED_KEY"
        name = raw[1:-1] if quoted else raw
        if quoted and (not name or len(name) > 200):
            raise _tok_error(self.text, nametok, "a quoted key needs 1 to 200 characters between backticks")
        text = raw + (f"@{dstok}" if dstok is not None else "")
        if dstok is not None:
            key = Key(name, str(dstok), False, text)
        elif not quoted and name in _BUILTIN:
            key = Key(name, None, True, text)
        else:
            key = Key(name, None, False, text)
        self.keys.append(key)
        return key

    def lit(self, tok: Token) -> Lit:
        s = str(tok)
        if tok.type == "STRING":
            return Lit("str", self.unescape(tok), s)
        if tok.type in ("TRUE", "FALSE"):
            return Lit("bool", tok.type == "TRUE", s)
        if tok.type == "DATE":
            dt = parse_time(s)
            if dt is None:
                raise _tok_error(self.text, tok, f"{_show(s)} is not a valid date or time")
            return Lit("time", dt.timestamp(), s)
        m = _NUMBER.match(s)
        if not m:  # pragma: no cover - the grammar only lets numbers through
            raise _tok_error(self.text, tok, f"{_show(s)} is not a number")
        num, unit = m.groups()
        if unit not in UNITS:
            known = "% KB MB GB TB KiB MiB GiB TiB K M B T Hz kHz MHz GHz us ms s min h"
            raise _tok_error(self.text, tok, f"unknown unit {_show(unit)} in {_show(s)} (known: {known})")
        try:
            value = scaled(num, UNITS[unit])
        except InvalidInputError:
            raise _tok_error(self.text, tok, f"{_show(s)} is not a number") from None
        if not math.isfinite(value):
            raise _tok_error(self.text, tok, f"{_show(s)} is out of range")
        return Lit("num", value, s)

    def unescape(self, tok: Token) -> str:
        raw = str(tok)[1:-1]
        out = []
        i = 0
        while i < len(raw):
            c = raw[i]
            if c == "\\":
                nxt = raw[i + 1]
                if nxt in "\\\"'":
                    out.append(nxt)
                elif nxt == "n":
                    out.append("\n")
                elif nxt == "t":
                    out.append("\t")
                else:
                    raise _error(self.text, tok.line, tok.column + 1 + i,
                                 f"unknown escape {_show(c + nxt)} in a string (use \\\\ \\\" \\' \\n \\t)")
                i += 2
            else:
                out.append(c)
                i += 1
        s = "".join(out)
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise _tok_error(self.text, tok, "a string holds characters that are not valid UTF-8") from None
        return s

    def check(self, node: Cmp, optok, valtok) -> Cmp:
        key, op, lit = node.key, node.op, node.lit
        if op == "~" and lit.type != "str":
            raise self.err(valtok, "~ matches a quoted pattern, e.g. model ~ \"yolo*\"")
        if key.builtin:
            want = _BUILTIN[key.name][0]
            if want == "time":
                if lit.type == "str" and op != "~":
                    dt = parse_time(lit.value)
                    if dt is None:
                        raise self.err(valtok, f"created is a time; {_show(lit.text)} is not a date or time")
                    return Cmp(key, op, Lit("time", dt.timestamp(), lit.text))
                if lit.type != "time" or op == "~":
                    raise self.err(valtok, "created is a time; compare it with a date such as 2026-01-31")
            elif want != lit.type:
                article = {"num": "a number", "str": "a string"}[want]
                example = "100MB or 7B" if want == "num" else '"..."'
                raise self.err(valtok, f"{key.name} is {article}; compare it with {article} (e.g. {example})")
        elif key.dataset is not None and lit.type != "num":
            raise self.err(valtok, f"metric values are numbers; {key.text} cannot be compared with {_show(lit.text)}")
        return node


class InternalQueryError(Exception):
    pass


def conjuncts(node) -> list:
    """The top-level `and` terms of a condition."""
    if isinstance(node, And):
        out = []
        for item in node.items:
            out.extend(conjuncts(item))
        return out
    if isinstance(node, All):
        return []
    return [node]


def family_of(where) -> tuple[str, ...] | None:
    """The dataset rule: string values of top-level `dataset = S` / `dataset in [...]` terms."""
    vals: list[str] = []
    for c in conjuncts(where):
        if isinstance(c, Cmp) and c.op == "=":
            key, lits = c.key, (c.lit,)
        elif isinstance(c, In):
            key, lits = c.key, c.lits
        else:
            continue
        if key.kind == "bare" and key.name == "dataset":
            vals.extend(lit.value for lit in lits if lit.type == "str")
    return tuple(dict.fromkeys(vals)) if vals else None
