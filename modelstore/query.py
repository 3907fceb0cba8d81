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

from modelstore.query_parse import (  # noqa: F401
    InternalQueryError,
    GRAMMAR,
    MAX_QUERY,
    MAX_DEPTH,
    MAX_LIMIT,
    UNITS,
    _NUMBER,
    _REF,
    _SEPARATORS,
    _SEP_SQL,
    _BUILTIN,
    _MULTI,
    _OPS,
    Lit,
    Key,
    Cmp,
    In,
    Has,
    And,
    Or,
    Not,
    All,
    Query,
    RESERVED,
    _ReservedWord,
    _no_reserved_names,
    _parser,
    _EXPECTED,
    _where,
    _error,
    _tok_error,
    _show,
    _describe_expected,
    parse,
    _Builder,
)
from modelstore.query_eval import (  # noqa: F401
    conjuncts,
    family_of,
    in_family,
    glob_match,
    sql_glob,
    _glob_prefix,
    _upper,
    Row,
    load_rows,
    _op,
    _match,
    _values,
    _eval,
    sort_value,
    evaluate,
)

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
