"""The sync protocol's HTTP side (/api/sync/...): what remotes push to and pull from.

Push: POST missing (have/want on chunk ids) -> POST chunks (batches of records, verified,
fsynced and indexed before the 200) -> POST versions (manifest + catalog rows, one
transaction). Pull: GET state -> GET versions/{content id} -> POST bases -> POST records.
Chunk ids and records travel as binary (modelstore/remote/wire.py); documents as JSON.
Every push endpoint needs a write token, so a push without one stores nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from modelstore.errors import InvalidInputError, NotFoundError
from modelstore.server import deps

router = APIRouter(prefix="/api/sync", tags=["sync"])
BINARY = "application/octet-stream"
# Test hook: once this many chunk batches were acknowledged, the next one is received (its
# records verified and appended) but hangs before it is made durable, so a test can SIGKILL
# the server mid-batch.
PAUSE_ENV = "MODELSTORE_SYNC_SERVER_PAUSE_AFTER"
_acked = [0]  # batches this process acknowledged (changed on the event loop only)


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused past `limit` bytes (before reading it when the length is known)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InvalidInputError(f"request body of {declared} bytes is over the {limit}-byte limit of a sync batch")
    parts, n = [], 0
    async for piece in request.stream():
        n += len(piece)
        if n > limit:
            raise InvalidInputError(f"request body is over the {limit}-byte limit of a sync batch")
        parts.append(piece)
    return b"".join(parts)


def _store(request: Request):
    return request.app.state.stores.get()


@router.get("/state", dependencies=[Depends(deps.can_read)])
def sync_state(request: Request, model: str | None = None, ref: str | None = None):
    """Versions (ancestors first) and tags of a model, of a REF and its ancestors, or of the store."""
    from modelstore.catalog_sync import state

    s = _store(request)
    return {"store_id": s.config.store_id, **state(s.catalog, model=model, ref=ref)}


@router.post("/missing", dependencies=[Depends(deps.can_write)])
async def sync_missing(request: Request):
    """Body: chunk ids (16 bytes each). Answer: those this store lacks, same framing."""
    from modelstore.remote.wire import pack_ids, unpack_ids

    ids = unpack_ids(await _body(request, 64 << 20))

    def work():
        have = _store(request).index.get_many(ids)
        return pack_ids(dict.fromkeys(c for c in ids if c not in have))

    return Response(await run_in_threadpool(work), media_type=BINARY)


@router.post("/chunks", dependencies=[Depends(deps.can_write)])
async def sync_chunks(request: Request):
    """Body: chunk records back to back. Each is verified against its id; the batch is
    durable (fsynced, indexed) before this answers; one bad record refuses the batch."""
    from modelstore.receive import Receiver
    from modelstore.remote.wire import MAX_BATCH_BYTES

    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BATCH_BYTES:
        raise InvalidInputError(f"a chunk batch is at most {MAX_BATCH_BYTES} bytes, not {declared}")
    receiver = await run_in_threadpool(lambda: Receiver(_store(request)))
    n = 0
    try:
        async for piece in request.stream():  # records are verified while the rest arrives
            n += len(piece)
            if n > MAX_BATCH_BYTES:
                raise InvalidInputError(f"a chunk batch is at most {MAX_BATCH_BYTES} bytes")
            receiver.feed(piece)
        await _maybe_pause()
    except BaseException:
        await run_in_threadpool(receiver.abort)
        raise
    out = await run_in_threadpool(receiver.finish)
    _acked[0] += 1
    return out


async def _maybe_pause() -> None:
    pause = int(os.environ.get(PAUSE_ENV, "0") or 0)
    if pause and _acked[0] >= pause:
        sys.stderr.write(f"sync server: paused after {pause} batches\n")
        sys.stderr.flush()
        await asyncio.sleep(3600)


@router.post("/versions", dependencies=[Depends(deps.can_write)], status_code=200)
async def sync_import(request: Request):
    """Body: {"version": doc, "manifest": canonical manifest JSON text or null, "tags":
    [{tag, expect}], "force": bool, "graphs": [{id, graph, proto}]}. Creates the version
    (graph blobs, then manifest, then catalog rows in one transaction) or merges the
    annotations of the one already here."""
    from modelstore.receive import import_version

    try:
        doc = json.loads(await _body(request, 256 << 20))
    except ValueError:
        raise InvalidInputError("the version document is not valid JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("version"), dict):
        raise InvalidInputError("expected {\"version\": {...}, \"manifest\": ..., \"tags\": [...]}")
    manifest = doc.get("manifest")
    if manifest is not None and not isinstance(manifest, str):
        raise InvalidInputError("manifest must be the manifest's JSON text")
    tags = doc.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, dict) for t in tags):
        raise InvalidInputError("tags must be a list of {tag, expect}")
    actor = deps.author(request) or "unknown"
    out = await run_in_threadpool(lambda: import_version(
        _store(request), manifest.encode() if manifest is not None else None, doc["version"], tag_updates=tags,
        actor=actor, force=bool(doc.get("force")), graphs=doc.get("graphs")))
    return JSONResponse(out, status_code=201 if out["created"] else 200)


@router.get("/versions/{content_id}", dependencies=[Depends(deps.can_read)])
def sync_export(request: Request, content_id: str, model: str, uid: str | None = None, graphs: bool = False):
    """The catalog document and manifest of (model, content id) — the version `uid` of those
    when given (the same weights may be committed twice); with `graphs`, also the graph blob
    the version names (remote/graph_blobs.py)."""
    from modelstore.catalog_sync import export_version, find_version
    from modelstore.remote import graph_blobs

    s = _store(request)
    vid = find_version(s.catalog, model, content_id.lower(), uid.lower() if uid else None)
    if vid is None:
        raise NotFoundError(f"no version {content_id[:40]!r} of model {model[:80]!r} here"
                            + (f" with uid {uid[:40]!r}" if uid else ""))
    doc = export_version(s.catalog, vid)
    raw = s.index.get_manifest_bytes(bytes.fromhex(doc["content_id"]))
    if raw is None:
        raise NotFoundError(f"manifest {doc['content_id']} is missing on the server (run `modelstore fsck` there)")
    out = {"version": doc, "manifest": raw.decode()}
    if graphs:
        out["graphs"] = graph_blobs.export(s, graph_blobs.graph_id_of_doc(doc))
    return out


@router.post("/bases", dependencies=[Depends(deps.can_read)])
async def sync_bases(request: Request):
    """Body: chunk ids. Answer per id this store has: id, delta base (zeros if plain),
    stored length, raw length (wire.BASE_INFO), so a puller can plan batches and say
    which bases it already holds."""
    from modelstore.remote.wire import BASE_INFO, unpack_ids

    ids = unpack_ids(await _body(request, 64 << 20))

    def work():
        got = _store(request).index.get_many(ids)
        return b"".join(BASE_INFO.pack(c, got[c].base, got[c].stored_len, got[c].raw_len) for c in ids if c in got)

    return Response(await run_in_threadpool(work), media_type=BINARY)


@router.post("/records", dependencies=[Depends(deps.can_read)])
async def sync_records(request: Request, content_id: str, model: str):
    """Body: u32 n, n wanted ids, then ids of delta bases the caller holds. Answer: the
    wanted records back to back; a delta whose base the caller lacks is sent plain."""
    from modelstore.remote.wire import (
        COUNT,
        ID,
        MAX_BATCH_BYTES,
        read_records,
        unpack_ids,
    )

    body = await _body(request, 64 << 20)
    if len(body) < COUNT.size:
        raise InvalidInputError("records request: missing id count")
    (n,) = COUNT.unpack_from(body)
    ids = unpack_ids(body[COUNT.size:COUNT.size + n * ID])
    if len(ids) != n:
        raise InvalidInputError("records request: fewer ids than announced")
    held = set(unpack_ids(body[COUNT.size + n * ID:]))

    def work():
        s = _store(request)
        from modelstore.catalog_sync import find_version

        if find_version(s.catalog, model, content_id.lower()) is None:
            raise NotFoundError(f"no version {content_id[:40]!r} of model {model[:80]!r} here")
        m = s.manifest(content_id.lower())
        dtype_of = {c: t.dtype for t in m.tensors for c in t.chunks}
        unknown = [c for c in ids if c not in dtype_of]
        if unknown:
            raise InvalidInputError(f"chunk {unknown[0].hex()} is not part of version {content_id[:12]}")
        entries = s.index.get_many(ids)
        if sum(e.stored_len for e in entries.values()) > MAX_BATCH_BYTES:
            raise InvalidInputError(f"ask for at most {MAX_BATCH_BYTES} bytes of records at a time")
        parts, _ = read_records(s, ids, held.__contains__, dtype_of)
        return b"".join(parts)

    return Response(await run_in_threadpool(work), media_type=BINARY)
