"""The JSON API under /api: thin over modelstore.Store, in the shapes of the CLI's --json output.

Reads need `can_read`, writes `can_write` (deps.py); every error leaves as the envelope of
app.py. Sync endpoints run in FastAPI's thread pool, each thread with its own Store.
Refs use the `{ref:path}` converter (model names may hold one '/'), so the suffix routes
(/tensors, /metrics ...) are declared before the bare /api/versions/{ref}.
"""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from modelstore import __version__, jsonviews
from modelstore.config import FORMAT_VERSION
from modelstore.errors import InvalidInputError
from modelstore.server.deps import author, can_read, can_write, store

router = APIRouter(prefix="/api", tags=["api"])
READ = [Depends(can_read)]
WRITE = [Depends(can_write)]
MAX_QUERY_ROWS = 100_000


# -- request bodies ------------------------------------------------------------------------
class MetaChange(BaseModel):
    set: dict[str, bool | int | float | str] = Field(default_factory=dict)
    unset: list[str] = Field(default_factory=list)


class MetricsIn(BaseModel):
    dataset: str
    values: dict[str, float | int | str]


class TagIn(BaseModel):
    name: str
    delete: bool = False


class CommentIn(BaseModel):
    text: str


# -- store-wide ----------------------------------------------------------------------------
@router.get("/health")
def health() -> dict:
    """Liveness, and what this server speaks."""
    return {"ok": True, "version": __version__, "format_version": FORMAT_VERSION}


@router.get("/models", dependencies=READ)
def models(s=Depends(store)) -> list[dict]:
    """Every model: number of versions, latest version, tags, last activity."""
    return jsonviews.models_summary(s)


@router.get("/tags", dependencies=READ)
def tags(model: Optional[str] = None, s=Depends(store)) -> list[dict]:
    """Tags of one model (or all): the `tags --json` list."""
    return s.tags(model)


@router.get("/query", dependencies=READ)
def query(q: str = Query(..., description="A query (docs/QUERY.md)"),
          limit: Optional[int] = Query(None, ge=0, le=MAX_QUERY_ROWS,
                                       description="At most this many versions (default: every match, like the CLI)"),
          s=Depends(store)) -> list[dict]:
    """Versions matching a query: the `query --json` list."""
    return jsonviews.query_rows(jsonviews.limited_query(s, q, limit).versions)


@router.get("/diff", dependencies=READ)
def diff(a: str, b: str, rank: bool = False, s=Depends(store)) -> dict:
    """What changed from version `a` to version `b`: the `diff --json` document (REFs only,
    never file paths)."""
    return s.diff(s.resolve(a), s.resolve(b), rank=rank).to_dict()


@router.get("/keys", dependencies=READ)
def keys(s=Depends(store)) -> dict:
    """Attribute keys, metric names and datasets (for query autocomplete)."""
    return jsonviews.keys(s)


# -- a model's versions --------------------------------------------------------------------
@router.get("/models/{model:path}/versions", dependencies=READ)
def versions(model: str, limit: int = Query(50, ge=0, le=jsonviews.MAX_PAGE), offset: int = Query(0, ge=0),
             sort: Optional[str] = Query(None, description="attribute or metric[@dataset]; default version"),
             desc: bool = False, s=Depends(store)) -> dict:
    """One page of a model's versions, sorted by any key: {"total", "versions"}."""
    return jsonviews.versions_page(s, model, limit=limit, offset=offset, sort=sort, desc=desc)


