"""The catalog (SQLite, WAL): models, versions, lineage, tensors, attributes, metrics, tags, comments.

Every statement is parameterized. A version becomes visible only when the transaction
inserting its row commits; the manifest and chunks it names were made durable before.

Layout (docs/QUERY.md explains how queries use it):

- built-in attributes are columns of `versions` (size, params, created ... indexed where a
  query can start from them);
- user attributes are typed rows of `attrs` (one current value per version and key; the values
  they replaced go to `attr_history`), indexed by (key, text) and (key, num) so that a query can
  start from any key's value range and probe the others by primary key;
- metrics are rows of `metrics` (the latest value per version, dataset and name; the values
  re-evaluation replaced go to `metric_history`), indexed by (name, value) with the dataset
  in the index entry (one index serves `accuracy@imagenet-val` and bare `accuracy` alike);
- attribute keys, metric names and dataset names are interned (`attr_keys`, `metric_names`,
  `datasets`), so those rows and indexes hold small integers: a million versions' attributes
  and metrics load and index in well under two minutes, and probes compare integers;
- tags, comments and lineage edges.

The SQL is portable (SQLite now, PostgreSQL later) except the `INDEXED BY` hints the query
compiler adds for SQLite (modelstore/query_sql.py).

This module holds `VersionInfo` and the `Catalog` (connection, transactions, commits, reads);
the DDL is in catalog_schema.py, name and value rules in catalog_values.py, bulk registration
in catalog_bulk.py. Their names are re-exported here: `from modelstore.catalog import ...`
keeps working for every name it offered before the split.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from modelstore import catalog_bulk
from modelstore.catalog_bulk import _BATCH, _chunks  # noqa: F401 - re-exported
from modelstore.catalog_schema import (  # noqa: F401 - re-exported
    _QUERY_INDEXES,
    _RETIRED_DDL,
    _SCHEMA,
    NAME_TABLES,
    SCHEMA_VERSION,
    file_meta,
    has_table,
    migrate,
    next_number,
    set_file_meta,
)
from modelstore.catalog_values import (  # noqa: F401 - re-exported: the names modules import from here
    _CANONICAL_TIME,
    _FLOAT,
    _HEX,
    _INT,
    _MAYBE_TYPED,
    _TIME,
    _VALID_NAMES,
    BUILTINS,
    DATASET_NAME,
    MAX_COMMENT,
    MAX_EXACT_INT,
    MAX_META_VALUE,
    MAX_NAME,
    META_KEY,
    METRIC_NAME,
    MODEL_NAME,
    TAG_NAME,
    _check_text,
    _remember,
    _seen,
    _valid_canonical,
    check_dataset,
    check_meta_key,
    check_metric_name,
    check_metrics,
    check_model_name,
    check_text,
    created_iso,
    iso_utc,
    metric_value,
    now_iso,
    parse_time,
    scaled,
    type_value,
    typed,
)
from modelstore.errors import FormatError, InvalidInputError, NotFoundError


@dataclass
class VersionInfo:
    """One version as the catalog knows it (no weights)."""

    model: str
    number: int
    content_id: str
    message: str
    author: str
    created: str
    format: str
    size: int
    stored: int
    params: int
    n_tensors: int
    dtype: str
    parents: list[str] = field(default_factory=list)
    meta: dict[str, object] = field(default_factory=dict)  # typed: str, int, float, bool, ISO timestamp str
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # dataset -> name -> latest value
    tags: list[str] = field(default_factory=list)
    comments: list[dict] = field(default_factory=list)  # {"id", "author", "created", "text"}
    id: int = 0

    @property
    def ref(self) -> str:
        return f"{self.model}@{self.number}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("id")
        d["ref"] = self.ref
        return d

    def attributes(self) -> dict:
        """Built-in and user attributes under their query names (built-ins win a name clash)."""
        out = {k: v for k, v in self.meta.items() if k not in BUILTINS}
        out.update(params=self.params, size=self.size, stored=self.stored, dtype=self.dtype,
                   tensors=self.n_tensors, format=self.format, created=self.created, author=self.author,
                   model=self.model, version=self.number, message=self.message, parent=list(self.parents),
                   tag=list(self.tags), content_id=self.content_id)
        return out

    def to_query_json(self) -> dict:
        """The `query --json` shape: ref, model, version, content_id, attributes, metrics."""
        return {"ref": self.ref, "model": self.model, "version": self.number, "content_id": self.content_id,
                "attributes": self.attributes(), "metrics": {d: dict(m) for d, m in self.metrics.items()}}


_VERSION_COLS = ("v.id, m.name, v.number, v.content_id, v.message, v.author, v.created, v.format, "
                 "v.size, v.stored, v.params, v.n_tensors, v.dtype")


class Catalog:
    """The catalog database of one store: versions and what describes them (see the module doc)."""

    _NAME_TABLES = NAME_TABLES

    def __init__(self, path: Path, readonly: bool = False):
        self.path = path
        # Read-only (a store we cannot write): immutable, so SQLite needs no -shm/-wal writes.
        uri = f"file:{path}?mode=ro&immutable=1" if readonly else f"file:{path}"
        try:
            self.db = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA busy_timeout=60000")
            self.db.execute("PRAGMA cache_size=-131072")  # 128 MiB: queries probe many pages
            if not readonly:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")
                migrate(self.db)
        except sqlite3.DatabaseError as exc:
            raise FormatError(f"cannot open catalog {path}: {exc}") from None


    def close(self) -> None:
        self.db.close()

    def transaction(self):
        return _Txn(self.db)

    def snapshot(self):
        """A read transaction: every statement inside sees the same committed state."""
        return _Txn(self.db, "BEGIN")

    # -- writes ----------------------------------------------------------------------
    def insert_version(
        self, *, model: str, content_id: str, message: str, author: str, fmt: str, size: int,
        stored: int, params: int, n_tensors: int, dtype: str, parents: list[int],
        meta: dict, tensors: list[tuple[str, str, str, int]],
        metrics: list[tuple[str, str, object]] | None = None, file_meta: dict[str, str] | None = None,
    ) -> VersionInfo:
        """Insert a version and everything that describes it, atomically; numbers it.

        `meta` values are typed here (type_value); `metrics` is [(dataset, name, value)];
        `file_meta` is the source file's own metadata, kept verbatim for checkouts.
        """
        typed_meta = [(k, *type_value(v)) for k, v in (meta or {}).items()]
        checked = check_metrics(metrics)
        created = now_iso()
        with self.transaction():
            row = self.db.execute("SELECT id FROM models WHERE name=?", (model,)).fetchone()
            if row is None:
                model_id = self.db.execute("INSERT INTO models(name, created) VALUES(?, ?)", (model, created)).lastrowid
            else:
                model_id = row[0]
            number = next_number(self.db, model_id)
            vid = self.db.execute(
                "INSERT INTO versions(model_id, number, content_id, message, author, created, format, size, stored,"
                " params, n_tensors, dtype) VALUES(?,?,?,?,?,?,?,?,?,?,?,?)",
                (model_id, number, content_id, message, author, created, fmt, size, stored, params, n_tensors, dtype),
            ).lastrowid
            self.db.executemany("INSERT OR IGNORE INTO lineage(child, parent) VALUES(?, ?)", [(vid, p) for p in parents])
            self.db.executemany(
                "INSERT OR IGNORE INTO tensors(content_id, name, dtype, shape, nbytes) VALUES(?,?,?,?,?)",
                [(content_id, *t) for t in tensors],
            )
            self.db.executemany(
                "INSERT INTO attrs(version_id, key_id, type, num, text) VALUES(?, ?, ?, ?, ?)",
                [(vid, self.intern("attr_keys", k), t, n, x) for k, t, n, x in typed_meta],
            )
            self.db.executemany(
                "INSERT INTO metrics(version_id, name_id, dataset_id, value) VALUES(?, ?, ?, ?)",
                [(vid, self.intern("metric_names", n), self.intern("datasets", d), v) for d, n, v in checked],
            )
            set_file_meta(self.db, vid, file_meta)
        return self.version_by_id(vid)

    def file_meta(self, vid: int) -> dict[str, str] | None:
        """The metadata version `vid`'s source file carried (safetensors __metadata__), or None."""
        return file_meta(self.db, vid)

    def intern(self, table: str, name: str) -> int:
        """The id of an attribute key / metric name / dataset, created if new (inside a write transaction)."""
        assert table in self._NAME_TABLES
        row = self.db.execute(f"SELECT id FROM {table} WHERE name = ?", (name,)).fetchone()
        if row is not None:
            return row[0]
        return self.db.execute(f"INSERT INTO {table}(name) VALUES(?)", (name,)).lastrowid

    def name_id(self, table: str, name: str) -> int | None:
        """The id of an attribute key / metric name / dataset, or None if no version ever had it."""
        assert table in self._NAME_TABLES
        row = self.db.execute(f"SELECT id FROM {table} WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    def register_many(self, records: Iterable[dict], *, batch: int = 20_000,
                      rebuild_indexes: bool | None = None) -> int:
        """Bulk-register catalog rows of versions whose weights are stored elsewhere (or nowhere);
        returns how many. Records and transactions as in catalog_bulk.register_many."""
        return catalog_bulk.register_many(self, records, batch=batch, rebuild_indexes=rebuild_indexes)

    # -- reads -----------------------------------------------------------------------
    def _infos(self, rows) -> list[VersionInfo]:
        """VersionInfo for version rows (in their order), loading their details in batches."""
        infos = [VersionInfo(model=r[1], number=r[2], content_id=r[3], message=r[4], author=r[5], created=r[6],
                             format=r[7], size=r[8], stored=r[9], params=r[10], n_tensors=r[11], dtype=r[12], id=r[0])
                 for r in rows]
        by_id = {i.id: i for i in infos}
        ids = list(by_id)
        for start in range(0, len(ids), _BATCH):
            chunk = ids[start:start + _BATCH]
            marks = ",".join("?" * len(chunk))
            for vid, m, n in self.db.execute(
                    "SELECT l.child, m.name, v.number FROM lineage l JOIN versions v ON v.id=l.parent "
                    f"JOIN models m ON m.id=v.model_id WHERE l.child IN ({marks}) ORDER BY l.child, v.id", chunk):
                by_id[vid].parents.append(f"{m}@{n}")
            for vid, k, ty, n, t in self.db.execute(
                    "SELECT a.version_id, k.name, a.type, a.num, a.text FROM attrs a JOIN attr_keys k ON k.id = a.key_id "
                    f"WHERE a.version_id IN ({marks}) ORDER BY a.version_id, k.name", chunk):
                by_id[vid].meta[k] = typed(ty, n, t)
            for vid, d, n, val in self.db.execute(
                    "SELECT m.version_id, d.name, n.name, m.value FROM metrics m JOIN datasets d ON d.id = m.dataset_id "
                    f"JOIN metric_names n ON n.id = m.name_id WHERE m.version_id IN ({marks}) "
                    "ORDER BY m.version_id, d.name, n.name", chunk):
                by_id[vid].metrics.setdefault(d, {})[n] = val
            for vid, t in self.db.execute(
                    f"SELECT version_id, name FROM tags WHERE version_id IN ({marks}) ORDER BY version_id, name", chunk):
                by_id[vid].tags.append(t)
            for cid, vid, a, c, t in self.db.execute(
                    f"SELECT id, version_id, author, created, text FROM comments WHERE version_id IN ({marks}) "
                    "ORDER BY version_id, id", chunk):
                by_id[vid].comments.append({"id": cid, "author": a, "created": c, "text": t})
        return infos

    def _info(self, row) -> VersionInfo:
        return self._infos([row])[0]

    def versions_by_ids(self, ids: list[int]) -> list[VersionInfo]:
        """VersionInfo of each id, in the given order (unknown ids are skipped)."""
        rows: dict[int, tuple] = {}
        for start in range(0, len(ids), _BATCH):
            chunk = ids[start:start + _BATCH]
            for r in self.db.execute(
                    f"SELECT {_VERSION_COLS} FROM versions v JOIN models m ON m.id=v.model_id "
                    f"WHERE v.id IN ({','.join('?' * len(chunk))})", chunk):
                rows[r[0]] = r
        return self._infos([rows[i] for i in ids if i in rows])

    def version_by_id(self, vid: int) -> VersionInfo:
        row = self.db.execute(
            f"SELECT {_VERSION_COLS} FROM versions v JOIN models m ON m.id=v.model_id WHERE v.id=?", (vid,)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"version id {vid} not found")
        return self._info(row)

    def models(self) -> list[tuple[str, int]]:
        return list(self.db.execute(
            "SELECT m.name, COUNT(v.id) FROM models m LEFT JOIN versions v ON v.model_id=m.id GROUP BY m.id ORDER BY m.name"))

    def log(self, model: str) -> list[VersionInfo]:
        rows = self.db.execute(
            f"SELECT {_VERSION_COLS} FROM versions v JOIN models m ON m.id=v.model_id WHERE m.name=? ORDER BY v.number",
            (model,)).fetchall()
        if not rows and self.db.execute("SELECT 1 FROM models WHERE name=?", (model,)).fetchone() is None:
            raise NotFoundError(f"no model named {model[:80]!r}")
        return self._infos(rows)

    def all_versions(self) -> list[tuple[int, str]]:
        """(version id, content id) of every version (for gc and fsck)."""
        return list(self.db.execute("SELECT id, content_id FROM versions"))

    def delete_version(self, vid: int) -> None:
        """Remove a version and everything describing it, in one transaction; its children
        are re-parented to its parents so lineage stays connected. Its chunks and manifest
        become unreferenced (and `gc` reclaims them unless other versions or deltas use them)."""
        with self.transaction():
            self.db.execute(
                "INSERT OR IGNORE INTO lineage(child, parent) SELECT c.child, p.parent FROM lineage c "
                "JOIN lineage p ON p.child = c.parent WHERE c.parent = ?", (vid,))
            self.db.execute("DELETE FROM lineage WHERE child = ? OR parent = ?", (vid, vid))
            for table in ("attrs", "attr_history", "metrics", "metric_history", "tags", "comments"):
                self.db.execute(f"DELETE FROM {table} WHERE version_id = ?", (vid,))  # fixed table names
            if has_table(self.db, "file_meta"):
                self.db.execute("DELETE FROM file_meta WHERE version_id = ?", (vid,))
            row = self.db.execute("SELECT model_id, number FROM versions WHERE id = ?", (vid,)).fetchone()
            if row is None or self.db.execute("DELETE FROM versions WHERE id = ?", (vid,)).rowcount != 1:
                raise NotFoundError(f"version id {vid} not found")
            # MODEL@N must never come to name other weights: remember the highest number used.
            self.db.execute(_RETIRED_DDL)
            self.db.execute("INSERT INTO retired_numbers(model_id, last) VALUES(?, ?) ON CONFLICT(model_id) "
                            "DO UPDATE SET last = MAX(last, excluded.last)", row)

    def children(self, vid: int) -> list[VersionInfo]:
        return self.versions_by_ids([c for (c,) in self.db.execute(
            "SELECT child FROM lineage WHERE parent=? ORDER BY child", (vid,))])

    def resolve(self, ref: str) -> VersionInfo:
        """MODEL, MODEL@N, MODEL@TAG or a content-id prefix (>= 8 hex digits)."""
        if not isinstance(ref, str) or not ref or len(ref) > 1000:
            raise InvalidInputError("empty or oversized REF")
        base = f"SELECT {_VERSION_COLS} FROM versions v JOIN models m ON m.id=v.model_id"
        if "@" in ref:
            model, sel = ref.rsplit("@", 1)
            if sel.isdigit():
                row = self.db.execute(f"{base} WHERE m.name=? AND v.number=?", (model, int(sel))).fetchone()
            elif sel == "latest":
                row = self.db.execute(f"{base} WHERE m.name=? ORDER BY v.number DESC LIMIT 1", (model,)).fetchone()
            else:
                row = self.db.execute(
                    f"{base} JOIN tags t ON t.version_id=v.id AND t.model_id=m.id WHERE m.name=? AND t.name=?",
                    (model, sel)).fetchone()
            if row is None:
                raise NotFoundError(f"no version {ref[:120]!r} in this store (see `modelstore log {model[:80]}`)")
            return self._info(row)
        row = self.db.execute(f"{base} WHERE m.name=? ORDER BY v.number DESC LIMIT 1", (ref,)).fetchone()
        if row is not None:
            return self._info(row)
        low = ref.lower()
        if _HEX.match(low):
            rows = self.db.execute(
                f"{base} WHERE v.content_id >= ? AND v.content_id < ? ORDER BY v.id", (low, low + "g")).fetchall()
            ids = {r[3] for r in rows}
            if len(ids) > 1:
                raise InvalidInputError(f"content id prefix {ref!r} is ambiguous ({len(ids)} matches); give more digits")
            if rows:
                return self._info(rows[0])
        raise NotFoundError(f"no model or version {ref[:120]!r} in this store (see `modelstore log`)")


class _Txn:
    def __init__(self, db: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE"):
        self.db = db
        self.begin = begin
        self.owner = True

    def __enter__(self):
        # a read snapshot inside a transaction already open on this connection is that transaction
        self.owner = not (self.begin == "BEGIN" and self.db.in_transaction)
        if self.owner:
            self.db.execute(self.begin)
        return self.db

    def __exit__(self, exc_type, exc, tb):
        if not self.owner:
            return False
        if exc_type is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")
        return False
