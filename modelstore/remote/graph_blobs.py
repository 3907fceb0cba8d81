"""Graph blobs travelling with versions: the `graphs` list of a sync version document.

A version committed from an .onnx file names its graph blob in its `graph` attribute
(modelstore/graph_store.py). The blob (and the weight-less ONNX proto beside it) travels
inside the version document as `{"id", "graph", "proto"}` with the stored zlib bytes in
base64; the receiver verifies both against their ids and writes them durably before the
catalog row (graph_store.put_received), so a version never arrives without its graph.
"""

from __future__ import annotations

import base64
import binascii
import re

from modelstore import graph_store
from modelstore.errors import IntegrityError, InvalidInputError, NotFoundError

_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_GRAPHS = 16  # entries one version document may carry


class ForgedGraphError(IntegrityError):
    """A received graph blob does not match its id: refused (the sender's fault)."""

    http_status = 400


def graph_id_of_doc(doc: dict) -> str | None:
    """The graph id a sync version document names (its `graph` string attribute), or None."""
    for a in doc.get("attrs") or []:
        if a.get("key") == graph_store.ATTR and a.get("type") == "s":
            gid = a.get("text")
            return gid if isinstance(gid, str) and _ID.match(gid) else None
    return None


def has_graph(store, gid: str | None) -> bool:
    """Does this store hold graph `gid` (None: nothing to hold)?"""
    return gid is None or graph_store.blob_path(store, gid).exists()


def export(store, gid: str | None) -> list[dict]:
    """The `graphs` entry of a version document naming `gid` ([] when it names none)."""
    if gid is None:
        return []
    try:
        graph_z = graph_store.blob_path(store, gid).read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"graph {gid} is missing from this store (run `modelstore fsck`)") from None
    proto = graph_store.blob_path(store, gid, graph_store.PROTO_SUFFIX)
    proto_z = proto.read_bytes() if proto.exists() else None
    return [{"id": gid, "graph": base64.b64encode(graph_z).decode(),
             "proto": base64.b64encode(proto_z).decode() if proto_z is not None else None}]


def receive(store, graphs) -> list[str]:
    """Verify and durably store the `graphs` of a received document; returns their ids.

    Call with the store lock held (shared) until the catalog row naming them is written."""
    if graphs is None:
        return []
    if not isinstance(graphs, list) or len(graphs) > MAX_GRAPHS or not all(isinstance(g, dict) for g in graphs):
        raise InvalidInputError(f"graphs must be a list of at most {MAX_GRAPHS} {{id, graph, proto}} objects")
    out = []
    for g in graphs:
        gid = g.get("id")
        try:
            graph_store.put_received(store, gid, _b64(g.get("graph"), "graph"),
                                     None if g.get("proto") is None else _b64(g.get("proto"), "proto"))
        except IntegrityError as exc:
            raise ForgedGraphError(str(exc)) from None
        out.append(gid)
    return out


def _b64(text, what: str) -> bytes:
    if not isinstance(text, str):
        raise InvalidInputError(f"graphs: {what} must be base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(f"graphs: {what} is not valid base64") from None
