"""Query planner and runner: which versions to check, then the compiled SQL over them.

Every plan returns exactly the same rows, only faster (tests/test_query.py holds each plan to
the Python evaluator):

1. a *driver*: the top-level `and` term with the fewest matches (counted up to a cap, through
   its index: attrs (key, text) / (key, num), metrics (name, value, version, dataset),
   versions (size) / (params) / (created) / (model_id), tags, lineage);
2. with `limit` and no small driver, a *stream*: walk the index of the `order by` key (or the
   version ids) in order, check each version, stop after `limit` matches or a budget;
3. with several large equality terms, their index runs (sorted by version id) merged by
   INTERSECT;
4. else every version (a scan).

The SQL pieces come from query_sql.Compiler; the caller holds the read snapshot.
"""

from __future__ import annotations

import sqlite3

from modelstore.errors import InvalidInputError
from modelstore.query_eval import conjuncts
from modelstore.query_parse import _MULTI, And, Cmp, Has, In, Not, Or, Query
from modelstore.query_sql import Compiler, Driver, Sql, Tuning


def _fetch(db, sql: Sql) -> list:
    return db.execute(sql.text, sql.params).fetchall()


def _execute(catalog, q: Query, t: Tuning) -> tuple[list[int], str, Sql | None]:
    """(matching version ids in query order, the plan's name, its final SQL) in the caller's snapshot."""
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
