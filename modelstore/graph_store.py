"""Graphs of versions: content-addressed blobs under $STORE/graphs/, linked by the `graph` attribute.

Commit (docs/FORMAT.md §13): under the shared store lock, the graph's canonical JSON is
written zlib-compressed to a temp file in graphs/, fsynced and renamed to
``graphs/<graph id>.json.z`` (and the folder fsynced) BEFORE the catalog transaction that
creates the version with ``graph = "<graph id>"`` and the derived figures (hwfigures)
among its attributes. A crash in between leaves an unreferenced blob, which `gc` (holding
the store lock exclusively) removes; a version is never visible with a missing graph.
"""

from __future__ import annotations

import contextlib
import os
import re
import zlib
from pathlib import Path

from modelstore import graph as graphs
from modelstore import hashing, hwfigures
from modelstore.errors import (
    FormatError,
    IntegrityError,
    InvalidInputError,
    ModelstoreError,
    NotFoundError,
)

ATTR = "graph"  # the attribute naming a version's graph blob
DIRNAME = "graphs"
SUFFIX = ".json.z"
PROTO_SUFFIX = ".onnx.z"  # the ONNX ModelProto without weights, beside the graph that names its hash
PROTO_KEY = "onnx_proto"  # key in the stored graph: XXH3-128 hex of the serialized proto
_ID = re.compile(r"^[0-9a-f]{32}$")


def graphs_dir(store) -> Path:
    return Path(store.root) / DIRNAME


def blob_path(store, gid: str, suffix: str = SUFFIX) -> Path:
    return graphs_dir(store) / f"{gid}{suffix}"


def put(store, g: dict, proto: bytes | None = None) -> str:
    """Store a normalized graph, and the weight-less ONNX proto it came from when given
    (idempotent); returns the graph id. Durable when it returns: proto blob, then graph blob."""
    if proto is not None:
        g = {**g, PROTO_KEY: hashing.hexdigest(proto)}
    raw = graphs.canonical_bytes(g)
    gid = hashing.hexdigest(raw)
    if proto is not None:
        _write_blob(blob_path(store, gid, PROTO_SUFFIX), proto)
    _write_blob(blob_path(store, gid), raw)
    return gid


def _write_blob(path: Path, raw: bytes) -> None:
    """temp file in the same folder, fsync, rename, fsync the folder (never half-visible)."""
    if path.exists():
        return
    folder = path.parent
    folder.mkdir(exist_ok=True)
    tmp = folder / f".tmp-{path.name}-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(zlib.compress(raw, 6))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


MAX_BLOB = 256 << 20  # largest graph or proto blob a store accepts from elsewhere


def put_received(store, gid: str, graph_z: bytes, proto_z: bytes | None = None) -> None:
    """Store graph `gid` received from another store as its zlib-compressed blobs (what
    blob_path holds): verified against `gid` (and the proto against the hash the graph
    names) before anything is written; durable when it returns, proto first. Idempotent."""
    if not isinstance(gid, str) or not _ID.match(gid):
        raise InvalidInputError(f"graph id {str(gid)[:40]!r} is not 32 hex digits")
    raw = _inflate(graph_z, gid, "graph")
    if hashing.hexdigest(raw) != gid:
        raise IntegrityError(f"graph {gid}: received blob does not hash to its id: refused")
    import json

    try:
        want = json.loads(raw).get(PROTO_KEY)
    except (ValueError, AttributeError):
        raise IntegrityError(f"graph {gid}: received blob is not a JSON object") from None
    proto = None
    if want is not None:
        if proto_z is None:
            if not blob_path(store, gid, PROTO_SUFFIX).exists():
                raise IntegrityError(f"graph {gid} names an ONNX proto that was not sent")
        else:
            proto = _inflate(proto_z, gid, "ONNX proto")
            if hashing.hexdigest(proto) != want:
                raise IntegrityError(f"graph {gid}: received ONNX proto does not hash to the id the graph names")
    if proto is not None:
        _write_blob(blob_path(store, gid, PROTO_SUFFIX), proto)
    _write_blob(blob_path(store, gid), raw)


def _inflate(data: bytes, gid: str, what: str) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, MAX_BLOB)
    except zlib.error:
        raise IntegrityError(f"graph {gid}: received {what} blob does not decompress") from None
    if d.unconsumed_tail or not d.eof:
        raise IntegrityError(f"graph {gid}: received {what} blob is truncated or over {MAX_BLOB} bytes")
    return out


def _read_blob(store, gid: str, suffix: str) -> bytes:
    if not isinstance(gid, str) or not _ID.match(gid):
        raise FormatError(f"graph id {str(gid)[:40]!r} is not 32 hex digits")
    try:
        data = blob_path(store, gid, suffix).read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"graph {gid} ({suffix}) is missing from the store (run `modelstore fsck`)") from None
    try:
        return zlib.decompress(data)
    except zlib.error:
        raise IntegrityError(f"graph {gid}: {suffix} blob does not decompress") from None


