"""Catalog rows of versions as sync documents: export one, import (or merge) one, list state.

A version's identity across stores is (model, uid): the uid is derived from its content id,
created time, author and message (`version_uid`), so the same weights committed twice with
another message stay two versions; its number is per store (an imported version takes the
model's next number). Import runs in one SQLite transaction:
the version row, lineage (parents found here by model and content id), typed metadata,
metrics and their histories, comments and tags — a refusal anywhere writes nothing.
Merging never loses a value: when both sides changed one, the newer becomes current and
the other goes to the history; comments and history rows are added unless already here.
"""

from __future__ import annotations

import hashlib
import json
import math
import re

from modelstore.catalog import (
    MAX_COMMENT,
    Catalog,
    check_dataset,
    check_meta_key,
    check_metric_name,
    check_model_name,
    created_iso,
    now_iso,
)
from modelstore.catalog_schema import MAX_FILE_META, file_meta_size, next_number, set_file_meta
from modelstore.errors import (  # noqa: F401
    InvalidInputError,
    ModelstoreError,
    NotFoundError,
    TagConflictError,
)

_CID = re.compile(r"^[0-9a-f]{32}$")
_TYPES = frozenset("sifbt")
MAX_TEXT = 100_000


# -- export --------------------------------------------------------------------------------
def export_version(catalog: Catalog, vid: int) -> dict:
    """Everything the catalog says about one version, as a JSON-able document."""
    db = catalog.db
    with catalog.snapshot():
        row = db.execute("SELECT m.name, v.number, v.content_id, v.message, v.author, v.created, v.format, v.size, "
                         "v.stored, v.params, v.n_tensors, v.dtype FROM versions v JOIN models m ON m.id = v.model_id "
                         "WHERE v.id = ?", (vid,)).fetchone()
        if row is None:
            raise NotFoundError(f"version id {vid} not found")
        keys = ("model", "number", "content_id", "message", "author", "created", "format", "size", "stored",
                "params", "n_tensors", "dtype")
        doc = dict(zip(keys, row))
        doc["parents"] = [[m, c, version_uid(c, created, author, message)] for m, c, created, author, message in
                          db.execute("SELECT m.name, v.content_id, v.created, v.author, v.message FROM lineage l "
                                     "JOIN versions v ON v.id = l.parent JOIN models m ON m.id = v.model_id "
                                     "WHERE l.child = ? ORDER BY v.id", (vid,))]
        doc["attrs"] = [dict(zip(("key", "type", "num", "text", "set_at", "author"), r)) for r in db.execute(
            "SELECT k.name, a.type, a.num, a.text, a.set_at, a.author FROM attrs a JOIN attr_keys k ON k.id = a.key_id "
            "WHERE a.version_id = ? ORDER BY k.name", (vid,))]
        doc["attr_history"] = [dict(zip(("key", "type", "num", "text", "set_at", "author", "replaced_at",
                                         "replaced_by"), r)) for r in db.execute(
            "SELECT k.name, h.type, h.num, h.text, h.set_at, h.author, h.replaced_at, h.replaced_by "
            "FROM attr_history h JOIN attr_keys k ON k.id = h.key_id WHERE h.version_id = ? ORDER BY h.id", (vid,))]
        doc["metrics"] = [dict(zip(("dataset", "name", "value", "recorded", "author"), r)) for r in db.execute(
            "SELECT d.name, n.name, m.value, m.recorded, m.author FROM metrics m JOIN datasets d ON d.id = m.dataset_id"
            " JOIN metric_names n ON n.id = m.name_id WHERE m.version_id = ? ORDER BY d.name, n.name", (vid,))]
        doc["metric_history"] = [dict(zip(("dataset", "name", "value", "recorded", "author", "replaced_at"), r))
                                 for r in db.execute(
            "SELECT d.name, n.name, m.value, m.recorded, m.author, m.replaced_at FROM metric_history m "
            "JOIN datasets d ON d.id = m.dataset_id JOIN metric_names n ON n.id = m.name_id "
            "WHERE m.version_id = ? ORDER BY m.id", (vid,))]
        doc["tags"] = [dict(zip(("tag", "created", "author"), r)) for r in db.execute(
            "SELECT name, created, author FROM tags WHERE version_id = ? ORDER BY name", (vid,))]
        doc["comments"] = [dict(zip(("author", "created", "text"), r)) for r in db.execute(
            "SELECT author, created, text FROM comments WHERE version_id = ? ORDER BY id", (vid,))]
        meta = catalog.file_meta(vid)
        if meta:
            doc["file_meta"] = meta
    return doc


