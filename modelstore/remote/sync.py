"""push, pull, fetch and clone: which versions travel, with their annotations and tags.

A version is identified across stores by (model, uid) (catalog_sync.version_uid: the same
weights committed twice are two versions). Versions travel with their
ancestors (so lineage is whole on both sides), ancestors first; one already on the other
side is not sent again, only its annotations are merged. Tags: each remote remembers what
its tags pointed at after the last push/pull (remotes.tracked_tags); a tag that moved on
one side since then follows that side, one that moved on both is refused unless `force`.
A version's graph blob travels in its document (graph_blobs.py).
"""

from __future__ import annotations

import time
from functools import partial

from modelstore import catalog_sync
from modelstore.catalog_sync import TagConflictError
from modelstore.receive import MissingChunksError
from modelstore.remote import graph_blobs, remotes
from modelstore.remote.client import Client, RemoteError, current_user
from modelstore.remote.transfer import Stats, pull_chunks, push_chunks


def connect(store, name: str) -> Client:
    r = remotes.get(store.root, name)
    return Client(r["url"], token=r["token"], name=name)


def _remote_state(client: Client, models=None, ref: str | None = None, model: str | None = None) -> dict:
    """The remote's versions and tags: of a REF, a model, some models (missing ones are empty) or all."""
    if ref is not None or model is not None:
        return client.get_json("/api/sync/state", ref=ref, model=model)
    if models is None:
        return client.get_json("/api/sync/state")
    out = {"versions": [], "tags": []}
    for m in sorted(models):
        try:
            doc = client.get_json("/api/sync/state", model=m)
        except RemoteError as exc:
            if exc.kind != "not_found":
                raise
            continue
        out["versions"] += doc["versions"]
        out["tags"] += doc["tags"]
    return out


def _tags(state: dict) -> dict[str, str]:
    return {f"{t['model']}@{t['tag']}": t["content_id"] for t in state["tags"]}


def _plan_tags(mine: dict, theirs: dict, base: dict, keys, force: bool, here: str, there: str, advice: str) -> dict:
    """Tags to move on the other side: key -> expected current value there (None: no tag).

    mine/theirs/base: "model@tag" -> content id on this side, the other, at the last sync."""
    out, conflicts = {}, []
    for key in keys:
        m, t, b = mine.get(key), theirs.get(key), base.get(key)
        if m is None or m == t:
            continue
        if t == b:            # only this side moved (or the tag is new on both sides)
            out[key] = t
        elif m == b:          # only the other side moved: leave it
            continue
        elif force:
            out[key] = "*"
        else:
            conflicts.append(f"{key} ({here}: {m[:12]}, {there}: {str(t)[:12]})")
    if conflicts:
        raise TagConflictError(
            f"tag {conflicts[0]} moved on both sides since the last sync"
            + (f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else "")
            + f": {advice}")
    return out


def _tag_uids(state: dict) -> dict[str, str | None]:
    return {f"{t['model']}@{t['tag']}": t.get("uid") for t in state["tags"]}


def _vkey(v: dict) -> tuple:
    """A version's identity in a state listing: (model, uid), or (model, content id) from an
    older peer that lists no uids."""
    return (v["model"], v.get("uid") or v["content_id"])


def _tag_updates(plan: dict, v: dict, pointing: dict, pointing_uid: dict) -> list[dict]:
    """The planned tag moves that land on version `v` (a state entry): those whose tag points
    at exactly that version on the sending side."""
    return [{"tag": key.split("@", 1)[1], "expect": None if exp == "*" else exp, "force": exp == "*"}
            for key, exp in plan.items() if key.split("@", 1)[0] == v["model"] and pointing[key] == v["content_id"]
            and (pointing_uid.get(key) is None or v.get("uid") is None or pointing_uid[key] == v["uid"])]


def _summary(name: str, client: Client, t0: float, **kw) -> dict:
    dt = time.perf_counter() - t0
    moved = kw.get("bytes_sent", kw.get("bytes_received", 0))
    return {"remote": name, "url": client.url, **kw, "seconds": round(dt, 3),
            "mb_per_s": round(moved / 1e6 / dt, 1) if dt > 0 else 0.0}


