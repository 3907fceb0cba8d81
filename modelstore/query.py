"""The query language: grammar (lark), syntax tree, SQL compiler and planner, pure-Python evaluator.

    task = "object-detection" and dataset = "imagenet" and accuracy > 90%
        and size < 100MB and cpu_ghz <= 1 order by accuracy desc limit 10

`parse` turns text into a `Query` (a small syntax tree; errors name the column). `run` compiles
the tree to parameterized SQL over the catalog and executes it; `evaluate` computes the same
answer in plain Python from rows loaded with `load_rows` (the property tests hold the two to
each other). docs/QUERY.md is the user-facing reference: grammar, units, typing and the rule
for bare metric names.

How a query runs (the planner; every plan returns exactly the same rows, only faster):
every user key and metric comparison is an EXISTS probe by primary key, so the whole predicate
can be checked for one version in a few microseconds. The question is which versions to check:

1. a *driver*: the top-level `and` term with the fewest matches (counted up to a cap, through
   its index: attrs (key, text) / (key, num), metrics (name, value, version, dataset),
   versions (size) / (params) / (created) / (model_id), tags, lineage);
2. with `limit` and no small driver, a *stream*: walk the index of the `order by` key (or the
   version ids) in order, check each version, stop after `limit` matches or a budget;
3. with several large equality terms, their index runs (sorted by version id) merged by
   INTERSECT;
4. else every version (a scan).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from modelstore.catalog import BUILTINS, VersionInfo, parse_time, scaled
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
        if value != value or value in (float("inf"), float("-inf")):
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


def in_family(dataset: str, family: tuple[str, ...] | None) -> bool:
    if family is None:
        return True
    for s in family:
        if dataset == s or (dataset.startswith(s) and len(dataset) > len(s) and dataset[len(s)] in _SEPARATORS):
            return True
    return False


def glob_match(pattern: str, text: str) -> bool:
    """`*` any run of characters, `?` one character, everything else literal (whole text).

    The greedy algorithm with one backtrack point: O(len(pattern) x len(text)) at worst, so a
    hostile pattern cannot blow up (a regex translation would backtrack exponentially)."""
    i = j = 0
    star, mark = -1, 0
    n, m = len(pattern), len(text)
    while j < m:
        if i < n and (pattern[i] == "?" or (pattern[i] != "*" and pattern[i] == text[j])):
            i += 1
            j += 1
        elif i < n and pattern[i] == "*":
            star, mark = i, j
            i += 1
        elif star >= 0:
            i = star + 1
            mark += 1
            j = mark
        else:
            return False
    while i < n and pattern[i] == "*":
        i += 1
    return i == n


def sql_glob(pattern: str) -> str:
    """The SQLite GLOB pattern with the same meaning (only * and ? are wildcards)."""
    return pattern.replace("[", "[[]")


def _glob_prefix(pattern: str) -> str:
    cut = len(pattern)
    for i, c in enumerate(pattern):
        if c in "*?":
            cut = i
            break
    return pattern[:cut]


def _upper(prefix: str) -> str | None:
    """The least string greater than every string starting with `prefix` (None if unbounded)."""
    while prefix:
        c = ord(prefix[-1])
        if c < 0x10FFFF:
            nxt = c + 1
            if 0xD800 <= nxt <= 0xDFFF:
                nxt = 0xE000
            return prefix[:-1] + chr(nxt)
        prefix = prefix[:-1]
    return None


# -- the pure-Python evaluator -----------------------------------------------------------
@dataclass
class Row:
    """Everything a query can look at for one version."""

    id: int
    builtins: dict  # query name -> value (created as its canonical ISO text)
    attrs: dict  # key -> (type, num, text)
    metrics: dict  # name -> {dataset: value}
    parents: list
    tags: list


def load_rows(catalog) -> list[Row]:
    """Every version's row (for the evaluator and tests; reads the whole catalog)."""
    db = catalog.db
    rows: dict[int, Row] = {}
    for (vid, model, number, cid, msg, author, created, fmt, size, stored, params, nt, dtype) in db.execute(
            "SELECT v.id, m.name, v.number, v.content_id, v.message, v.author, v.created, v.format, v.size, v.stored,"
            " v.params, v.n_tensors, v.dtype FROM versions v JOIN models m ON m.id = v.model_id ORDER BY v.id"):
        rows[vid] = Row(vid, {"model": model, "version": number, "content_id": cid, "message": msg, "author": author,
                              "created": created, "format": fmt, "size": size, "stored": stored, "params": params,
                              "tensors": nt, "dtype": dtype}, {}, {}, [], [])
    for vid, key, ty, num, text in db.execute(
            "SELECT a.version_id, k.name, a.type, a.num, a.text FROM attrs a JOIN attr_keys k ON k.id = a.key_id"):
        rows[vid].attrs[key] = (ty, num, text)
    for vid, name, ds, value in db.execute(
            "SELECT m.version_id, n.name, d.name, m.value FROM metrics m JOIN metric_names n ON n.id = m.name_id "
            "JOIN datasets d ON d.id = m.dataset_id"):
        rows[vid].metrics.setdefault(name, {})[ds] = value
    for child, m, n in db.execute("SELECT l.child, m.name, v.number FROM lineage l JOIN versions v ON v.id = l.parent"
                                  " JOIN models m ON m.id = v.model_id"):
        rows[child].parents.append(f"{m}@{n}")
    for vid, name in db.execute("SELECT version_id, name FROM tags"):
        rows[vid].tags.append(name)
    return list(rows.values())