def version_uid(content_id: str, created: str | None, author: str | None, message: str | None) -> str:
    """A version's store-independent identity (32 hex digits): the same on every store that
    holds it, different for the same weights committed again (other time, author or message)."""
    try:
        when = created_iso(created) or ""
    except InvalidInputError:
        when = str(created)
    key = json.dumps([content_id, when, author or "", message or ""], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def doc_uid(doc: dict) -> str:
    """The uid of the version a (checked) sync document describes."""
    return version_uid(doc["content_id"], doc.get("created"), doc.get("author"), doc.get("message"))


def find_version(catalog: Catalog, model: str, content_id: str, uid: str | None = None) -> int | None:
    """This store's version id of (model, uid) — or, without a uid, the first version of
    (model, content id) — or None."""
    rows = catalog.db.execute("SELECT v.id, v.created, v.author, v.message FROM versions v JOIN models m "
                              "ON m.id = v.model_id WHERE m.name = ? AND v.content_id = ? ORDER BY v.number",
                              (model, content_id)).fetchall()
    for vid, created, author, message in rows:
        if uid is None or version_uid(content_id, created, author, message) == uid:
            return vid
    return None


def state(catalog: Catalog, model: str | None = None, ref: str | None = None) -> dict:
    """What a store holds, for a sync to plan with: versions (ancestors first) and tags.

    `ref`: that version and its ancestors; `model`: its versions and their ancestors;
    neither: everything. {"versions": [{model, number, content_id, uid, created, parents}],
    "tags": [{model, tag, content_id, number, uid}]}.
    """
    db = catalog.db
    with catalog.snapshot():
        if ref is not None:
            seeds = [catalog.resolve(ref).id]
        elif model is not None:
            seeds = [r[0] for r in db.execute(
                "SELECT v.id FROM versions v JOIN models m ON m.id = v.model_id WHERE m.name = ?", (model,))]
            if not seeds:
                raise NotFoundError(f"no model named {model[:80]!r}")
        else:
            seeds = None
        if seeds is None:
            ids = [r[0] for r in db.execute("SELECT id FROM versions ORDER BY id")]
        else:
            ids = sorted(_ancestors(db, seeds))
        parents: dict[int, list] = {}
        rows: dict[int, dict] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for vid, m, n, c, created, author, message in db.execute(
                    "SELECT v.id, m.name, v.number, v.content_id, v.created, v.author, v.message FROM versions v "
                    f"JOIN models m ON m.id = v.model_id WHERE v.id IN ({marks})", chunk):
                rows[vid] = {"model": m, "number": n, "content_id": c, "uid": version_uid(c, created, author, message),
                             "created": created, "parents": []}
            for child, m, c in db.execute(
                    "SELECT l.child, m.name, v.content_id FROM lineage l JOIN versions v ON v.id = l.parent "
                    f"JOIN models m ON m.id = v.model_id WHERE l.child IN ({marks}) ORDER BY v.id", chunk):
                parents.setdefault(child, []).append([m, c])
        versions = []
        for vid in ids:
            r = rows[vid]
            r["parents"] = parents.get(vid, [])
            versions.append(r)
        models = sorted({v["model"] for v in versions})
        tags = []
        for start in range(0, len(models), 500):
            chunk = models[start:start + 500]
            tags += [{"model": m, "tag": t, "content_id": c, "number": n, "uid": version_uid(c, vc, va, vm)}
                     for m, t, c, n, vc, va, vm in db.execute(
                "SELECT m.name, t.name, v.content_id, v.number, v.created, v.author, v.message FROM tags t "
                "JOIN models m ON m.id = t.model_id "
                f"JOIN versions v ON v.id = t.version_id WHERE m.name IN ({','.join('?' * len(chunk))}) "
                "ORDER BY m.name, t.name", chunk)]
    return {"versions": versions, "tags": tags}


def _ancestors(db, seeds: list[int]) -> set[int]:
    out = set(seeds)
    frontier = list(seeds)
    while frontier:
        nxt = []
        for start in range(0, len(frontier), 500):
            chunk = frontier[start:start + 500]
            for (p,) in db.execute(f"SELECT parent FROM lineage WHERE child IN ({','.join('?' * len(chunk))})", chunk):
                if p not in out:
                    out.add(p)
                    nxt.append(p)
        frontier = nxt
    return out


# -- validation ----------------------------------------------------------------------------
def _text(v, what: str, limit: int = MAX_TEXT, optional: bool = True):
    if v is None and optional:
        return None
    if not isinstance(v, str) or len(v) > limit or "\x00" in v:
        raise InvalidInputError(f"sync document: {what} must be text of at most {limit} characters")
    return v


def _num(v, what: str, optional: bool = True):
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InvalidInputError(f"sync document: {what} must be a finite number")
    return float(v)


def check_doc(doc) -> str:
    """Validate a received version document (names, types, sizes); returns its content id."""
    if not isinstance(doc, dict):
        raise InvalidInputError("sync document: a version is a JSON object")
    check_model_name(doc.get("model"))
    cid = doc.get("content_id")
    if not isinstance(cid, str) or not _CID.match(cid):
        raise InvalidInputError("sync document: content_id must be 32 lowercase hex digits")
    for k in ("message", "author", "format", "dtype"):
        _text(doc.get(k), k)
    doc["created"] = created_iso(_text(doc.get("created"), "created")) or now_iso()
    for k in ("size", "stored", "params", "n_tensors"):
        v = doc.get(k, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise InvalidInputError(f"sync document: {k} must be a non-negative integer")
    for p in _list(doc, "parents"):
        if not (isinstance(p, list) and len(p) in (2, 3) and isinstance(p[1], str) and _CID.match(p[1])
                and (len(p) == 2 or (isinstance(p[2], str) and _CID.match(p[2])))):
            raise InvalidInputError("sync document: a parent is [model, content id, uid]")
        check_model_name(p[0])
    for a in _list(doc, "attrs") + _list(doc, "attr_history"):
        check_meta_key(a.get("key"))
        if a.get("type") not in _TYPES:
            raise InvalidInputError(f"sync document: attribute type {str(a.get('type'))[:8]!r} is unknown")
        _num(a.get("num"), "attribute value")
        _text(a.get("text"), "attribute text", 10_000)
        for k in ("set_at", "author", "replaced_at", "replaced_by"):
            _text(a.get(k), k, 200)
        if (a["type"] == "s") != (a.get("text") is not None) or (a["type"] != "s") != (a.get("num") is not None):
            raise InvalidInputError("sync document: a string attribute has text, any other a number")
    for m in _list(doc, "metrics") + _list(doc, "metric_history"):
        check_dataset(m.get("dataset"))
        check_metric_name(m.get("name"))
        _num(m.get("value"), "metric value", optional=False)
        for k in ("recorded", "author", "replaced_at"):
            _text(m.get(k), k, 200)
    for t in _list(doc, "tags"):
        _text(t.get("tag"), "tag", 100, optional=False)
    for c in _list(doc, "comments"):
        _text(c.get("text"), "comment", MAX_COMMENT, optional=False)
        _text(c.get("author"), "comment author", 200, optional=False)
        _text(c.get("created"), "comment time", 100, optional=False)
    if "file_meta" in doc and doc["file_meta"] is not None:
        size = file_meta_size(doc["file_meta"])
        if size is None or size > MAX_FILE_META:
            raise InvalidInputError("sync document: file_meta must be an object of strings (at most 1 MiB)")
    return cid


def _list(doc: dict, key: str) -> list:
    v = doc.get(key) or []
    if not isinstance(v, list) or len(v) > 1_000_000 or (key != "parents" and not all(isinstance(x, dict) for x in v)):
        raise InvalidInputError(f"sync document: {key} must be a list of objects")
    return v


# -- import --------------------------------------------------------------------------------
def import_version(catalog: Catalog, doc: dict, *, tensors=None, tag_updates=(), actor: str = "unknown",
                   force: bool = False) -> dict:
    """Insert the version of `doc` (when `tensors` is given and it is not here) or merge its
    annotations into the one here; apply `tag_updates` ([{tag, expect}]: point the tag at
    this version if it now points at `expect` — a content id, None for no tag — or always
    with `force`). One transaction. Returns {"ref", "created", "tags"}."""
    check_doc(doc)
    from modelstore.annotate import check_tag

    for tu in tag_updates:
        check_tag(tu.get("tag"))
    db = catalog.db
    model, cid = doc["model"], doc["content_id"]
    with catalog.transaction():
        row = db.execute("SELECT id FROM models WHERE name = ?", (model,)).fetchone()
        model_id = row[0] if row else None
        vid = find_version(catalog, model, cid, doc_uid(doc))
        created = vid is None
        if created:
            if tensors is None:
                raise NotFoundError(f"{model} {cid[:12]} is not in this store: send its manifest and chunks first")
            if model_id is None:
                model_id = db.execute("INSERT INTO models(name, created) VALUES(?, ?)", (model, now_iso())).lastrowid
            number = next_number(db, model_id)  # never a number this store used before
            vid = db.execute(
                "INSERT INTO versions(model_id, number, content_id, message, author, created, format, size, stored,"
                " params, n_tensors, dtype) VALUES(?,?,?,?,?,?,?,?,?,?,?,?)",
                (model_id, number, cid, doc.get("message") or "", _author(doc, actor), doc["created"],
                 doc.get("format") or "", doc.get("size", 0), doc.get("stored", 0), doc.get("params", 0),
                 doc.get("n_tensors", 0), doc.get("dtype") or "")).lastrowid
            db.executemany("INSERT OR IGNORE INTO tensors(content_id, name, dtype, shape, nbytes) VALUES(?,?,?,?,?)",
                           [(cid, *t) for t in tensors])
            set_file_meta(db, vid, doc.get("file_meta"))
        (number, vcreated) = db.execute("SELECT number, created FROM versions WHERE id = ?", (vid,)).fetchone()
        for pm, pc, *puid in doc.get("parents") or []:
            pid = find_version(catalog, pm, pc, puid[0] if puid else None)
            if pid is not None and pid != vid:
                db.execute("INSERT OR IGNORE INTO lineage(child, parent) VALUES(?, ?)", (vid, pid))
        _merge_attrs(catalog, vid, vcreated, doc, actor)
        _merge_metrics(catalog, vid, vcreated, doc, actor)
        for c in doc.get("comments") or []:
            if db.execute("SELECT 1 FROM comments WHERE version_id = ? AND author = ? AND created = ? AND text = ?",
                          (vid, c["author"], c["created"], c["text"])).fetchone() is None:
                db.execute("INSERT INTO comments(version_id, author, created, text) VALUES(?,?,?,?)",
                           (vid, c["author"], c["created"], c["text"]))
        moved = [_apply_tag(db, model_id, vid, model, cid, tu, actor, force) for tu in tag_updates]
    return {"ref": f"{model}@{number}", "created": created, "tags": [t for t in moved if t]}


def _author(doc: dict, actor: str) -> str:
    """The sender's author, kept verbatim (even empty) so the version's uid is the same here."""
    author = doc.get("author")
    return author if isinstance(author, str) else actor


def _apply_tag(db, model_id, vid, model, cid, tu, actor, force) -> str | None:
    name, expect = tu["tag"], tu.get("expect")
    row = db.execute("SELECT v.content_id, v.id FROM tags t JOIN versions v ON v.id = t.version_id "
                     "WHERE t.model_id = ? AND t.name = ?", (model_id, name)).fetchone()
    now = row[0] if row else None
    if row is not None and row[1] == vid:
        return None
    if not (force or tu.get("force")) and now != expect:
        raise TagConflictError(
            f"tag {model}@{name} moved on both sides (here it points at {str(now)[:12]}, you would move it from "
            f"{str(expect)[:12]} to {cid[:12]}): pull to take the other side's tag, or re-run with --force to "
            "overwrite it")
    db.execute("DELETE FROM tags WHERE model_id = ? AND name = ?", (model_id, name))
    db.execute("INSERT INTO tags(model_id, name, version_id, created, author) VALUES(?,?,?,?,?)",
               (model_id, name, vid, now_iso(), actor))
    return name


def _newer(a: str | None, b: str | None) -> bool:
    """Is timestamp text `a` later than `b` (ISO-8601 UTC text compares in time order)."""
    return (a or "") > (b or "")


def _merge_attrs(catalog: Catalog, vid: int, vcreated: str, doc: dict, actor: str) -> None:
    db = catalog.db
    for a in doc.get("attrs") or []:
        kid = catalog.intern("attr_keys", a["key"])
        local = db.execute("SELECT type, num, text, set_at, author FROM attrs WHERE version_id = ? AND key_id = ?",
                           (vid, kid)).fetchone()
        sent = (a["type"], a.get("num"), a.get("text"), a.get("set_at"), a.get("author"))
        if local is None:
            db.execute("INSERT INTO attrs(version_id, key_id, type, num, text, set_at, author) VALUES(?,?,?,?,?,?,?)",
                       (vid, kid, *sent))
            continue
        if tuple(local[:3]) == sent[:3]:
            continue
        sent_at, local_at = sent[3] or doc["created"], local[3] or vcreated
        if _newer(sent_at, local_at):  # theirs is newer: ours goes to the history
            _attr_history(db, vid, kid, local, sent_at, sent[4] or actor)
            db.execute("DELETE FROM attrs WHERE version_id = ? AND key_id = ?", (vid, kid))
            db.execute("INSERT INTO attrs(version_id, key_id, type, num, text, set_at, author) VALUES(?,?,?,?,?,?,?)",
                       (vid, kid, *sent))
        else:
            _attr_history(db, vid, kid, sent, local_at, local[4] or actor)
    for h in doc.get("attr_history") or []:
        kid = catalog.intern("attr_keys", h["key"])
        _attr_history(db, vid, kid, (h["type"], h.get("num"), h.get("text"), h.get("set_at"), h.get("author")),
                      h.get("replaced_at") or doc["created"], h.get("replaced_by") or actor)


def _attr_history(db, vid, kid, value, replaced_at, replaced_by) -> None:
    t, n, x, set_at, author = value
    if db.execute("SELECT 1 FROM attr_history WHERE version_id = ? AND key_id = ? AND type = ? AND num IS ? AND "
                  "text IS ? AND set_at IS ? AND replaced_at = ?", (vid, kid, t, n, x, set_at, replaced_at)
                  ).fetchone() is None:
        db.execute("INSERT INTO attr_history(version_id, key_id, type, num, text, set_at, author, replaced_at, "
                   "replaced_by) VALUES(?,?,?,?,?,?,?,?,?)", (vid, kid, t, n, x, set_at, author, replaced_at,
                                                              replaced_by))


def _merge_metrics(catalog: Catalog, vid: int, vcreated: str, doc: dict, actor: str) -> None:
    db = catalog.db
    for m in doc.get("metrics") or []:
        key = (vid, catalog.intern("metric_names", m["name"]), catalog.intern("datasets", m["dataset"]))
        local = db.execute("SELECT value, recorded, author FROM metrics WHERE version_id = ? AND name_id = ? "
                           "AND dataset_id = ?", key).fetchone()
        sent = (float(m["value"]), m.get("recorded"), m.get("author"))
        if local is None:
            db.execute("INSERT INTO metrics(version_id, name_id, dataset_id, value, recorded, author) "
                       "VALUES(?,?,?,?,?,?)", (*key, *sent))
            continue
        if local[0] == sent[0]:
            continue
        sent_at, local_at = sent[1] or doc["created"], local[1] or vcreated
        if _newer(sent_at, local_at):
            _metric_history(db, key, local, sent_at)
            db.execute("DELETE FROM metrics WHERE version_id = ? AND name_id = ? AND dataset_id = ?", key)
            db.execute("INSERT INTO metrics(version_id, name_id, dataset_id, value, recorded, author) "
                       "VALUES(?,?,?,?,?,?)", (*key, *sent))
        else:
            _metric_history(db, key, sent, local_at)
    for h in doc.get("metric_history") or []:
        key = (vid, catalog.intern("metric_names", h["name"]), catalog.intern("datasets", h["dataset"]))
        _metric_history(db, key, (float(h["value"]), h.get("recorded"), h.get("author")),
                        h.get("replaced_at") or doc["created"])


def _metric_history(db, key, value, replaced_at) -> None:
    v, recorded, author = value
    if db.execute("SELECT 1 FROM metric_history WHERE version_id = ? AND name_id = ? AND dataset_id = ? AND "
                  "value = ? AND recorded IS ?", (*key, v, recorded)).fetchone() is None:
        db.execute("INSERT INTO metric_history(version_id, name_id, dataset_id, value, recorded, author, replaced_at)"
                   " VALUES(?,?,?,?,?,?,?)", (*key, v, recorded, author, replaced_at))
