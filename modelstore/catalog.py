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
compiler adds for SQLite (modelstore/query.py).
"""

from __future__ import annotations

import gc
import math
import re
import sqlite3
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

from modelstore.errors import InvalidInputError, NotFoundError

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

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
MAX_NAME = 200
_HEX = re.compile(r"^[0-9a-f]{8,32}$")

# Names users give (docs/QUERY.md "Names").
META_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,99}$")
METRIC_NAME = META_KEY
DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,199}$")
TAG_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,99}$")
MAX_META_VALUE = 10_000
MAX_COMMENT = 10_000

# Built-in attributes (computed at commit; a user attribute cannot take these names).
BUILTINS = ("params", "size", "stored", "dtype", "tensors", "format", "created", "author", "model",
            "version", "message", "parent", "tag", "content_id")


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


# -- typed values ------------------------------------------------------------------------
# A value is stored as (type, num, text): 'i' integer and 'f' float (num), 'b' bool (num 0/1),
# 't' timestamp (num = seconds since the epoch, shown as UTC ISO-8601), 's' string (text).
# `text` is set for strings only and `num` for everything else, so an index on (key, text) holds
# exactly the string values and one on (key, num) the numeric ones.
_INT = re.compile(r"^[+-]?(?:0|[1-9][0-9]*)$")
_FLOAT = re.compile(r"^[+-]?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")
_TIME = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?)?"
                   r"(?:Z|[+-][0-9]{2}:[0-9]{2})?$")
MAX_EXACT_INT = 2**53
_MAYBE_TYPED = frozenset("0123456789+-.tTfF")  # first characters of numbers, dates, true, false


def iso_utc(dt: datetime) -> str:
    """Canonical form of a timestamp: UTC, 'YYYY-MM-DDTHH:MM:SS[.ffffff]Z'."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    dt = dt.astimezone(timezone.utc)
    return (f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
            + (f".{dt.microsecond:06d}" if dt.microsecond else "") + "Z")