def _op(a, op: str, b) -> bool:
    if op == "=":
        return a == b
    if op == "!=":
        return a != b
    if op == "<":
        return a < b
    if op == "<=":
        return a <= b
    if op == ">":
        return a > b
    if op == ">=":
        return a >= b
    raise InternalQueryError(op)  # pragma: no cover


def _match(ty: str, num, text, op: str, lit: Lit) -> bool:
    """Does one stored value (type, num, text) satisfy `op lit`? (Values of another type never do.)"""
    if lit.type == "str":
        if ty != "s":
            return False
        return glob_match(lit.value, text) if op == "~" else _op(text, op, lit.value)
    if lit.type == "num":
        ok = ty in ("i", "f", "m")
        value = lit.value
    elif lit.type == "bool":
        ok, value = ty == "b", 1.0 if lit.value else 0.0
    else:
        ok, value = ty == "t", lit.value
    return ok and _op(num, op, value)


def _values(row: Row, key: Key, family) -> list[tuple]:
    """Every value of `key` for a row, as (type, num, text); metrics have type 'm'."""
    if key.builtin:
        if key.name == "parent":
            return [("s", None, p) for p in row.parents]
        if key.name == "tag":
            return [("s", None, t) for t in row.tags]
        if key.name == "created":
            dt = parse_time(row.builtins["created"])
            return [("t", dt.timestamp(), None)] if dt else []
        v = row.builtins[key.name]
        return [("s", None, v)] if isinstance(v, str) else [("f", float(v), None)]
    by_ds = row.metrics.get(key.name, {})
    if key.dataset is not None:
        return [("m", by_ds[key.dataset], None)] if key.dataset in by_ds else []
    out = [row.attrs[key.name]] if key.name in row.attrs else []
    out.extend(("m", v, None) for ds, v in by_ds.items() if in_family(ds, family))
    return out


def _eval(node, row: Row, family) -> bool:
    if isinstance(node, Cmp):
        if node.key.builtin and node.key.name not in _MULTI and node.key.name != "created":
            v = row.builtins[node.key.name]
            if node.lit.type == "str":
                return glob_match(node.lit.value, v) if node.op == "~" else _op(v, node.op, node.lit.value)
            return _op(v, node.op, node.lit.value)
        return any(_match(t, n, x, node.op, node.lit) for t, n, x in _values(row, node.key, family))
    if isinstance(node, In):
        return any(_eval(Cmp(node.key, "=", lit), row, family) for lit in node.lits)
    if isinstance(node, Has):
        if node.key.builtin:
            return bool(_values(row, node.key, family)) if node.key.name in _MULTI else True
        return bool(_values(row, node.key, family))
    if isinstance(node, And):
        return all(_eval(i, row, family) for i in node.items)
    if isinstance(node, Or):
        return any(_eval(i, row, family) for i in node.items)
    if isinstance(node, Not):
        return not _eval(node.item, row, family)
    if isinstance(node, All):
        return True
    raise InternalQueryError(type(node).__name__)  # pragma: no cover


def sort_value(row: Row, key: Key, desc: bool, family) -> tuple:
    """(group, number, text): numbers (group 0) before strings (1) before missing (2)."""
    if key.builtin:
        v = row.builtins[key.name]
        return (1, None, v) if isinstance(v, str) else (0, float(v), None)
    nums, text = [], None
    for t, n, x in _values(row, key, family):
        if t == "s":
            text = x
        else:
            nums.append(n)
    if nums:
        return (0, max(nums) if desc else min(nums), None)
    if text is not None:
        return (1, None, text)
    return (2, None, None)


