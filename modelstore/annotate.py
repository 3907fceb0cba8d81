"""Describing versions after commit: metadata, metrics, tags, comments; and reading lineage.

Every function takes a Catalog and a REF (or a VersionInfo) and writes in one `BEGIN IMMEDIATE`
transaction (the REF is resolved inside it), after validating all of its input: a bad value
anywhere writes nothing. None of them touches weights, so a version's content id never changes.
Two processes annotating the same store at once are serialised by SQLite; nothing is lost.

History: a value replaced by `set_meta`/`unset_meta` moves to `attr_history`, and a metric
replaced by a re-evaluation to `metric_history`, each with when and by whom it was replaced.
"""

from __future__ import annotations

import getpass
import os
from datetime import datetime, timezone

from modelstore.catalog import (
    MAX_COMMENT,
    TAG_NAME,
    Catalog,
    VersionInfo,
    check_dataset,
    check_meta_key,
    check_metric_name,
    check_text,
    metric_value,
    now_iso,
    type_value,
    typed,
)
from modelstore.errors import InvalidInputError, NotFoundError

__all__ = [
    "set_meta", "unset_meta", "meta_history", "add_metrics", "metric_history", "parse_metric_option",
    "parse_metric_values", "tag", "untag", "tags", "comment", "comments", "lineage", "default_author",
]

MAX_LINEAGE = 100_000  # versions listed by lineage() before it stops walking


def default_author() -> str:
    try:
        return os.environ.get("MODELSTORE_AUTHOR") or getpass.getuser()
    except Exception:
        return "unknown"


def _vid(catalog: Catalog, ref) -> VersionInfo:
    if isinstance(ref, VersionInfo):
        return catalog.version_by_id(ref.id)
    return catalog.resolve(ref)


# -- metadata --------------------------------------------------------------------------------
def set_meta(catalog: Catalog, ref, values: dict, *, author: str | None = None) -> VersionInfo:
    """Set typed metadata on a version (strings are typed as at commit: 1.0, true, 2026-01-02 ...)."""
    if not values:
        raise InvalidInputError("no KEY=VALUE given")
    rows = [(check_meta_key(k, builtin_ok=False), *type_value(v)) for k, v in values.items()]
    author = author or default_author()
    now = now_iso()
    with catalog.transaction() as db:
        info = _vid(catalog, ref)
        for key, ty, num, text in rows:
            kid = catalog.intern("attr_keys", key)
            _retire_attr(db, info.id, kid, now, author)
            db.execute("INSERT INTO attrs(version_id, key_id, type, num, text, set_at, author) VALUES(?,?,?,?,?,?,?)",
                       (info.id, kid, ty, num, text, now, author))
    return catalog.version_by_id(info.id)


def unset_meta(catalog: Catalog, ref, keys: list[str], *, author: str | None = None) -> VersionInfo:
    """Remove metadata keys from a version (their last values stay in the history)."""
    if not keys:
        raise InvalidInputError("no KEY given")
    for k in keys:
        check_meta_key(k)
    author = author or default_author()
    now = now_iso()
    with catalog.transaction() as db:
        info = _vid(catalog, ref)
        kids = {k: catalog.name_id("attr_keys", k) for k in keys}
        missing = [k for k, kid in kids.items() if kid is None or db.execute(
            "SELECT 1 FROM attrs WHERE version_id = ? AND key_id = ?", (info.id, kid)).fetchone() is None]
        if missing:
            raise NotFoundError(f"{info.ref} has no metadata key {missing[0]!r}")
        for kid in kids.values():
            _retire_attr(db, info.id, kid, now, author)
    return catalog.version_by_id(info.id)


def _retire_attr(db, vid: int, key_id: int, now: str, author: str) -> None:
    db.execute("INSERT INTO attr_history(version_id, key_id, type, num, text, set_at, author, replaced_at, replaced_by)"
               " SELECT a.version_id, a.key_id, a.type, a.num, a.text, COALESCE(a.set_at, v.created), "
               "COALESCE(a.author, v.author), ?, ? FROM attrs a JOIN versions v ON v.id = a.version_id "
               "WHERE a.version_id = ? AND a.key_id = ?", (now, author, vid, key_id))
    db.execute("DELETE FROM attrs WHERE version_id = ? AND key_id = ?", (vid, key_id))