def parse_time(text: str) -> datetime | None:
    """An ISO-8601 date or date-time (naive = UTC), or None."""
    if not _TIME.match(text):
        return None
    try:
        dt = datetime.fromisoformat(text.replace(" ", "T", 1) if len(text) > 10 else text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    try:
        dt.timestamp()
    except (OverflowError, ValueError, OSError):
        return None
    return dt


def created_iso(value) -> str | None:
    """A version's `created`: canonical UTC ISO-8601 to the second (so text order is time order)."""
    if value is None or value == "":
        return None
    dt = value if isinstance(value, datetime) else parse_time(str(value))
    if dt is None:
        raise InvalidInputError(f"created {str(value)[:60]!r} is not an ISO-8601 timestamp")
    return iso_utc(dt.replace(microsecond=0))


def type_value(value) -> tuple[str, float | None, str | None]:  # noqa: C901 - one rule per type
    """Type a metadata value: bool, number, timestamp or string (docs/QUERY.md "Typed values").

    Strings (as given on the command line) are typed by their form: `true`/`false` (any case)
    are bools, a decimal number is an int or a float, an ISO-8601 date or date-time is a
    timestamp, anything else stays a string. Python values keep their type.
    """
    cls = value.__class__
    if cls is float and math.isfinite(value):
        return ("f", value, None)
    if cls is str and len(value) <= 64 and value.isascii() and (not value or value[0] not in _MAYBE_TYPED) \
            and "\x00" not in value:
        return ("s", None, value)  # the common case, decided without regexes
    if cls is str and len(value) >= 10 and value[4:5] == "-" and value[:4].isdigit():
        dt = parse_time(value)  # dates go straight to the date rule (a number has no '-' there)
        if dt is not None:
            return ("t", dt.timestamp(), None)
    if isinstance(value, bool):
        return ("b", 1.0 if value else 0.0, None)
    if isinstance(value, int):
        if abs(value) <= MAX_EXACT_INT:
            return ("i", float(value), None)
        return _check_text(str(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInputError(f"metadata value {value!r} is not a finite number")
        return ("f", value, None)
    if isinstance(value, datetime):
        return ("t", (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp(), None)
    text = _check_text(value if isinstance(value, str) else str(value))[2]
    if not text or text[0] not in _MAYBE_TYPED:
        return ("s", None, text)
    if text[0] in "tTfF":
        low = text.lower()
        if low in ("true", "false"):
            return ("b", 1.0 if low == "true" else 0.0, None)
        return ("s", None, text)
    if _INT.match(text):
        n = int(text)
        if abs(n) <= MAX_EXACT_INT:
            return ("i", float(n), None)
        return ("s", None, text)
    if _FLOAT.match(text) and any(c.isdigit() for c in text):
        f = float(text)
        if math.isfinite(f):
            return ("f", f, None)
        return ("s", None, text)
    dt = parse_time(text)
    if dt is not None:
        return ("t", dt.timestamp(), None)
    return ("s", None, text)


def _check_text(text: str) -> tuple[str, None, str]:
    if len(text) > MAX_META_VALUE:
        raise InvalidInputError(f"metadata value is longer than {MAX_META_VALUE} characters")
    if "\x00" in text:
        raise InvalidInputError("metadata value contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError("metadata value is not valid UTF-8 text") from None
    return ("s", None, text)


def typed(type_: str, num, text):
    """The Python value of a stored (type, num, text)."""
    if type_ == "s":
        return text
    if type_ == "i":
        return int(num)
    if type_ == "f":
        return float(num)
    if type_ == "b":
        return bool(num)
    if type_ == "t":
        return iso_utc(datetime.fromtimestamp(num, timezone.utc))
    return text if text is not None else num


_VALID_NAMES: dict[str, set] = {"key": set(), "dataset": set(), "metric": set(), "model": set()}  # memo (bulk)
_CANONICAL_TIME = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$")


def _valid_canonical(text: str) -> bool:
    try:
        datetime.fromisoformat(text[:-1])
        return True
    except ValueError:
        return False


def _seen(kind: str, name) -> bool:
    return name in _VALID_NAMES[kind]


def _remember(kind: str, name: str) -> None:
    memo = _VALID_NAMES[kind]
    if len(memo) > 100_000:
        memo.clear()
    memo.add(name)


def check_meta_key(key, *, builtin_ok: bool = True) -> str:
    if builtin_ok and key.__class__ is str and key in _VALID_NAMES["key"]:
        return key
    if not isinstance(key, str) or not META_KEY.match(key):
        raise InvalidInputError(
            f"invalid metadata key {str(key)[:60]!r}: letters, digits, '_', '.', '-'; starting with a letter or '_'")
    if not builtin_ok and key in BUILTINS:
        raise InvalidInputError(f"{key!r} is a built-in attribute computed at commit; choose another key")
    _remember("key", key)
    return key


def check_dataset(name) -> str:
    if name.__class__ is str and name in _VALID_NAMES["dataset"]:
        return name
    if not isinstance(name, str) or not DATASET_NAME.match(name):
        raise InvalidInputError(
            f"invalid dataset name {str(name)[:60]!r}: letters, digits, '_', '.', '/', '-'; starting with a letter or digit")
    _remember("dataset", name)
    return name


def check_metric_name(name) -> str:
    if name.__class__ is str and name in _VALID_NAMES["metric"]:
        return name
    if not isinstance(name, str) or not METRIC_NAME.match(name):
        raise InvalidInputError(
            f"invalid metric name {str(name)[:60]!r}: letters, digits, '_', '.', '-'; starting with a letter or '_'")
    _remember("metric", name)
    return name


def scaled(text: str, factor: Decimal) -> float:
    """float(text × factor), correctly rounded (so '93%' and 0.93 are the same double)."""
    try:
        return float(Decimal(text) * factor)
    except (ArithmeticError, ValueError):
        raise InvalidInputError(f"{text[:60]!r} is not a number") from None


def metric_value(value, name: str = "metric") -> float:
    """A metric value: a finite number (a string may end in '%': '93%' is 0.93)."""
    cls = value.__class__
    if cls is float:
        f = value
    elif cls is bool:
        raise InvalidInputError(f"metric {name} = {value!r} is not a number")
    elif isinstance(value, (int, float)):
        f = float(value)
    else:
        text = str(value).strip()
        percent = text.endswith("%")
        if percent:
            text = text[:-1]
        if not _FLOAT.match(text) or not any(c.isdigit() for c in text):
            raise InvalidInputError(f"metric {name} = {str(value)[:60]!r} is not a number")
        f = scaled(text, Decimal(1) / 100) if percent else float(text)
    if not math.isfinite(f):
        raise InvalidInputError(f"metric {name} = {value!r} is not a finite number")
    return f


def check_metrics(metrics) -> list[tuple[str, str, float]]:
    """[(dataset, name, value)] validated; a later duplicate (dataset, name) wins."""
    out: dict[tuple[str, str], float] = {}
    datasets, names = _VALID_NAMES["dataset"], _VALID_NAMES["metric"]
    for item in metrics or ():
        try:
            dataset, name, value = item
        except (TypeError, ValueError):
            raise InvalidInputError(f"a metric is (dataset, name, value), not {item!r}") from None
        if dataset.__class__ is not str or dataset not in datasets:
            check_dataset(dataset)
        if name.__class__ is not str or name not in names:
            check_metric_name(name)
        out[(dataset, name)] = value if value.__class__ is float and math.isfinite(value) else metric_value(value, name)
    return [(d, n, v) for (d, n), v in out.items()]


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


def _chunks(items: Iterable, n: int):
    buf = []
    for item in items:
        buf.append(item)
        if len(buf) >= n:
            yield buf
            buf = []
    if buf:
        yield buf


# Indexes only queries use: a bulk load drops and rebuilds them (name -> DDL).
_QUERY_INDEXES = {
    m.group(1): m.group(0).rstrip(";") for m in re.finditer(r"CREATE INDEX IF NOT EXISTS (\w+) ON [^;]+;", _SCHEMA)
    if m.group(1).startswith(("versions_size", "versions_params", "versions_created", "attrs_", "metrics_"))
}

_VERSION_COLS = ("v.id, m.name, v.number, v.content_id, v.message, v.author, v.created, v.format, "
                 "v.size, v.stored, v.params, v.n_tensors, v.dtype")
_BATCH = 500  # ids per IN (...) when loading many versions


class Catalog:
    def __init__(self, path: Path, readonly: bool = False):
        self.path = path
        uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
        try:
            self.db = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA busy_timeout=60000")
            self.db.execute("PRAGMA cache_size=-131072")  # 128 MiB: queries probe many pages
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
            if version != 0 and self.db.execute("SELECT 1 FROM sqlite_master WHERE name='versions'").fetchone():
                from modelstore.errors import FormatError

                raise FormatError(f"catalog schema {version} predates this modelstore's ({SCHEMA_VERSION}) and the "
                                  "store format is unreleased: re-create the store")
            self.db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + f"PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")

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
        metrics: list[tuple[str, str, object]] | None = None,
    ) -> VersionInfo:
        """Insert a version and everything that describes it, atomically; numbers it.

        `meta` values are typed here (type_value); `metrics` is [(dataset, name, value)].
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
                "INSERT INTO attrs(version_id, key_id, type, num, text) VALUES(?, ?, ?, ?, ?)",
                [(vid, self.intern("attr_keys", k), t, n, x) for k, t, n, x in typed_meta],
            )
            self.db.executemany(
                "INSERT INTO metrics(version_id, name_id, dataset_id, value) VALUES(?, ?, ?, ?)",
                [(vid, self.intern("metric_names", n), self.intern("datasets", d), v) for d, n, v in checked],
            )
        return self.version_by_id(vid)

    _NAME_TABLES = ("attr_keys", "metric_names", "datasets")

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
        if rebuild_indexes is None:
            rebuild_indexes = self.db.execute("SELECT 1 FROM versions LIMIT 1").fetchone() is None
        total = 0
        if not rebuild_indexes:
            for chunk in _chunks(records, batch):
                prepared = self._prepare(chunk)
                with self.transaction():
                    total += self._insert_batch(prepared)
            return total
        (cache,) = self.db.execute("PRAGMA cache_size").fetchone()
        self.db.execute("PRAGMA cache_size=-1048576")
        try:
            with self.transaction():
                for name in _QUERY_INDEXES:
                    self.db.execute(f"DROP INDEX IF EXISTS {name}")
                for chunk in _chunks(records, batch):
                    total += self._insert_batch(self._prepare(chunk))
                for ddl in _QUERY_INDEXES.values():
                    self.db.execute(ddl)
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # do not leave a catalog-sized WAL behind
        finally:
            self.db.execute(f"PRAGMA cache_size={int(cache)}")
        return total

    @staticmethod
    def _prepare(recs: list[dict]) -> list:
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

    def _insert_batch(self, prepared: list) -> int:
        """Insert prepared records (inside the caller's transaction)."""
        db = self.db
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
                next_number[mid] = top + 1
        for name in names:
            if name not in model_ids:
                mid = db.execute("INSERT INTO models(name, created) VALUES(?, ?)", (name, now)).lastrowid
                model_ids[name] = mid
                next_number[mid] = 1
        ids = {t: dict(db.execute(f"SELECT name, id FROM {t}")) for t in self._NAME_TABLES}

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
            if self.db.execute("DELETE FROM versions WHERE id = ?", (vid,)).rowcount != 1:
                raise NotFoundError(f"version id {vid} not found")

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
