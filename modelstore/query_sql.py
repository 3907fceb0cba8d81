"""Query compiler: a parsed `Query` (query_parse.py) to parameterized SQL over the catalog.

`Sql` carries text and bound parameters side by side, so no user input is ever formatted into
SQL. `Compiler` builds, against one catalog snapshot, the predicate of a query over
`versions v` (every user key and metric comparison an EXISTS probe by primary key), its
`order by` expressions, the final SELECT, and the two kinds of candidate sources the planner
(query_plan.py) chooses from: *drivers* (the matches of one top-level `and` term, through an
index) and *streams* (versions in query order, through the `order by` key's index).
The `INDEXED BY` hints are SQLite's; everything else is portable SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from modelstore.query_eval import _glob_prefix, _upper, in_family, sql_glob
from modelstore.query_parse import (
    _BUILTIN,
    _OPS,
    _REF,
    _SEP_SQL,
    All,
    And,
    Cmp,
    Has,
    In,
    InternalQueryError,
    Key,
    Lit,
    Not,
    Or,
    Query,
)


class Sql:
    """SQL text with its bound parameters, built side by side (never formatted from user input)."""

    __slots__ = ("params", "text")

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
    def join(sep: str, parts) -> Sql:
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
            # `+mt.name_id`: probe the primary key by version; else SQLite's min/max
            # optimisation walks metrics_nv(name_id, value) for every version (30x slower).
            m = (Sql(f"(SELECT {agg}(mt.value) FROM metrics mt WHERE mt.version_id = v.id AND +mt.name_id = ? AND ",
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
        dt = datetime.fromtimestamp(epoch, UTC)
    except (OverflowError, OSError, ValueError):
        return "0000" if epoch < 0 else "9999-12-31T23:59:59Z~"
    return (f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}Z")