def meta_history(catalog: Catalog, ref, key: str | None = None) -> list[dict]:
    """Every value a version's metadata had, oldest first: {key, value, set_at, author, replaced_at, replaced_by}."""
    with catalog.snapshot() as db:
        info = _vid(catalog, ref)
        out = []
        for k, ty, num, text, set_at, by, rat, rby in db.execute(
                "SELECT k.name, h.type, h.num, h.text, h.set_at, h.author, h.replaced_at, h.replaced_by "
                "FROM attr_history h JOIN attr_keys k ON k.id = h.key_id "
                "WHERE h.version_id = ? AND (? IS NULL OR k.name = ?) ORDER BY k.name, h.id", (info.id, key, key)):
            out.append({"key": k, "value": typed(ty, num, text), "set_at": set_at, "author": by,
                        "replaced_at": rat, "replaced_by": rby})
        for k, ty, num, text, set_at, by in db.execute(
                "SELECT k.name, a.type, a.num, a.text, a.set_at, a.author FROM attrs a JOIN attr_keys k ON k.id = a.key_id"
                " WHERE a.version_id = ? AND (? IS NULL OR k.name = ?) ORDER BY k.name", (info.id, key, key)):
            out.append({"key": k, "value": typed(ty, num, text), "set_at": set_at or info.created,
                        "author": by or info.author, "replaced_at": None, "replaced_by": None})
    out.sort(key=lambda d: (d["key"], d["replaced_at"] is None, d["replaced_at"] or ""))
    return out


# -- metrics ---------------------------------------------------------------------------------
def parse_metric_values(items: list[str] | dict) -> dict[str, float]:
    """['mAP=0.41', 'latency_ms=12.5'] (or a dict) -> {name: value}, validated."""
    if isinstance(items, dict):
        pairs = list(items.items())
    else:
        pairs = []
        for item in items or []:
            if "=" not in item:
                raise InvalidInputError(f"metric {item!r} is not NAME=VALUE")
            name, value = item.split("=", 1)
            pairs.append((name.strip(), value))
    out = {}
    for name, value in pairs:
        check_metric_name(name)
        out[name] = metric_value(value, name)
    if not out:
        raise InvalidInputError("no NAME=VALUE metric given")
    return out


def parse_metric_option(text: str) -> tuple[str, str, float]:
    """`--metric DATASET:NAME=VALUE` -> (dataset, name, value)."""
    if ":" not in text or "=" not in text.split(":", 1)[1]:
        raise InvalidInputError(f"--metric {text[:80]!r} is not DATASET:NAME=VALUE (e.g. imagenet-val:accuracy=0.93)")
    dataset, rest = text.split(":", 1)
    name, value = rest.split("=", 1)
    check_dataset(dataset)
    check_metric_name(name.strip())
    return dataset, name.strip(), metric_value(value, name.strip())


def add_metrics(catalog: Catalog, ref, dataset: str, values, *, author: str | None = None) -> VersionInfo:
    """Record metrics of a version on a validation dataset; a re-evaluation replaces the value
    queries see and keeps the old one in the history."""
    check_dataset(dataset)
    vals = parse_metric_values(values)
    author = author or default_author()
    now = now_iso()
    with catalog.transaction() as db:
        info = _vid(catalog, ref)
        did = catalog.intern("datasets", dataset)
        for name, value in vals.items():
            nid = catalog.intern("metric_names", name)
            key = (info.id, nid, did)
            db.execute("INSERT INTO metric_history(version_id, name_id, dataset_id, value, recorded, author, "
                       "replaced_at) SELECT m.version_id, m.name_id, m.dataset_id, m.value, COALESCE(m.recorded, "
                       "v.created), COALESCE(m.author, v.author), ? FROM metrics m JOIN versions v ON v.id = m.version_id"
                       " WHERE m.version_id = ? AND m.name_id = ? AND m.dataset_id = ?", (now, *key))
            db.execute("DELETE FROM metrics WHERE version_id = ? AND name_id = ? AND dataset_id = ?", key)
            db.execute("INSERT INTO metrics(version_id, name_id, dataset_id, value, recorded, author) "
                       "VALUES(?,?,?,?,?,?)", (*key, value, now, author))
    return catalog.version_by_id(info.id)