def evaluate(query: Query | str, rows: list[Row]) -> list[int]:
    """The ids of the versions a query selects, in order: the reference semantics, in Python."""
    q = parse(query) if isinstance(query, str) else query
    hits = [r for r in rows if _eval(q.where, r, q.family)]
    if q.order is None:
        hits.sort(key=lambda r: r.id)
    else:
        keyed = [(sort_value(r, q.order, q.desc, q.family), r) for r in hits]
        ordered = []
        for group, idx in ((0, 1), (1, 2), (2, None)):
            part = [(sv, r) for sv, r in keyed if sv[0] == group]
            part.sort(key=(lambda p: (p[0][idx], p[1].id)) if idx is not None else (lambda p: p[1].id),
                      reverse=q.desc)
            ordered.extend(r for _, r in part)
        hits = ordered
    ids = [r.id for r in hits]
    return ids if q.limit is None else ids[:q.limit]


# -- SQL compilation ---------------------------------------------------------------------
class Sql:
    """SQL text with its bound parameters, built side by side (never formatted from user input)."""

    __slots__ = ("text", "params")

    def __init__(self, text: str = "", params=()):
        self.text = text
        self.params = list(params)

    def __add__(self, other):
        if isinstance(other, str):
            return Sql(self.text + other, self.params)
        return Sql(self.text + other.text, self.params + other.params)

    def __radd__(self, other: str):
        return Sql(other + self.text, self.params)

    @staticmethod
    def join(sep: str, parts) -> "Sql":
        out = Sql()
        for i, p in enumerate(parts):
            out = out + (sep if i else "") + p
        return out


def _balanced(op: str, parts: list[Sql]) -> Sql:
    """`a op b op c ...` grouped as a balanced tree (SQLite limits expression depth)."""
    if len(parts) == 1:
        return parts[0]
    mid = len(parts) // 2
    return "(" + _balanced(op, parts[:mid]) + f" {op} " + _balanced(op, parts[mid:]) + ")"


_FALSE = "(0 = 1)"
_TRUE = "(1 = 1)"


@dataclass
class Tuning:
    """Planner thresholds (tests shrink them to force every plan)."""

    small: int = 1_000  # a driver with fewer matches than this is used at once
    big: int = 50_000  # cap of the second, finer count
    budget: int = 30_000  # index entries a stream may walk before giving up
    force: str | None = None  # 'scan' to check every version
    hints: bool = True  # SQLite INDEXED BY hints on driver scans


@dataclass
class Driver:
    sql: Sql  # SELECT ... AS vid
    sorted_eq: bool = False  # an equality run whose vids come out sorted (for INTERSECT)
    label: str = ""
    count: int | None = None


