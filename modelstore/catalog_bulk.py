"""Bulk registration: catalog rows of many versions at once (imports, benchmarks, sync).

Records are validated and typed in batches without touching the database (`prepare`, the same
rules as catalog_values with fast paths for common value types), then inserted with a few
`executemany` calls per batch (`insert_batch`). A first load into an empty catalog drops the
query indexes and rebuilds them sorted afterwards, which is several times faster.
"""

from __future__ import annotations

import gc
import math
import sqlite3
from collections.abc import Iterable
from typing import TYPE_CHECKING

from modelstore.catalog_schema import _QUERY_INDEXES, NAME_TABLES
from modelstore.catalog_schema import next_number as catalog_next_number
from modelstore.catalog_values import (
    _CANONICAL_TIME,
    _MAYBE_TYPED,
    _VALID_NAMES,
    MAX_EXACT_INT,
    _remember,
    _valid_canonical,
    check_meta_key,
    check_metrics,
    check_model_name,
    created_iso,
    now_iso,
    type_value,
)

if TYPE_CHECKING:
    from modelstore.catalog import Catalog

_BATCH = 500  # names or ids per IN (...)


def register_many(catalog: Catalog, records: Iterable[dict], *, batch: int = 20_000,
                  rebuild_indexes: bool | None = None) -> int:
    """Bulk-register catalog rows of versions whose weights are stored elsewhere (or nowhere).

    Each record: model, content_id, and optionally message, author, created (ISO), format,
    size, stored, params, n_tensors, dtype, parents (version ids), meta (dict),
    metrics ([(dataset, name, value)]). Versions are numbered per model in order; returns
    the number registered. Validation errors raise before their batch is written.

    Normally one transaction per `batch` records. With `rebuild_indexes` (the default when
    the catalog has no versions yet) everything is one transaction that drops the query
    indexes, inserts, and builds them again sorted, which is several times faster for
    millions of rows; other writers wait for it (readers keep their snapshot).
    """
    db = catalog.db
    if rebuild_indexes is None:
        rebuild_indexes = db.execute("SELECT 1 FROM versions LIMIT 1").fetchone() is None
    total = 0
    if not rebuild_indexes:
        for chunk in _chunks(records, batch):
            prepared = prepare(chunk)
            with catalog.transaction():
                total += insert_batch(db, prepared)
        return total
    (cache,) = db.execute("PRAGMA cache_size").fetchone()
    db.execute("PRAGMA cache_size=-1048576")
    try:
        with catalog.transaction():
            for name in _QUERY_INDEXES:
                db.execute(f"DROP INDEX IF EXISTS {name}")
            for chunk in _chunks(records, batch):
                total += insert_batch(db, prepare(chunk))
            for ddl in _QUERY_INDEXES.values():
                db.execute(ddl)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # do not leave a catalog-sized WAL behind
    finally:
        db.execute(f"PRAGMA cache_size={int(cache)}")
    return total


def prepare(recs: list[dict]) -> list:
    """Validate and type a batch of records (no database access; the same rules as
    type_value / check_metrics, with fast paths for the common value types)."""
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of small tuples: the cyclic collector would rescan them over and over
    try:
        prepared = []
        keys, models = _VALID_NAMES["key"], _VALID_NAMES["model"]
        isfinite = math.isfinite
        for r in recs:
            model = r["model"]
            if model not in models:
                check_model_name(model)
                _remember("model", model)
            meta = []
            for k, v in (r.get("meta") or {}).items():
                if k.__class__ is not str or k not in keys:
                    check_meta_key(k)
                cls = v.__class__
                if cls is str and len(v) <= 64 and v.isascii() and v and v[0] not in _MAYBE_TYPED \
                        and "\x00" not in v:
                    meta.append((k, "s", None, v))
                elif cls is float and isfinite(v):
                    meta.append((k, "f", v, None))
                elif cls is bool:
                    meta.append((k, "b", 1.0 if v else 0.0, None))
                elif cls is int and -MAX_EXACT_INT <= v <= MAX_EXACT_INT:
                    meta.append((k, "i", float(v), None))
                else:
                    t, n, x = type_value(v)
                    meta.append((k, t, n, x))
            created = r.get("created")
            if not (created.__class__ is str and _CANONICAL_TIME.match(created) and _valid_canonical(created)):
                created = created_iso(created)
            prepared.append((r, meta, check_metrics(r.get("metrics")), created))
        return prepared
    finally:
        if gc_was_enabled:
            gc.enable()


def insert_batch(db: sqlite3.Connection, prepared: list) -> int:
    """Insert prepared records (inside the caller's transaction)."""
    now = now_iso()
    names = list(dict.fromkeys(r["model"] for r, *_ in prepared))
    model_ids: dict[str, int] = {}
    next_number: dict[int, int] = {}
    for start in range(0, len(names), _BATCH):
        chunk = names[start:start + _BATCH]
        for name, mid, top in db.execute(
                "SELECT m.name, m.id, (SELECT COALESCE(MAX(number), 0) FROM versions WHERE model_id = m.id) "
                f"FROM models m WHERE m.name IN ({','.join('?' * len(chunk))})", chunk):
            model_ids[name] = mid
            next_number[mid] = catalog_next_number(db, mid)
    for name in names:
        if name not in model_ids:
            mid = db.execute("INSERT INTO models(name, created) VALUES(?, ?)", (name, now)).lastrowid
            model_ids[name] = mid
            next_number[mid] = 1
    ids = {t: dict(db.execute(f"SELECT name, id FROM {t}")) for t in NAME_TABLES}

    def intern(table: str, name: str) -> int:
        known = ids[table]
        i = known.get(name)
        if i is None:
            i = known[name] = db.execute(f"INSERT INTO {table}(name) VALUES(?)", (name,)).lastrowid
        return i

    keys, mnames, dsets = ids["attr_keys"], ids["metric_names"], ids["datasets"]
    (vid,) = db.execute("SELECT COALESCE(MAX(id), 0) FROM versions").fetchone()
    vrows, arows, mrows, lrows = [], [], [], []
    for r, meta, metrics, created in prepared:
        mid = model_ids[r["model"]]
        number = next_number[mid]
        next_number[mid] = number + 1
        vid += 1
        vrows.append((vid, mid, number, r["content_id"], r.get("message", ""), r.get("author", "unknown"),
                      created or now, r.get("format", ""), int(r.get("size", 0)), int(r.get("stored", 0)),
                      int(r.get("params", 0)), int(r.get("n_tensors", 0)), r.get("dtype", "")))
        arows.extend((vid, keys.get(k) or intern("attr_keys", k), t, n, x) for k, t, n, x in meta)
        mrows.extend((vid, mnames.get(n) or intern("metric_names", n), dsets.get(d) or intern("datasets", d), v)
                     for d, n, v in metrics)
        lrows.extend((vid, p) for p in r.get("parents") or ())
    db.executemany("INSERT INTO versions(id, model_id, number, content_id, message, author, created, format,"
                   " size, stored, params, n_tensors, dtype) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)", vrows)
    db.executemany("INSERT INTO attrs(version_id, key_id, type, num, text) VALUES(?,?,?,?,?)", arows)
    db.executemany("INSERT INTO metrics(version_id, name_id, dataset_id, value) VALUES(?,?,?,?)", mrows)
    db.executemany("INSERT OR IGNORE INTO lineage(child, parent) VALUES(?, ?)", lrows)
    return len(prepared)


def _chunks(items: Iterable, n: int):
    buf = []
    for item in items:
        buf.append(item)
        if len(buf) >= n:
            yield buf
            buf = []
    if buf:
        yield buf