def metric_history(catalog: Catalog, ref, dataset: str | None = None, name: str | None = None) -> list[dict]:
    """Every value recorded for a version's metrics, oldest first: {dataset, name, value, recorded, author, latest}."""
    with catalog.snapshot() as db:
        info = _vid(catalog, ref)
        args = (info.id, dataset, dataset, name, name)
        join = "m JOIN datasets d ON d.id = m.dataset_id JOIN metric_names n ON n.id = m.name_id"
        where = "m.version_id = ? AND (? IS NULL OR d.name = ?) AND (? IS NULL OR n.name = ?)"
        cols = "d.name, n.name, m.value, m.recorded, m.author"
        out = [{"dataset": d, "name": n, "value": v, "recorded": r, "author": a, "latest": False}
               for d, n, v, r, a in db.execute(f"SELECT {cols} FROM metric_history {join} WHERE {where} "
                                               "ORDER BY m.id", args)]
        out += [{"dataset": d, "name": n, "value": v, "recorded": r or info.created, "author": a or info.author,
                 "latest": True}
                for d, n, v, r, a in db.execute(f"SELECT {cols} FROM metrics {join} WHERE {where}", args)]
    out.sort(key=lambda d: (d["dataset"], d["name"], d["latest"]))
    return out


# -- tags ------------------------------------------------------------------------------------
def check_tag(name) -> str:
    if not isinstance(name, str) or not TAG_NAME.match(name):
        raise InvalidInputError(f"invalid tag {str(name)[:60]!r}: a letter, then letters, digits, '.', '_', '-'"
                                " (at most 100)")
    if name == "latest":
        raise InvalidInputError("'latest' is reserved (MODEL@latest is always the newest version)")
    return name


def tag(catalog: Catalog, ref, name: str, *, author: str | None = None) -> dict:
    """Point MODEL@NAME at a version (moving the tag if it pointed elsewhere).

    Returns {"tag", "ref", "model", "previous"} (previous: the ref it pointed at, or None)."""
    check_tag(name)
    author = author or default_author()
    with catalog.transaction() as db:
        info = _vid(catalog, ref)
        (model_id,) = db.execute("SELECT model_id FROM versions WHERE id = ?", (info.id,)).fetchone()
        prev = db.execute("SELECT v.number FROM tags t JOIN versions v ON v.id = t.version_id "
                          "WHERE t.model_id = ? AND t.name = ?", (model_id, name)).fetchone()
        db.execute("DELETE FROM tags WHERE model_id = ? AND name = ?", (model_id, name))
        db.execute("INSERT INTO tags(model_id, name, version_id, created, author) VALUES(?,?,?,?,?)",
                   (model_id, name, info.id, now_iso(), author))
    return {"tag": name, "ref": info.ref, "model": info.model,
            "previous": f"{info.model}@{prev[0]}" if prev else None}


def untag(catalog: Catalog, ref, name: str) -> dict:
    """Delete tag NAME of the model of REF (REF may be MODEL, MODEL@N or MODEL@NAME itself)."""
    check_tag(name)
    with catalog.transaction() as db:
        if isinstance(ref, str) and "@" not in ref and db.execute(
                "SELECT 1 FROM models WHERE name = ?", (ref,)).fetchone():
            model = ref
        else:
            model = _vid(catalog, ref).model
        row = db.execute("SELECT t.model_id, v.number FROM tags t JOIN models m ON m.id = t.model_id "
                         "JOIN versions v ON v.id = t.version_id WHERE m.name = ? AND t.name = ?",
                         (model, name)).fetchone()
        if row is None:
            raise NotFoundError(f"model {model!r} has no tag {name!r}")
        db.execute("DELETE FROM tags WHERE model_id = ? AND name = ?", (row[0], name))
    return {"tag": name, "model": model, "was": f"{model}@{row[1]}"}