class Compiler:
    """Compiles a Query against one catalog snapshot."""

    def __init__(self, catalog, query: Query, tuning: Tuning | None = None):
        self.cat = catalog
        self.db = catalog.db
        self.q = query
        self.t = tuning or Tuning()
        self._ids: dict[tuple[str, str], int | None] = {}
        self._family_ids: list[int] | None = None

    # Interned names (same snapshot). A key no version ever had cannot match: its branch is
    # pruned, which changes no answer.
    def _id(self, table: str, name: str) -> int | None:
        k = (table, name)
        if k not in self._ids:
            self._ids[k] = self.cat.name_id(table, name)
        return self._ids[k]

    def kid(self, key: str) -> int | None:
        return self._id("attr_keys", key)

    def mid(self, name: str) -> int | None:
        return self._id("metric_names", name)

    def has_attr(self, key: str) -> bool:
        return self.kid(key) is not None

    def has_metric(self, name: str) -> bool:
        return self.mid(name) is not None

    def family_ids(self) -> list[int]:
        if self._family_ids is None:
            fam = self.q.family
            self._family_ids = [i for i, name in self.db.execute("SELECT id, name FROM datasets ORDER BY id")
                                if in_family(name, fam)]
        return self._family_ids

    def hint(self, index: str) -> str:
        return f"INDEXED BY {index}" if self.t.hints else ""

    # -- predicates (over `versions v`) --
    def dsfilter(self, alias: str, key: Key) -> Sql:
        """The datasets a metric key ranges over: one (name@dataset), the family, or any."""
        if key.dataset is not None:
            did = self._id("datasets", key.dataset)
            return Sql(_FALSE) if did is None else Sql(f"{alias}.dataset_id = ?", [did])
        fam = self.q.family
        if fam is None:
            return Sql(_TRUE)
        ids = self.family_ids()
        if not ids:
            return Sql(_FALSE)
        if len(ids) <= 200:
            return Sql(f"{alias}.dataset_id IN ({','.join('?' * len(ids))})", ids)
        parts = [Sql(f"ds.name IN ({','.join('?' * len(fam))})", fam)]
        for s in fam:
            parts.append(Sql(f"(substr(ds.name, 1, ?) = ? AND substr(ds.name, ?, 1) IN {_SEP_SQL})",
                             [len(s), s, len(s) + 1]))
        return f"{alias}.dataset_id IN (SELECT ds.id FROM datasets ds WHERE " + Sql.join(" OR ", parts) + ")"

    @staticmethod
    def value_cond(alias: str, op: str, lit: Lit) -> Sql:
        if lit.type == "str":
            if op == "~":
                return Sql(f"+{alias}.text GLOB ?", [sql_glob(lit.value)])
            return Sql(f"+{alias}.text {_OPS[op]} ?", [lit.value])
        if lit.type == "num":
            return Sql(f"{alias}.type IN ('i','f') AND +{alias}.num {_OPS[op]} ?", [lit.value])
        if lit.type == "bool":
            return Sql(f"{alias}.type = 'b' AND +{alias}.num {_OPS[op]} ?", [1.0 if lit.value else 0.0])
        return Sql(f"{alias}.type = 't' AND +{alias}.num {_OPS[op]} ?", [lit.value])

    def pred(self, node) -> Sql:
        if isinstance(node, Cmp):
            return self.cmp(node)
        if isinstance(node, In):
            if not node.lits:
                return Sql(_FALSE)
            return _balanced("OR", [self.cmp(Cmp(node.key, "=", lit)) for lit in node.lits])
        if isinstance(node, Has):
            return self.has(node.key)
        if isinstance(node, And):
            return _balanced("AND", [self.pred(i) for i in node.items])
        if isinstance(node, Or):
            return _balanced("OR", [self.pred(i) for i in node.items])
        if isinstance(node, Not):
            return "(NOT " + self.pred(node.item) + ")"
        if isinstance(node, All):
            return Sql(_TRUE)
        raise InternalQueryError(type(node).__name__)  # pragma: no cover

    def cmp(self, node: Cmp) -> Sql:
        key, op, lit = node.key, node.op, node.lit
        if key.builtin:
            return self.builtin_cmp(key.name, op, lit)
        parts = []
        if key.dataset is None and self.has_attr(key.name):
            parts.append(Sql("EXISTS (SELECT 1 FROM attrs a WHERE a.version_id = v.id AND a.key_id = ? AND ",
                             [self.kid(key.name)]) + self.value_cond("a", op, lit) + ")")
        if lit.type == "num" and self.has_metric(key.name):
            parts.append(Sql("EXISTS (SELECT 1 FROM metrics mt WHERE mt.version_id = v.id AND mt.name_id = ? AND ",
                             [self.mid(key.name)]) + self.dsfilter("mt", key)
                         + Sql(f" AND +mt.value {_OPS[op]} ?)", [lit.value]))
        if not parts:
            return Sql(_FALSE)
        return "(" + Sql.join(" OR ", parts) + ")"

    @staticmethod
    def str_cond(expr: str, op: str, lit: Lit) -> Sql:
        if op == "~":
            return Sql(f"{expr} GLOB ?", [sql_glob(lit.value)])
        return Sql(f"{expr} {_OPS[op]} ?", [lit.value])

    def builtin_cmp(self, name: str, op: str, lit: Lit) -> Sql:
        if name == "model":
            return "v.model_id IN (SELECT id FROM models WHERE " + self.str_cond("name", op, lit) + ")"
        if name == "parent":
            return ("EXISTS (SELECT 1 FROM lineage l JOIN versions pv ON pv.id = l.parent JOIN models pm ON "
                    "pm.id = pv.model_id WHERE l.child = v.id AND "
                    + self.str_cond("(pm.name || '@' || CAST(pv.number AS TEXT))", op, lit) + ")")
        if name == "tag":
            return "EXISTS (SELECT 1 FROM tags t WHERE t.version_id = v.id AND " + self.str_cond("t.name", op, lit) + ")"
        if name == "created":
            return created_cond("v.created", op, lit.value)
        col = _BUILTIN[name][1]
        if lit.type == "str":
            return self.str_cond(col, op, lit)
        return Sql(f"{col} {_OPS[op]} ?", [lit.value])

    def has(self, key: Key) -> Sql:
        if key.builtin:
            if key.name == "parent":
                return Sql("EXISTS (SELECT 1 FROM lineage l WHERE l.child = v.id)")
            if key.name == "tag":
                return Sql("EXISTS (SELECT 1 FROM tags t WHERE t.version_id = v.id)")
            return Sql(_TRUE)
        parts = []
        if key.dataset is None and self.has_attr(key.name):
            parts.append(Sql("EXISTS (SELECT 1 FROM attrs a WHERE a.version_id = v.id AND a.key_id = ?)",
                             [self.kid(key.name)]))
        if self.has_metric(key.name):
            parts.append(Sql("EXISTS (SELECT 1 FROM metrics mt WHERE mt.version_id = v.id AND mt.name_id = ? AND ",
                             [self.mid(key.name)]) + self.dsfilter("mt", key) + ")")
        if not parts:
            return Sql(_FALSE)
        return "(" + Sql.join(" OR ", parts) + ")"

    # -- ordering --
    def sort_exprs(self) -> tuple[Sql, Sql]:
        """(numeric sort value, text sort value) of `order by` for `versions v` (NULL when absent)."""
        key, desc = self.q.order, self.q.desc
        if key.builtin:
            if key.name == "model":
                return Sql("NULL"), Sql("(SELECT name FROM models WHERE id = v.model_id)")
            if key.name == "created":
                return Sql("NULL"), Sql("v.created")
            typ, col = _BUILTIN[key.name]
            return (Sql(col), Sql("NULL")) if typ == "num" else (Sql("NULL"), Sql(col))
        agg = "MAX" if desc else "MIN"
        a = t = m = None
        if key.dataset is None and self.has_attr(key.name):
            a = Sql("(SELECT a.num FROM attrs a WHERE a.version_id = v.id AND a.key_id = ?)", [self.kid(key.name)])
            t = Sql("(SELECT a.text FROM attrs a WHERE a.version_id = v.id AND a.key_id = ?)", [self.kid(key.name)])
        if self.has_metric(key.name):
            m = (Sql(f"(SELECT {agg}(mt.value) FROM metrics mt WHERE mt.version_id = v.id AND mt.name_id = ? AND ",
                     [self.mid(key.name)]) + self.dsfilter("mt", key) + ")")
        if a is not None and m is not None:
            cmp = ">" if desc else "<"
            num = ("(CASE WHEN " + a + " IS NULL THEN " + m + " WHEN " + m + " IS NULL THEN " + a
                   + " WHEN " + a + f" {cmp} " + m + " THEN " + a + " ELSE " + m + " END)")
        else:
            num = a if a is not None else m if m is not None else Sql("NULL")
        return num, t if t is not None else Sql("NULL")

    def select(self, source: Sql, where: Sql, limit: int | None) -> Sql:
        """The final SELECT of version ids, in query order."""
        if self.q.order is None:
            sql = "SELECT v.id FROM " + source + " WHERE " + where + " ORDER BY v.id"
        else:
            num, text = self.sort_exprs()
            d = "DESC" if self.q.desc else "ASC"
            sql = ("SELECT q.id FROM (SELECT v.id AS id, " + num + " AS sn, " + text + " AS st FROM " + source
                   + " WHERE " + where + ") q ORDER BY CASE WHEN q.sn IS NOT NULL THEN 0 WHEN q.st IS NOT NULL THEN 1"
                   f" ELSE 2 END, q.sn {d}, q.st {d}, q.id {d}")
        if limit is not None:
            sql = sql + Sql(" LIMIT ?", [limit])
        return sql

    # -- drivers: a superset of the matches of one top-level term, through an index --
    def driver(self, node) -> Driver | None:
        if isinstance(node, Cmp):
            return self.cmp_driver(node)
        if isinstance(node, In):
            parts = [self.cmp_driver(Cmp(node.key, "=", lit)) for lit in node.lits]
            if not parts or any(p is None for p in parts):
                return None
            return Driver(Sql.join(" UNION ", ["SELECT vid FROM (" + p.sql + ")" for p in parts]),
                          label=f"{node.key.text} in [...]")
        if isinstance(node, Has):
            key = node.key
            if key.builtin:
                if key.name == "tag":
                    return Driver(Sql(f"SELECT DISTINCT version_id AS vid FROM tags {self.hint('tags_version')}"),
                                  label="has(tag)")
                if key.name == "parent":
                    return Driver(Sql("SELECT DISTINCT child AS vid FROM lineage"), label="has(parent)")
                return None
            parts = []
            if key.dataset is None and self.has_attr(key.name):
                kid = self.kid(key.name)
                parts.append(Sql(f"SELECT version_id AS vid FROM attrs {self.hint('attrs_text')} WHERE key_id = ? "
                                 f"AND text IS NOT NULL UNION ALL SELECT version_id AS vid FROM attrs "
                                 f"{self.hint('attrs_num')} WHERE key_id = ? AND num IS NOT NULL", [kid, kid]))
            if self.has_metric(key.name):
                parts.append(Sql(f"SELECT DISTINCT version_id AS vid FROM metrics {self.hint('metrics_nv')} "
                                 "WHERE name_id = ? AND ", [self.mid(key.name)]) + self.dsfilter("metrics", key))
            return self.union(parts, f"has({key.text})")
        return None

    def union(self, parts: list[Sql], label: str, sorted_eq: bool = False) -> Driver:
        if not parts:
            return Driver(Sql(f"SELECT id AS vid FROM versions WHERE {_FALSE}"), label=label)
        if len(parts) == 1:
            return Driver(parts[0], sorted_eq=sorted_eq, label=label)
        return Driver(Sql.join(" UNION ", ["SELECT vid FROM (" + p + ")" for p in parts]), label=label)

    def cmp_driver(self, node: Cmp) -> Driver | None:
        key, op, lit = node.key, node.op, node.lit
        if op == "!=":
            return None
        label = f"{key.text} {op} {lit.text}"
        if op == "~":
            prefix = _glob_prefix(lit.value)
            upper = _upper(prefix)
            if upper is None:
                return None
            rng = Sql(" AND {col} >= ? AND {col} < ?", [prefix, upper])
        if key.builtin:
            name = key.name
            if name == "model":
                cond = self.str_cond("name", op, lit)
                return Driver("SELECT id AS vid FROM versions " + self.hint("versions_model")
                              + " WHERE model_id IN (SELECT id FROM models WHERE " + cond + ")", label=label)
            if name in ("size", "params"):
                return Driver(Sql(f"SELECT id AS vid FROM versions {self.hint('versions_' + name)} "
                                  f"WHERE {name} {_OPS[op]} ?", [lit.value]), label=label)
            if name == "created":
                return Driver(f"SELECT id AS vid FROM versions {self.hint('versions_created')} WHERE "
                              + created_cond("created", op, lit.value), label=label)
            if name == "content_id":
                cond = self.str_cond("content_id", op, lit)
                if op == "~":
                    cond = cond + Sql(rng.text.format(col="content_id"), rng.params)
                return Driver(f"SELECT id AS vid FROM versions {self.hint('versions_content')} WHERE " + cond,
                              label=label)
            if name == "tag" and op == "=":
                return Driver(Sql(f"SELECT DISTINCT version_id AS vid FROM tags {self.hint('tags_name')} "
                                  "WHERE name = ?", [lit.value]), label=label)
            if name == "parent" and op == "=":
                m = _REF.match(lit.value)
                if not m:
                    return Driver(Sql(f"SELECT id AS vid FROM versions WHERE {_FALSE}"), label=label)
                return Driver(Sql("SELECT l.child AS vid FROM lineage l WHERE l.parent IN (SELECT pv.id FROM versions pv "
                                  "JOIN models pm ON pm.id = pv.model_id WHERE pm.name = ? AND pv.number = ?)",
                                  [m.group(1), int(m.group(2))]), label=label)
            return None
        parts: list[Sql] = []
        attr = key.dataset is None and self.has_attr(key.name)
        metric = lit.type == "num" and self.has_metric(key.name)
        if attr:
            if lit.type == "str":
                s = Sql(f"SELECT version_id AS vid FROM attrs {self.hint('attrs_text')} WHERE key_id = ? "
                        "AND text IS NOT NULL AND ", [self.kid(key.name)]) + self.str_cond("text", op, lit)
                if op == "~":
                    s = s + Sql(rng.text.format(col="text"), rng.params)
            else:
                types = {"num": "IN ('i','f')", "bool": "= 'b'", "time": "= 't'"}[lit.type]
                value = (1.0 if lit.value else 0.0) if lit.type == "bool" else lit.value
                s = Sql(f"SELECT version_id AS vid FROM attrs {self.hint('attrs_num')} WHERE key_id = ? "
                        f"AND num IS NOT NULL AND num {_OPS[op]} ? AND type {types}", [self.kid(key.name), value])
            parts.append(s)
        if metric:
            if key.dataset is not None:
                did = self._id("datasets", key.dataset)
                parts.append(Sql(f"SELECT version_id AS vid FROM metrics {self.hint('metrics_nv')} WHERE name_id = ? "
                                 f"AND value {_OPS[op]} ? AND dataset_id = ?", [self.mid(key.name), lit.value, did])
                             if did is not None else Sql(f"SELECT id AS vid FROM versions WHERE {_FALSE}"))
            else:
                parts.append(Sql(f"SELECT DISTINCT version_id AS vid FROM metrics {self.hint('metrics_nv')} "
                                 f"WHERE name_id = ? AND value {_OPS[op]} ? AND ", [self.mid(key.name), lit.value])
                             + self.dsfilter("metrics", key))
        return self.union(parts, label, sorted_eq=(attr and not metric and op == "="))

    def count(self, d: Driver, cap: int) -> int:
        sql = "SELECT count(*) FROM (" + d.sql + Sql(" LIMIT ?)", [cap])
        return self.db.execute(sql.text, sql.params).fetchone()[0]

    # -- streams: versions in query order, for `limit` without a small driver --
    def stream(self) -> Sql | None:
        """SELECT vid in the order of `order by` (first occurrence = the version's sort value)."""
        key, desc = self.q.order, self.q.desc
        d = "DESC" if desc else "ASC"
        if key is None:
            return Sql("SELECT id AS vid FROM versions ORDER BY id")
        if key.builtin:
            if key.name in ("size", "params", "created"):
                return Sql(f"SELECT id AS vid FROM versions {self.hint('versions_' + key.name)} "
                           f"ORDER BY {key.name} {d}, id {d}")
            return None
        attr = key.dataset is None and self.has_attr(key.name)
        metric = self.has_metric(key.name)
        if attr and metric:
            return None
        if attr:
            return Sql(f"SELECT version_id AS vid FROM attrs {self.hint('attrs_num')} WHERE key_id = ? "
                       f"AND num IS NOT NULL ORDER BY num {d}, version_id {d}", [self.kid(key.name)])
        if metric:
            if key.dataset is not None:
                did = self._id("datasets", key.dataset)
                if did is None:
                    return None
                return Sql(f"SELECT version_id AS vid FROM metrics {self.hint('metrics_nv')} WHERE name_id = ? "
                           f"AND dataset_id = ? ORDER BY value {d}, version_id {d}", [self.mid(key.name), did])
            return (Sql(f"SELECT version_id AS vid FROM metrics {self.hint('metrics_nv')} WHERE name_id = ? AND ",
                        [self.mid(key.name)]) + self.dsfilter("metrics", key) + f" ORDER BY value {d}, version_id {d}")
        return None


