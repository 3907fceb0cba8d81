"""Query language, part 2: shared semantics helpers and the pure-Python evaluator.

The evaluator runs a syntax tree over rows loaded from the catalog; it is the oracle the
SQL path is property-tested against (docs/QUERY.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from modelstore.catalog_values import parse_time
from modelstore.query_parse import (  # noqa: F401
    _MULTI,
    _SEPARATORS,
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
    conjuncts,
    family_of,
    parse,
)


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
            part.sort(key=(lambda p, i=idx: (p[0][i], p[1].id)) if idx is not None else (lambda p: p[1].id),
                      reverse=q.desc)
            ordered.extend(r for _, r in part)
        hits = ordered
    ids = [r.id for r in hits]
    return ids if q.limit is None else ids[:q.limit]