def push(store, name: str, target: str | None = None, *, force: bool = False, progress=None) -> dict:
    """Send local versions (a model's, a REF and its ancestors, or all) the remote lacks."""
    t0 = time.perf_counter()
    client = connect(store, name)
    is_model = target is not None and "@" not in target and any(m == target for m, _ in store.models())
    local = catalog_sync.state(store.catalog, model=target if is_model else None,
                               ref=None if is_model or target is None else target)
    theirs = _remote_state(client, models={v["model"] for v in local["versions"]})
    there = {_vkey(v) for v in theirs["versions"]}
    mine_tags = _tags(local)
    chosen = {(v["model"], v["content_id"]) for v in local["versions"]}
    keys = [k for k, c in mine_tags.items() if (k.split("@", 1)[0], c) in chosen]
    plan = _plan_tags(mine_tags, _tags(theirs), remotes.tracked_tags(store.root, name), keys, force, "here", name,
                      f"re-run with --force to overwrite {name}'s tag, or `modelstore pull {name} --force` to take it")
    sent, merged, tags_moved = [], 0, []
    total = Stats()
    mine_uids = _tag_uids(local)
    for v in local["versions"]:
        vid = catalog_sync.find_version(store.catalog, v["model"], v["content_id"], v["uid"])
        doc = catalog_sync.export_version(store.catalog, vid)
        gid = graph_blobs.graph_id_of_doc(doc)
        body = {"version": doc, "manifest": None, "tags": _tag_updates(plan, v, mine_tags, mine_uids)}
        if (v["model"], v["uid"]) not in there and (v["model"], v["content_id"]) not in there:
            m = store.manifest(doc["content_id"])
            body["manifest"] = m.to_json().decode()
            body["graphs"] = graph_blobs.export(store, gid)
            bar = progress and progress(f"{v['model']}@{v['number']}")
            out = _with_chunks(partial(push_chunks, store, client, m, progress=bar),
                               partial(client.post_json, "/api/sync/versions", body), total)
        else:
            out = client.post_json("/api/sync/versions", body)
            if out.get("graph_missing") and graph_blobs.has_graph(store, gid):  # heal a remote lacking it
                out = client.post_json("/api/sync/versions", {**body, "graphs": graph_blobs.export(store, gid)})
        if out["created"]:
            sent.append({"ref": f"{v['model']}@{v['number']}", "remote_ref": out["ref"]})
        else:
            merged += 1
        tags_moved += [f"{v['model']}@{t}" for t in out["tags"]]
    after = _remote_state(client, models={v["model"] for v in local["versions"]})
    _track(store, name, after, mine_tags)
    return _summary(name, client, t0, versions_sent=sent, versions_merged=merged, chunks_sent=total.chunks,
                    bytes_sent=total.bytes, chunks_skipped=total.chunks_skipped, bytes_skipped=total.bytes_skipped,
                    tags_moved=tags_moved)


def _with_chunks(move, commit, total: Stats, attempts: int = 3):
    """Move a version's chunks, then commit it; when the commit finds chunks missing (a `gc`
    on the receiving side dropped accepted chunks no version named yet), negotiate and move
    them again. Adds what travelled to `total`; returns the commit's answer."""
    for attempt in range(attempts):
        st = move()
        total.chunks += st.chunks
        total.bytes += st.bytes
        if attempt == 0:  # later rounds re-send what was dropped: already counted as skipped
            total.chunks_skipped += st.chunks_skipped
            total.bytes_skipped += st.bytes_skipped
        try:
            return commit()
        except (RemoteError, MissingChunksError) as exc:
            if exc.kind != MissingChunksError.kind or attempt == attempts - 1:
                raise


def _track(store, name: str, remote_state: dict, local_tags: dict) -> None:
    """Remember, per tag, the value both sides agree on now (the base of the next sync)."""
    base = remotes.tracked_tags(store.root, name)
    for key, cid in _tags(remote_state).items():
        if local_tags.get(key) == cid:
            base[key] = cid
    remotes.set_tracked_tags(store.root, name, base)


def _local_tags(store, models) -> dict:
    out = {}
    for m in models:
        if any(m == name for name, _ in store.models()):
            out.update(_tags({"tags": [{"model": t["model"], "tag": t["tag"],
                                        "content_id": store.resolve(t["ref"]).content_id}
                                       for t in store.tags(m)]}))
    return out