@router.post("/models/{model:path}/versions", dependencies=WRITE, status_code=201,
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def upload(request: Request, model: str, message: str = "",
                 parent: Optional[list[str]] = Query(None, description="parent REF (repeatable)"),
                 meta: Optional[list[str]] = Query(None, description="KEY=VALUE (repeatable)"),
                 metric: Optional[list[str]] = Query(None, description="DATASET:NAME=VALUE (repeatable)"),
                 format: Optional[str] = Query(None, description="safetensors | npz | pt | onnx | gguf | h5 | "
                                                                 "keras (default: sniffed)"),
                 who: Optional[str] = Depends(author)):
    """Commit the request body (a checkpoint file, streamed to disk) as the next version."""
    from modelstore.annotate import parse_metric_option
    from modelstore.catalog import check_model_name
    from modelstore.commit import check_meta
    from modelstore.server.upload import UPLOAD_SUFFIXES, receive_to_file, scrub, settle_format

    check_model_name(model)
    if format is not None and format not in UPLOAD_SUFFIXES:
        raise InvalidInputError(f"format {format[:40]!r}: use one of {', '.join(UPLOAD_SUFFIXES)}")
    meta_kv = check_meta(_parse_kv(meta or [], "meta"))
    metrics = [parse_metric_option(m) for m in metric or []]
    stores = request.app.state.stores
    if parent:  # a bad parent fails before the body is read
        await run_in_threadpool(lambda: [stores.get().resolve(p) for p in parent])
    received = path = await receive_to_file(request, stores.root / "tmp", request.app.state.config.max_upload_bytes,
                                            format)
    try:
        path = await run_in_threadpool(settle_format, received, format)
        info = await run_in_threadpool(
            lambda: stores.get().commit(path, model=model, message=message, meta=meta_kv, parent=parent or None,
                                        author=who, metrics=metrics))
    except Exception as e:
        raise scrub(e, received, path, received.with_suffix(".onnx"), stores.root / "tmp") from None
    finally:
        received.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
    return JSONResponse(jsonviews.version(info), status_code=201)


def _parse_kv(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise InvalidInputError(f"{what} {item[:80]!r} is not KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out


# -- one version: suffix routes first, the bare ref last -----------------------------------
@router.get("/versions/{ref:path}/tensors", dependencies=READ)
def tensors(ref: str, s=Depends(store)) -> list[dict]:
    """[{name, dtype, shape, nbytes}] in manifest order."""
    return jsonviews.tensor_rows(s.manifest(ref))


@router.get("/versions/{ref:path}/metrics", dependencies=READ)
def metrics(ref: str, history: bool = Query(False, description="also the values re-evaluations replaced"),
            s=Depends(store)) -> list[dict]:
    """`metric history --json` rows: the current values (all recorded values with history=1)."""
    return jsonviews.metric_rows(s, ref, history)


@router.post("/versions/{ref:path}/metrics", dependencies=WRITE)
def add_metrics(ref: str, body: MetricsIn, s=Depends(store), who=Depends(author)) -> dict:
    """Record metrics on a validation dataset; returns the version."""
    return jsonviews.version(s.add_metrics(ref, body.dataset, body.values, author=who))


@router.get("/versions/{ref:path}/lineage", dependencies=READ)
def lineage(ref: str, depth: Optional[int] = Query(None, ge=1), s=Depends(store)) -> dict:
    """Ancestors and descendants: the `lineage --json` document."""
    return s.lineage(ref, max_depth=depth)


@router.get("/versions/{ref:path}/comments", dependencies=READ)
def comments(ref: str, s=Depends(store)) -> list[dict]:
    """The version's comments, oldest first."""
    return jsonviews.comments(s.resolve(ref))


@router.post("/versions/{ref:path}/comments", dependencies=WRITE, status_code=201)
def add_comment(ref: str, body: CommentIn, s=Depends(store), who=Depends(author)) -> dict:
    """Comment on a version: the `comment --json` document."""
    return s.comment(ref, body.text, author=who)


@router.post("/versions/{ref:path}/meta", dependencies=WRITE)
def change_meta(ref: str, body: MetaChange, s=Depends(store), who=Depends(author)) -> dict:
    """Set and/or unset metadata keys; returns the version. All input is checked first."""
    from modelstore.catalog import check_meta_key, type_value

    if not body.set and not body.unset:
        raise InvalidInputError('nothing to change: give {"set": {KEY: VALUE}} and/or {"unset": [KEY]}')
    both = set(body.set) & set(body.unset)
    if both:
        raise InvalidInputError(f"key {min(both)!r} is both set and unset")
    for k, v in body.set.items():  # validate everything before the first write
        check_meta_key(k, builtin_ok=False)
        type_value(v)
    for k in body.unset:
        check_meta_key(k)
    info = s.resolve(ref)
    if body.unset:
        info = s.unset_meta(info.ref, body.unset, author=who)
    if body.set:
        info = s.set_meta(info.ref, body.set, author=who)
    return jsonviews.version(info)


@router.post("/versions/{ref:path}/tags", dependencies=WRITE)
def tag(ref: str, body: TagIn, s=Depends(store), who=Depends(author)) -> dict:
    """Tag a version (moving the tag), or delete a tag: the `tag --json` document."""
    return s.tag(ref, body.name, delete=body.delete, author=who)


def _download_headers(s, ref: str, fmt: str):
    """(VersionInfo, response headers) of a download, GET and HEAD alike; a bad format is a 400."""
    from modelstore.server.upload import SUFFIXES

    if fmt not in SUFFIXES:
        raise InvalidInputError(f"format {fmt[:40]!r}: use one of {', '.join(SUFFIXES)}")
    info = s.resolve(ref)
    filename = f"{info.model.replace('/', '--')}-v{info.number}{SUFFIXES[fmt]}"
    return info, {"Content-Disposition": f'attachment; filename="{filename}"', "X-Modelstore-Ref": info.ref,
                  "X-Modelstore-Content-Id": info.content_id}


@router.get("/versions/{ref:path}/download", dependencies=READ,
            responses={200: {"content": {"application/octet-stream": {}}}})
def download(request: Request, ref: str, format: str = "safetensors", s=Depends(store)):
    """The version as a model file: safetensors streamed chunk by chunk (bit-exact with
    `modelstore checkout`); npz and pt are written to a temp file first."""
    from modelstore.server.download import safetensors_stream

    info, headers = _download_headers(s, ref, format)
    if format == "safetensors":
        length, body = safetensors_stream(s, s.manifest(info), s.catalog.file_meta(info.id))
        headers["Content-Length"] = str(length)
        return StreamingResponse(body, media_type="application/octet-stream", headers=headers)
    return _file_download(request, s, info, format, headers)


@router.head("/versions/{ref:path}/download", dependencies=READ, include_in_schema=False)
def download_head(ref: str, format: str = "safetensors", s=Depends(store)) -> Response:
    """GET's status and headers, no body, no chunk decoded: safetensors' Content-Length comes
    from the manifest and chunk index. npz/pt sizes are known only once the file is written,
    so their HEAD omits Content-Length (RFC 9110 9.3.2 allows it) rather than converting."""
    from modelstore.server.download import safetensors_length

    info, headers = _download_headers(s, ref, format)
    if format == "safetensors":
        headers["Content-Length"] = str(safetensors_length(s, s.manifest(info), s.catalog.file_meta(info.id)))
    resp = Response(media_type="application/octet-stream", headers=headers)
    if format != "safetensors":  # Response would announce its empty body's length, 0
        resp.raw_headers = [(k, v) for k, v in resp.raw_headers if k != b"content-length"]
    return resp


def _file_download(request: Request, s, info, fmt: str, headers: dict):
    import os
    import tempfile
    from pathlib import Path

    from fastapi.responses import FileResponse

    tmp = request.app.state.stores.root / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="download-", suffix=".part", dir=tmp)
    os.close(fd)
    path = Path(name)
    try:
        s.checkout(info.ref, path, fmt=fmt)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return FileResponse(path, media_type="application/octet-stream", headers=headers,
                        background=BackgroundTask(path.unlink, missing_ok=True))


@router.get("/versions/{ref:path}", dependencies=READ)
def show(ref: str, s=Depends(store)) -> dict:
    """One version: the `show --json` document (metadata, metrics, tags, comments, tensors)."""
    return s.show(ref)