def get(store, gid: str) -> dict:
    """The graph with id `gid`, verified against its id."""
    import json

    raw = _read_blob(store, gid, SUFFIX)
    if hashing.hexdigest(raw) != gid:
        raise IntegrityError(f"graph {gid}: blob does not hash to its id")
    try:
        return json.loads(raw)
    except ValueError:
        raise IntegrityError(f"graph {gid}: blob is not JSON") from None


def onnx_proto(store, gid: str) -> bytes | None:
    """The serialized ONNX ModelProto (initializer data stripped) of graph `gid`, verified;
    None if the graph has none. What formats.write_model(..., graph_proto=) needs for .onnx."""
    want = get(store, gid).get(PROTO_KEY)
    if want is None:
        return None
    raw = _read_blob(store, gid, PROTO_SUFFIX)
    if hashing.hexdigest(raw) != want:
        raise IntegrityError(f"graph {gid}: ONNX proto blob does not hash to the id the graph names")
    return raw


def onnx_proto_of_version(store, info) -> bytes | None:
    """What checkout needs to write a version back as .onnx (None: the version has no graph)."""
    gid = _gid_of(info)
    return None if gid is None else onnx_proto(store, gid)


def _gid_of(info) -> str | None:
    """The graph id a version names; None when it has none (a `graph` attribute a user set
    later that is not a graph id does not make a version unreadable)."""
    gid = info.meta.get(ATTR)
    return gid if isinstance(gid, str) and _ID.match(gid) else None


def of_version(store, info) -> dict | None:
    """The graph a version carries (None if it has none)."""
    gid = _gid_of(info)
    return None if gid is None else get(store, gid)


def of_side(side) -> dict | None:
    """The graph of a diff side: a stored version's blob, or the graph of an opened file."""
    info = getattr(side, "info", None)
    if info is not None and getattr(side, "kind", "") == "version":
        return of_version(side.store, info)
    src = getattr(side, "src", None)
    return graphs.of_source(src) if src is not None else None


# --------------------------------------------------------------------------- commit


def _is_onnx_path(source) -> bool:
    return isinstance(source, (str, os.PathLike)) and os.fspath(source).lower().endswith(".onnx") \
        and os.path.isfile(source)


def prepare_from_source(store, src, meta: dict | None) -> dict:
    """Attributes to merge into a commit of the opened `src`: the graph id and derived
    figures, with the graph stored. {} when the source carries no graph. Call with the
    store lock held (shared) until the catalog row is written (commit.py does)."""
    meta = dict(meta or {})
    if getattr(src, "graph", None) is None and not getattr(src, "graph_proto", None) \
            and not _is_onnx_path(getattr(src, "path", None) or ""):
        return {}
    if ATTR in meta:
        raise InvalidInputError(f"{ATTR!r} names the version's stored graph; choose another metadata key")
    budget_s, ops = hwfigures.budget_from_meta(meta)
    g = graphs.of_source(src)
    if g is None:
        return {}
    params, size = hwfigures.weights_of(src.tensors)
    proto = getattr(src, "graph_proto", None)
    fig = hwfigures.figures(g, params=params, size=size, budget_s=budget_s, ops_per_cycle=ops)
    out = hwfigures.commit_attributes(fig, meta)
    out[ATTR] = put(store, g, bytes(proto) if proto else None)
    return out


# --------------------------------------------------------------------------- gc and fsck


def referenced(store) -> set[str]:
    """Graph ids named by catalog versions."""
    return {gid for gid in map(_gid_of, store.query(f"has({ATTR})")) if gid is not None}


def sweep(store, dry_run: bool = False) -> dict:
    """Remove graph blobs (and stale temp files) no version names. Caller holds the store lock exclusively."""
    folder = graphs_dir(store)
    if not folder.is_dir():
        return {"graphs_removed": 0, "graph_bytes_freed": 0}
    live = referenced(store)
    removed = freed = 0
    for p in folder.iterdir():
        name = p.name
        gid = next((name[: -len(x)] for x in (SUFFIX, PROTO_SUFFIX) if name.endswith(x)), None)
        if gid in live or not p.is_file():
            continue
        removed += 1 if name.endswith(SUFFIX) else 0
        freed += p.stat().st_size
        if not dry_run:
            p.unlink()
    return {"graphs_removed": removed, "graph_bytes_freed": freed}


def check(store) -> list[str]:
    """Problems for fsck: versions whose graph blob is missing or corrupt."""
    problems = []
    for info in store.query(f"has({ATTR})"):
        gid = _gid_of(info)
        if gid is None:
            continue
        try:
            onnx_proto(store, gid)  # reads and verifies the graph, and its proto if it names one
        except ModelstoreError as exc:
            problems.append(f"version {info.ref}: {exc}")
    return problems
