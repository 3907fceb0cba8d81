"""The catalog's SQLite schema: DDL, its version, the query-only indexes, and opening a file.

`SCHEMA_VERSION` is the `PRAGMA user_version` of a catalog this code writes; `migrate` creates
the tables of a new catalog and refuses one it cannot read (docs/FORMAT.md, "Catalog"). The
layout and why it is shaped so for queries are described in modelstore/catalog.py.
"""

from __future__ import annotations

import json
import re
import sqlite3

from modelstore.errors import FormatError

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models(
  id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions(
  id INTEGER PRIMARY KEY, model_id INTEGER NOT NULL REFERENCES models(id), number INTEGER NOT NULL,
  content_id TEXT NOT NULL, message TEXT NOT NULL, author TEXT NOT NULL, created TEXT NOT NULL,
  format TEXT NOT NULL, size INTEGER NOT NULL, stored INTEGER NOT NULL, params INTEGER NOT NULL,
  n_tensors INTEGER NOT NULL, dtype TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS versions_model ON versions(model_id, number);
CREATE INDEX IF NOT EXISTS versions_content ON versions(content_id);
CREATE INDEX IF NOT EXISTS versions_size ON versions(size);
CREATE INDEX IF NOT EXISTS versions_params ON versions(params);
CREATE INDEX IF NOT EXISTS versions_created ON versions(created);
CREATE TABLE IF NOT EXISTS lineage(
  child INTEGER NOT NULL REFERENCES versions(id), parent INTEGER NOT NULL REFERENCES versions(id),
  PRIMARY KEY(child, parent)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS lineage_parent ON lineage(parent, child);
CREATE TABLE IF NOT EXISTS tensors(
  content_id TEXT NOT NULL, name TEXT NOT NULL, dtype TEXT NOT NULL, shape TEXT NOT NULL,
  nbytes INTEGER NOT NULL, PRIMARY KEY(content_id, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attr_keys(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS metric_names(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS datasets(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS attrs(
  version_id INTEGER NOT NULL REFERENCES versions(id), key_id INTEGER NOT NULL REFERENCES attr_keys(id),
  type TEXT NOT NULL, num REAL, text TEXT, set_at TEXT, author TEXT, PRIMARY KEY(version_id, key_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS attrs_text ON attrs(key_id, text) WHERE text IS NOT NULL;
CREATE INDEX IF NOT EXISTS attrs_num ON attrs(key_id, num, version_id, type) WHERE num IS NOT NULL;
CREATE TABLE IF NOT EXISTS attr_history(
  id INTEGER PRIMARY KEY, version_id INTEGER NOT NULL REFERENCES versions(id),
  key_id INTEGER NOT NULL REFERENCES attr_keys(id), type TEXT NOT NULL, num REAL, text TEXT, set_at TEXT,
  author TEXT, replaced_at TEXT NOT NULL, replaced_by TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS attr_history_version ON attr_history(version_id, key_id, id);
CREATE TABLE IF NOT EXISTS metrics(
  version_id INTEGER NOT NULL REFERENCES versions(id), name_id INTEGER NOT NULL REFERENCES metric_names(id),
  dataset_id INTEGER NOT NULL REFERENCES datasets(id), value REAL NOT NULL, recorded TEXT, author TEXT,
  PRIMARY KEY(version_id, name_id, dataset_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS metrics_nv ON metrics(name_id, value, version_id, dataset_id);
CREATE TABLE IF NOT EXISTS metric_history(
  id INTEGER PRIMARY KEY, version_id INTEGER NOT NULL REFERENCES versions(id),
  name_id INTEGER NOT NULL REFERENCES metric_names(id), dataset_id INTEGER NOT NULL REFERENCES datasets(id),
  value REAL NOT NULL, recorded TEXT, author TEXT, replaced_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS metric_history_version ON metric_history(version_id, dataset_id, name_id, id);
CREATE TABLE IF NOT EXISTS tags(
  model_id INTEGER NOT NULL REFERENCES models(id), name TEXT NOT NULL,
  version_id INTEGER NOT NULL REFERENCES versions(id), created TEXT NOT NULL, author TEXT NOT NULL,
  PRIMARY KEY(model_id, name));
CREATE INDEX IF NOT EXISTS tags_version ON tags(version_id);
CREATE INDEX IF NOT EXISTS tags_name ON tags(name, version_id);
CREATE TABLE IF NOT EXISTS comments(
  id INTEGER PRIMARY KEY, version_id INTEGER NOT NULL REFERENCES versions(id), author TEXT NOT NULL,
  created TEXT NOT NULL, text TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS comments_version ON comments(version_id, id);
"""

# Indexes only queries use: a bulk load drops and rebuilds them (name -> DDL).
_QUERY_INDEXES = {
    m.group(1): m.group(0).rstrip(";") for m in re.finditer(r"CREATE INDEX IF NOT EXISTS (\w+) ON [^;]+;", _SCHEMA)
    if m.group(1).startswith(("versions_size", "versions_params", "versions_created", "attrs_", "metrics_"))
}

# Tables that intern attribute keys, metric names and dataset names (name -> small integer id).
NAME_TABLES = ("attr_keys", "metric_names", "datasets")


def migrate(db: sqlite3.Connection) -> None:
    """Create the tables of a new catalog; refuse a catalog of another schema version."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise FormatError(f"catalog schema {version} is newer than this modelstore ({SCHEMA_VERSION}); upgrade")
    if version < SCHEMA_VERSION:
        if version != 0 and db.execute("SELECT 1 FROM sqlite_master WHERE name='versions'").fetchone():
            raise FormatError(f"catalog schema {version} predates this modelstore's ({SCHEMA_VERSION}) and the "
                              "store format is unreleased: re-create the store")
        db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + f"PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")


_RETIRED_DDL = ("CREATE TABLE IF NOT EXISTS retired_numbers("
                "model_id INTEGER PRIMARY KEY REFERENCES models(id), last INTEGER NOT NULL)")


# The metadata a version's source file carried (safetensors __metadata__), verbatim, so a
# checkout writes it back; created by the first commit that has some (docs/FORMAT.md §7).
MAX_FILE_META = 1 << 20  # characters of keys and values
_FILE_META_DDL = ("CREATE TABLE IF NOT EXISTS file_meta("
                  "version_id INTEGER PRIMARY KEY REFERENCES versions(id), json TEXT NOT NULL)")


def file_meta_size(meta) -> int | None:
    """Characters of keys and values of a file's metadata, or None unless it is a dict of
    strings (what set_file_meta keeps; at most MAX_FILE_META)."""
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        return None
    return sum(len(k) + len(v) for k, v in meta.items())


def has_table(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def set_file_meta(db: sqlite3.Connection, vid: int, meta: dict[str, str] | None) -> None:
    """Record the source file's own metadata of version `vid` (inside the caller's transaction)."""
    if meta:
        db.execute(_FILE_META_DDL)
        db.execute("INSERT OR REPLACE INTO file_meta(version_id, json) VALUES(?, ?)",
                   (vid, json.dumps(meta, ensure_ascii=False, sort_keys=True)))


def file_meta(db: sqlite3.Connection, vid: int) -> dict[str, str] | None:
    """The metadata version `vid`'s source file carried, or None."""
    if not has_table(db, "file_meta"):
        return None
    row = db.execute("SELECT json FROM file_meta WHERE version_id = ?", (vid,)).fetchone()
    return json.loads(row[0]) if row else None


def next_number(db: sqlite3.Connection, model_id: int) -> int:
    """The number of a model's next version: above every number it ever used, deleted ones
    included (`retired_numbers`, created by the first delete; see docs/FORMAT.md §7)."""
    (number,) = db.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM versions WHERE model_id=?", (model_id,)).fetchone()
    if has_table(db, "retired_numbers"):
        row = db.execute("SELECT last FROM retired_numbers WHERE model_id=?", (model_id,)).fetchone()
        if row is not None:
            number = max(number, row[0] + 1)
    return number
