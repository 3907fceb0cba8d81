"""The catalog (SQLite, WAL): models, versions, lineage, tensors, attributes, tags, comments.

Every statement is parameterized. A version becomes visible only when the transaction
inserting its row commits; the manifest and chunks it names were made durable before.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from modelstore.errors import InvalidInputError, NotFoundError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models(
  id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions(
  id INTEGER PRIMARY KEY, model_id INTEGER NOT NULL REFERENCES models(id), number INTEGER NOT NULL,
  content_id TEXT NOT NULL, message TEXT NOT NULL, author TEXT NOT NULL, created TEXT NOT NULL,
  format TEXT NOT NULL, size INTEGER NOT NULL, stored INTEGER NOT NULL, params INTEGER NOT NULL,
  n_tensors INTEGER NOT NULL, dtype TEXT NOT NULL, UNIQUE(model_id, number));
CREATE INDEX IF NOT EXISTS versions_content ON versions(content_id);
CREATE TABLE IF NOT EXISTS lineage(
  child INTEGER NOT NULL REFERENCES versions(id), parent INTEGER NOT NULL REFERENCES versions(id),
  PRIMARY KEY(child, parent)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS lineage_parent ON lineage(parent, child);
CREATE TABLE IF NOT EXISTS tensors(
  content_id TEXT NOT NULL, name TEXT NOT NULL, dtype TEXT NOT NULL, shape TEXT NOT NULL,
  nbytes INTEGER NOT NULL, PRIMARY KEY(content_id, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attrs(
  version_id INTEGER NOT NULL REFERENCES versions(id), key TEXT NOT NULL, type TEXT NOT NULL,
  num REAL, text TEXT, PRIMARY KEY(version_id, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS attrs_num ON attrs(key, num);
CREATE INDEX IF NOT EXISTS attrs_text ON attrs(key, text);
CREATE TABLE IF NOT EXISTS attr_history(
  id INTEGER PRIMARY KEY, version_id INTEGER NOT NULL, key TEXT NOT NULL, type TEXT NOT NULL,
  num REAL, text TEXT, set_at TEXT NOT NULL, author TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS metrics(
  id INTEGER PRIMARY KEY, version_id INTEGER NOT NULL REFERENCES versions(id), dataset TEXT NOT NULL,
  name TEXT NOT NULL, value REAL NOT NULL, recorded TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS metrics_version ON metrics(version_id, dataset, name);
CREATE TABLE IF NOT EXISTS tags(
  model_id INTEGER NOT NULL REFERENCES models(id), name TEXT NOT NULL,
  version_id INTEGER NOT NULL REFERENCES versions(id), PRIMARY KEY(model_id, name));
CREATE TABLE IF NOT EXISTS comments(
  id INTEGER PRIMARY KEY, version_id INTEGER NOT NULL REFERENCES versions(id), author TEXT NOT NULL,
  created TEXT NOT NULL, text TEXT NOT NULL);
"""

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
MAX_NAME = 200
_HEX = re.compile(r"^[0-9a-f]{8,32}$")


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidInputError("model name is empty")
    if len(name) > MAX_NAME:
        raise InvalidInputError(f"model name is {len(name)} characters long (at most {MAX_NAME})")
    if not MODEL_NAME.match(name) or ".." in name:
        raise InvalidInputError(
            f"invalid model name {name[:60]!r}: use letters, digits, '.', '_', '-' (and one '/' as in org/name)"
        )
    return name


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


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
    meta: dict[str, str] = field(default_factory=dict)
    id: int = 0

    @property
    def ref(self) -> str:
        return f"{self.model}@{self.number}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("id")
        d["ref"] = self.ref
        return d


_VERSION_COLS = ("v.id, m.name, v.number, v.content_id, v.message, v.author, v.created, v.format, "
                 "v.size, v.stored, v.params, v.n_tensors, v.dtype")


class Catalog:
    def __init__(self, path: Path, readonly: bool = False):
        self.path = path
        uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
        try:
            self.db = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA busy_timeout=60000")
            if not readonly:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")
                self._migrate()
        except sqlite3.DatabaseError as exc:
            from modelstore.errors import FormatError

            raise FormatError(f"cannot open catalog {path}: {exc}") from None

    def _migrate(self) -> None:
        (version,) = self.db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            from modelstore.errors import FormatError

            raise FormatError(f"catalog schema {version} is newer than this modelstore ({SCHEMA_VERSION}); upgrade")
        if version < SCHEMA_VERSION:
            self.db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + f"PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")

    def close(self) -> None:
        self.db.close()

    def transaction(self):
        return _Txn(self.db)

    # -- writes ----------------------------------------------------------------------
    def insert_version(
        self, *, model: str, content_id: str, message: str, author: str, fmt: str, size: int,
        stored: int, params: int, n_tensors: int, dtype: str, parents: list[int],
        meta: dict[str, str], tensors: list[tuple[str, str, str, int]],
    ) -> VersionInfo:
        """Insert a version and everything that describes it, atomically; numbers it."""
        created = now_iso()
        with self.transaction():
            row = self.db.execute("SELECT id FROM models WHERE name=?", (model,)).fetchone()
            if row is None:
                model_id = self.db.execute("INSERT INTO models(name, created) VALUES(?, ?)", (model, created)).lastrowid
            else:
                model_id = row[0]
            (number,) = self.db.execute(
                "SELECT COALESCE(MAX(number), 0) + 1 FROM versions WHERE model_id=?", (model_id,)
            ).fetchone()
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
                "INSERT INTO attrs(version_id, key, type, num, text) VALUES(?, ?, 'str', NULL, ?)",
                [(vid, k, v) for k, v in meta.items()],
            )
            self.db.executemany(
                "INSERT INTO attr_history(version_id, key, type, num, text, set_at, author) VALUES(?,?,'str',NULL,?,?,?)",
                [(vid, k, v, created, author) for k, v in meta.items()],
            )
        return self.version_by_id(vid)

    # -- reads -----------------------------------------------------------------------
    def _info(self, row) -> VersionInfo:
        vid = row[0]
        info = VersionInfo(model=row[1], number=row[2], content_id=row[3], message=row[4], author=row[5],
                           created=row[6], format=row[7], size=row[8], stored=row[9], params=row[10],
                           n_tensors=row[11], dtype=row[12], id=vid)
        info.parents = [
            f"{m}@{n}" for m, n in self.db.execute(
                "SELECT m.name, v.number FROM lineage l JOIN versions v ON v.id=l.parent "
                "JOIN models m ON m.id=v.model_id WHERE l.child=? ORDER BY v.id", (vid,))
        ]
        info.meta = {k: (t if ty == "str" else n) for k, ty, n, t in self.db.execute(
            "SELECT key, type, num, text FROM attrs WHERE version_id=? ORDER BY key", (vid,))}
        return info

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
        return [self._info(r) for r in rows]

    def all_versions(self) -> list[tuple[int, str]]:
        """(version id, content id) of every version (for gc and fsck)."""
        return list(self.db.execute("SELECT id, content_id FROM versions"))

    def children(self, vid: int) -> list[VersionInfo]:
        return [self.version_by_id(c) for (c,) in self.db.execute("SELECT child FROM lineage WHERE parent=?", (vid,))]

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
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")
        return False