def tags(catalog: Catalog, model: str | None = None) -> list[dict]:
    """Tags of one model (or of all): {model, tag, ref, created, author}."""
    with catalog.snapshot() as db:
        if model is not None and db.execute("SELECT 1 FROM models WHERE name = ?", (model,)).fetchone() is None:
            raise NotFoundError(f"no model named {model[:80]!r}")
        return [{"model": m, "tag": t, "ref": f"{m}@{n}", "created": c, "author": a}
                for m, t, n, c, a in db.execute(
                    "SELECT m.name, t.name, v.number, t.created, t.author FROM tags t JOIN models m ON m.id = t.model_id "
                    "JOIN versions v ON v.id = t.version_id WHERE (? IS NULL OR m.name = ?) ORDER BY m.name, t.name",
                    (model, model))]


# -- comments --------------------------------------------------------------------------------
def comment(catalog: Catalog, ref, text: str, *, author: str | None = None) -> dict:
    """Add a comment to a version: {"id", "ref", "author", "created", "text"}."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError("a comment needs some text")
    check_text(text, "a comment", MAX_COMMENT)
    author = author or default_author()
    created = datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    with catalog.transaction() as db:
        info = _vid(catalog, ref)
        cid = db.execute("INSERT INTO comments(version_id, author, created, text) VALUES(?,?,?,?)",
                         (info.id, author, created, text)).lastrowid
    return {"id": cid, "ref": info.ref, "author": author, "created": created, "text": text}


def comments(catalog: Catalog, ref) -> list[dict]:
    """A version's comments, oldest first."""
    info = _vid(catalog, ref)
    return [{**c, "ref": info.ref} for c in info.comments]


# -- lineage ---------------------------------------------------------------------------------
def lineage(catalog: Catalog, ref, *, max_depth: int | None = None) -> dict:
    """Ancestors (walking parents) and descendants (walking children) of a version.

    {"ref", "ancestors": [...], "descendants": [...]}; each entry {ref, depth, content_id,
    created, message, parents} with depth 1 for direct parents/children, in breadth-first
    order. Each version appears once (at its smallest depth); cycles cannot loop.
    """
    if max_depth is not None and max_depth < 1:
        raise InvalidInputError("max depth must be at least 1")
    with catalog.snapshot() as db:
        info = _vid(catalog, ref)
        up = _walk(db, info.id, "SELECT child, parent FROM lineage WHERE child IN ({})", max_depth)
        down = _walk(db, info.id, "SELECT parent, child FROM lineage WHERE parent IN ({})", max_depth)
        infos = {i.id: i for i in catalog.versions_by_ids([v for v, _ in up] + [v for v, _ in down])}

    def entry(vid, depth):
        i = infos[vid]
        return {"ref": i.ref, "depth": depth, "content_id": i.content_id, "created": i.created,
                "message": i.message, "parents": i.parents}

    return {"ref": info.ref, "content_id": info.content_id, "parents": info.parents,
            "ancestors": [entry(v, d) for v, d in up if v in infos],
            "descendants": [entry(v, d) for v, d in down if v in infos]}


def _walk(db, start: int, sql: str, max_depth: int | None) -> list[tuple[int, int]]:
    seen = {start}
    out: list[tuple[int, int]] = []
    frontier = [start]
    depth = 0
    while frontier and (max_depth is None or depth < max_depth) and len(out) < MAX_LINEAGE:
        depth += 1
        nxt: list[int] = []
        for i in range(0, len(frontier), 500):
            chunk = frontier[i:i + 500]
            for _, other in db.execute(sql.format(",".join("?" * len(chunk))) + " ORDER BY 2", chunk):
                if other not in seen:
                    seen.add(other)
                    nxt.append(other)
                    out.append((other, depth))
        frontier = nxt
    return out