def created_cond(col: str, op: str, epoch: float) -> Sql:
    """`created op t` over canonical whole-second ISO text (so text order is time order)."""
    whole = int(epoch // 1)
    frac = epoch - whole
    iso = _iso_seconds(whole)
    if frac:  # stored times are whole seconds
        if op == "=":
            return Sql(_FALSE)
        if op == "!=":
            return Sql(_TRUE)
        op = {">": ">", ">=": ">", "<": "<=", "<=": "<="}[op]
    return Sql(f"{col} {_OPS[op]} ?", [iso])


def _iso_seconds(epoch: int) -> str:
    try:
        dt = datetime.fromtimestamp(epoch, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return "0000" if epoch < 0 else "9999-12-31T23:59:59Z~"
    return (f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}Z")


# -- running -----------------------------------------------------------------------------
@dataclass
class QueryResult:
    query: Query
    versions: list[VersionInfo]
    plan: str
    sql: str = ""
    params: list = field(default_factory=list)

    @property
    def columns(self) -> tuple[str, ...]:
        return self.query.columns


def run(catalog, text: str | Query, *, tuning: Tuning | None = None) -> QueryResult:
    """Parse, plan and execute a query in one read snapshot; versions in query order."""
    q = parse(text) if isinstance(text, str) else text
    with catalog.snapshot():
        ids, plan, sql = _execute(catalog, q, tuning or Tuning())
        versions = catalog.versions_by_ids(ids)
    return QueryResult(q, versions, plan, sql.text if sql else "", sql.params if sql else [])


def query_ids(catalog, text: str | Query, *, tuning: Tuning | None = None) -> tuple[list[int], str]:
    """Only the matching version ids and the plan's name (no VersionInfo)."""
    q = parse(text) if isinstance(text, str) else text
    with catalog.snapshot():
        ids, plan, _ = _execute(catalog, q, tuning or Tuning())
    return ids, plan


def explain(catalog, text: str | Query, *, tuning: Tuning | None = None) -> dict:
    """The plan chosen for a query and its final SQL (for debugging and benchmarks)."""
    q = parse(text) if isinstance(text, str) else text
    with catalog.snapshot():
        ids, plan, sql = _execute(catalog, q, tuning or Tuning())
    return {"plan": plan, "sql": sql.text if sql else "", "params": sql.params if sql else [], "rows": len(ids)}


def _fetch(db, sql: Sql) -> list:
    return db.execute(sql.text, sql.params).fetchall()


def _execute(catalog, q: Query, t: Tuning) -> tuple[list[int], str, Sql | None]:
    import sqlite3

    c = Compiler(catalog, q, t)
    if q.limit == 0:
        return [], "empty", None
    try:
        terms = conjuncts(q.where)
        # cheap terms first: built-in columns are in the row, the rest are probes (AND commutes)
        where = c.pred(And(tuple(sorted(terms, key=_cost))) if len(terms) > 1 else q.where)
        if t.force == "scan":
            sql = c.select(Sql("versions v"), where, q.limit)
            return [r[0] for r in _fetch(c.db, sql)], "scan", sql
        drivers = [d for d in (c.driver(x) for x in conjuncts(q.where)) if d is not None]
        for d in drivers:
            d.count = c.count(d, t.small)
        best = min(drivers, key=lambda d: d.count) if drivers else None
        if best is not None and best.count < t.small:
            return _with_driver(c, best, where, q)
        if q.limit is not None:
            got = _try_stream(c, where, q)
            if got is not None:
                return got
        if drivers:
            # count with a growing cap (x8, then x4): the work stays near (number of terms) x (smallest
            # count); within a round no term is counted past the best one so far
            cap = min(max(8 * t.small, 64), t.big)
            while True:
                best = None
                for d in drivers:
                    d.count = c.count(d, cap if best is None else min(cap, best.count + 1))
                    if best is None or d.count < best.count:
                        best = d
                if best.count < cap or cap >= t.big:
                    break
                cap = min(cap * 4, t.big)
            eq = [d for d in drivers if d.sorted_eq]
            if best.count >= t.big and len(eq) >= 2:
                inter = Driver("(" + Sql.join(" INTERSECT ", [d.sql for d in eq])
                               + Sql(" ORDER BY 1 LIMIT ?)", [2**63 - 1]),
                               label=" and ".join(d.label for d in eq))
                inter.sql = "SELECT vid FROM " + inter.sql + " i"
                return _with_driver(c, inter, where, q, plan="intersect")
            return _with_driver(c, best, where, q)
        sql = c.select(Sql("versions v"), where, q.limit)
        return [r[0] for r in _fetch(c.db, sql)], "scan", sql
    except sqlite3.OperationalError as exc:
        msg = str(exc)
        if "too many" in msg or "too large" in msg or "too deep" in msg or "depth" in msg:
            raise InvalidInputError(f"query error: the query is too complex ({msg})") from None
        raise


def _cost(node) -> int:
    """0: a test on the version's own row; 1: needs index probes."""
    if isinstance(node, (Cmp, In, Has)):
        key = node.key
        return 0 if key.builtin and key.name not in _MULTI else 1
    if isinstance(node, (And, Or)):
        return max((_cost(i) for i in node.items), default=0)
    if isinstance(node, Not):
        return _cost(node.item)
    return 0


def _with_driver(c: Compiler, d: Driver, where: Sql, q: Query, plan: str = "driver"):
    source = "(" + d.sql + ") d CROSS JOIN versions v ON v.id = d.vid"
    sql = c.select(source, where, q.limit)
    return [r[0] for r in _fetch(c.db, sql)], f"{plan}: {d.label}", sql


def _try_stream(c: Compiler, where: Sql, q: Query):
    """Walk the order's index (at most `budget` entries), keep the first `limit` matching versions.

    Succeeds when `limit` matches were found (they are the first in query order), or, without
    `order by`, when the walk covered every version; otherwise the caller plans again.
    """
    s = c.stream()
    if s is None:
        return None
    stream = s + Sql(" LIMIT ?", [c.t.budget])
    sql = "SELECT o.vid FROM (" + stream + ") o CROSS JOIN versions v ON v.id = o.vid WHERE " + where
    seen: set[int] = set()
    out: list[int] = []
    cur = c.db.execute(sql.text, sql.params)
    for (vid,) in cur:  # a version may come several times (a metric on several datasets): first wins
        if vid not in seen:
            seen.add(vid)
            out.append(vid)
            if len(out) >= q.limit:
                break
    cur.close()
    label = f"stream: {q.order.text + (' desc' if q.desc else '') if q.order else 'id'}"
    if len(out) >= q.limit:
        return out, label, sql
    if q.order is None:
        count = "SELECT count(*) FROM (" + stream + ")"
        if c.db.execute(count.text, count.params).fetchone()[0] < c.t.budget:
            return out, label, sql  # walked every version: complete
    return None


# -- output helpers for the CLI --------------------------------------------------------------
def cell(info: VersionInfo, key: Key, family) -> object:
    """The value of one queried key for a version (a dict {dataset: value} for several)."""
    if key.builtin:
        return info.attributes()[key.name]
    if key.dataset is not None:
        return info.metrics.get(key.dataset, {}).get(key.name)
    if key.name in info.meta:
        return info.meta[key.name]
    found = {ds: m[key.name] for ds, m in info.metrics.items() if key.name in m and in_family(ds, family)}
    if len(found) == 1:
        return next(iter(found.values()))
    return found or None


def format_cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return ", ".join(f"{format_cell(v)} ({k})" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


def table(result: QueryResult) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the human table: ref, content id, then the queried keys."""
    keys = [k for k in result.query.keys if not (k.builtin and k.name in ("model", "version"))]
    headers = ["ref", "content id"] + [k.text for k in keys]
    rows = [[v.ref, v.content_id[:12]] + [format_cell(cell(v, k, result.query.family)) for k in keys]
            for v in result.versions]
    return headers, rows