def pull(store, name: str, target: str | None = None, *, force: bool = False, progress=None) -> dict:
    """Fetch the remote's versions (a model's, a REF and its ancestors, or all) this store lacks."""
    from modelstore.manifest import Manifest
    from modelstore.receive import import_version

    t0 = time.perf_counter()
    client = connect(store, name)
    ref = target if target is not None and ("@" in target or _looks_like_cid(target)) else None
    theirs = _remote_state(client, ref=ref, model=target if ref is None else None)
    models = {v["model"] for v in theirs["versions"]}
    mine_tags = _local_tags(store, models)
    their_tags, their_uids = _tags(theirs), _tag_uids(theirs)
    chosen = {(v["model"], v["content_id"]) for v in theirs["versions"]}
    keys = [k for k, c in their_tags.items() if (k.split("@", 1)[0], c) in chosen]
    plan = _plan_tags(their_tags, mine_tags, remotes.tracked_tags(store.root, name), keys, force, name, "here",
                      f"re-run with --force to take {name}'s tag, or `modelstore push {name} --force` to overwrite it there")
    got, merged, tags_moved = [], 0, []
    total = Stats()
    actor = current_user()
    for v in theirs["versions"]:
        here = catalog_sync.find_version(store.catalog, v["model"], v["content_id"], v.get("uid")) is not None
        path = f"/api/sync/versions/{v['content_id']}"
        doc = client.get_json(path, model=v["model"], uid=v.get("uid"), graphs=None if here else 1)
        if here and not graph_blobs.has_graph(store, graph_blobs.graph_id_of_doc(doc["version"])):
            doc = client.get_json(path, model=v["model"], uid=v.get("uid"), graphs=1)  # heal a local store lacking it
        updates = _tag_updates(plan, v, their_tags, their_uids)
        if not here:
            manifest_json = doc["manifest"].encode()
            m = Manifest.from_json(manifest_json)
            bar = progress and progress(f"{v['model']}@{v['number']}")
            out = _with_chunks(partial(pull_chunks, store, client, v["model"], v["content_id"], m, progress=bar),
                               partial(import_version, store, manifest_json, doc["version"], tag_updates=updates,
                                       actor=actor, graphs=doc.get("graphs")), total)
        else:
            out = import_version(store, None, doc["version"], tag_updates=updates, actor=actor,
                                 graphs=doc.get("graphs"))
        if out["created"]:
            got.append({"ref": out["ref"], "remote_ref": f"{v['model']}@{v['number']}"})
        else:
            merged += 1
        tags_moved += [f"{v['model']}@{t}" for t in out["tags"]]
    _track(store, name, theirs, _local_tags(store, models))
    return _summary(name, client, t0, versions_received=got, versions_merged=merged, chunks_received=total.chunks,
                    bytes_received=total.bytes, chunks_skipped=total.chunks_skipped,
                    bytes_skipped=total.bytes_skipped, tags_moved=tags_moved)


def _looks_like_cid(text: str) -> bool:
    return 8 <= len(text) <= 32 and all(c in "0123456789abcdef" for c in text.lower())


def fetch(store, name: str, model: str | None = None) -> dict:
    """Catalog only: merge metadata, metrics and comments of versions both sides have; list
    the remote's versions and tags this store lacks or has elsewhere (no weights move)."""
    from modelstore.receive import import_version

    t0 = time.perf_counter()
    client = connect(store, name)
    theirs = _remote_state(client, model=model)
    merged, remote_only = 0, []
    for v in theirs["versions"]:
        if catalog_sync.find_version(store.catalog, v["model"], v["content_id"], v.get("uid")) is None:
            remote_only.append({"remote_ref": f"{v['model']}@{v['number']}", "content_id": v["content_id"]})
            continue
        doc = client.get_json(f"/api/sync/versions/{v['content_id']}", model=v["model"], uid=v.get("uid"))
        import_version(store, None, doc["version"], actor=current_user())
        merged += 1
    mine = _local_tags(store, {v["model"] for v in theirs["versions"]})
    differ = [{"tag": k, "remote": c, "local": mine.get(k)} for k, c in sorted(_tags(theirs).items())
              if mine.get(k) != c]
    return _summary(name, client, t0, versions_merged=merged, remote_only=remote_only, tags_differ=differ)


def clone(url: str, path, *, model: str | None = None, token: str | None = None, progress=None) -> dict:
    """A new store at `path` with `url` as remote `origin`, then pull (everything or one model).

    Re-running an interrupted clone into the same path resumes it."""
    from pathlib import Path

    from modelstore.errors import AlreadyExistsError
    from modelstore.store import Store

    path = Path(path)
    url = remotes.check_url(url)
    if (path / "config.json").exists():
        store = Store.open(path)
        origin = store.config.remotes.get("origin", {}).get("url")
        if origin != url:
            store.close()
            raise AlreadyExistsError(f"a store already exists at {path}" + (f" (origin {origin})" if origin else ""))
    else:
        store = Store.init(path)
        remotes.add(store.root, "origin", url, token)
    try:
        out = pull(store, "origin", model, progress=progress)
    finally:
        store.close()
    return {"path": str(path.resolve()), **out}
