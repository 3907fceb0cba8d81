"""The Store facade: one object owning the chunk index, packs and catalog of a store.

CLI and HTTP layers only call these methods; errors are ModelstoreError subclasses.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

from modelstore import config as cfg
from modelstore.catalog import Catalog, VersionInfo
from modelstore.chunkindex import ChunkIndex
from modelstore.errors import FormatError, NotFoundError, ReadOnlyError
from modelstore.manifest import Manifest
from modelstore.packs import PackReader


class Store:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.layout = cfg.Layout(self.root)
        self.config = cfg.read(self.root)
        # A store we cannot write (read-only filesystem or permissions) is still readable.
        self.readonly = not all(os.access(p, os.W_OK) for p in (self.root, self.layout.index, self.layout.catalog)
                                if p.exists())
        self.index = ChunkIndex(self.layout.index, readonly=self.readonly)
        self.packs = PackReader(self.layout.packs)
        self.catalog = Catalog(self.layout.catalog, readonly=self.readonly)
        # Parsed manifests by content id: content-addressed, so an entry never goes stale
        # (a server or a training loop reads the same few versions again and again).
        self._manifests: OrderedDict[str, Manifest] = OrderedDict()
        self._manifests_lock = threading.Lock()

    def _writable(self) -> None:
        if self.readonly:
            raise ReadOnlyError(f"the store at {self.root} is read-only (no write permission or a read-only filesystem)")

    def _require_extension(self, name: str) -> None:
        """An older store records an extension before this writer first uses it (once:
        the rewrite is atomic, and writers that race both add the same key)."""
        if name not in self.config.extensions:
            cfg.add_extension(self.root, name)
            self.config.extensions[name] = 1

    # -- lifecycle -------------------------------------------------------------------
    @classmethod
    def init(cls, path: str | os.PathLike, chunk_target_bytes: int | None = None,
             delta_depth: int | None = None) -> "Store":
        """Create a new, empty store at `path` (a directory; created if needed)."""
        cfg.write_new(Path(path), chunk_target_bytes, delta_depth)
        return cls(Path(path))

    @classmethod
    def open(cls, path: str | os.PathLike | None = None) -> "Store":
        """Open an existing store (path, else $MODELSTORE_DIR, else the nearest .modelstore/)."""
        return cls(cfg.locate(path))

    def close(self) -> None:
        self.packs.close()
        self.index.close()
        self.catalog.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- write -----------------------------------------------------------------------
    def commit(self, tensors_or_path, *, model: str, message: str = "", meta: dict | None = None,
               parent=None, author: str | None = None, progress=None, metrics=None) -> VersionInfo:
        """Store a checkpoint as the next version of `model`; returns its VersionInfo.

        `metrics`: (dataset, name, value) triples, e.g. [("imagenet-val", "accuracy", 0.93)].
        A source with a graph (ONNX) also gets its graph stored and the derived attributes
        flops, mem_infer, cpu_ghz_min (docs/HARDWARE.md; `meta` keys latency_budget_s and
        ops_per_cycle set the CPU assumptions); `params` and `size` are built-ins.
        """
        self._writable()
        from modelstore.commit import commit

        self._require_extension(cfg.XOR_PLANES_2)
        return commit(self, tensors_or_path, model=model, message=message, meta=meta, parent=parent,
                      author=author, progress=progress, metrics=metrics)

    # -- read ------------------------------------------------------------------------
    def resolve(self, ref: str) -> VersionInfo:
        return self.catalog.resolve(ref)

    _MANIFEST_CACHE = 32

    def manifest(self, ref: str | VersionInfo) -> Manifest:
        info = ref if isinstance(ref, VersionInfo) else self.resolve(ref)
        with self._manifests_lock:
            m = self._manifests.get(info.content_id)
            if m is not None:
                self._manifests.move_to_end(info.content_id)
                return m
        raw = self.index.get_manifest_bytes(bytes.fromhex(info.content_id))
        if raw is None:
            raise FormatError(f"{info.ref}: manifest {info.content_id} is missing (run `modelstore fsck`)")
        m = Manifest.from_json(raw)
        with self._manifests_lock:
            self._manifests[info.content_id] = m
            if len(self._manifests) > self._MANIFEST_CACHE:
                self._manifests.popitem(last=False)
        return m

    def load(self, ref: str, names=None) -> dict:
        """Every tensor of a version (or only `names`) as numpy arrays, bit-exact."""
        from modelstore.checkout import load

        m = self.manifest(ref)
        if names is not None:
            missing = [n for n in names if n not in m.by_name()]
            if missing:
                raise NotFoundError(f"{ref}: no tensor named {missing[0]!r}")
        return load(self, m, names)

    def checkout(self, ref: str, path: str | os.PathLike, fmt: str | None = None) -> Path:
        """Write a version to a model file (format from the suffix unless `fmt`)."""
        from modelstore.checkout import write_file
        from modelstore.formats import format_for_path

        path = Path(path)
        fmt = fmt or format_for_path(path)
        info = self.resolve(ref)
        proto = None
        if fmt == "onnx":  # the graph travels beside the weights (modelstore.graph_store)
            from modelstore.graph_store import onnx_proto_of_version

            proto = onnx_proto_of_version(self, info)
        meta = self.catalog.file_meta(info.id) if fmt == "safetensors" else None
        write_file(self, self.manifest(info), path, fmt, metadata=meta, graph_proto=proto)
        return path

    def log(self, model: str | None = None) -> list[VersionInfo]:
        if model is None:
            out = []
            for name, _ in self.catalog.models():
                out.extend(self.catalog.log(name))
            return out
        return self.catalog.log(model)

    def models(self) -> list[tuple[str, int]]:
        return self.catalog.models()

    def show(self, ref: str) -> dict:
        info = self.resolve(ref)
        m = self.manifest(info)
        doc = info.to_dict()
        doc["children"] = [c.ref for c in self.catalog.children(info.id)]
        doc["tensors"] = [
            {"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "bytes": t.nbytes, "chunks": len(t.chunks),
             "l2": t.stats.l2, "min": t.stats.min, "max": t.stats.max, "mean": t.stats.mean,
             "nan": t.stats.n_nan, "inf": t.stats.n_inf}
            for t in m.tensors
        ]
        return doc

    def diff(self, a, b, **opts):
        """What changed from `a` to `b`: each a REF or a model file path (see modelstore.diff).

        Options: atol, rtol, rank, rank_budget, rank_max_elems, align, skip_shared, threads,
        progress. Returns a modelstore.diff.Diff (``.to_dict()`` is the JSON of `modelstore diff`).
        """
        from modelstore.diff import diff

        return diff(a, b, store=self, **opts)

    def zarr(self, ref: str):
        """A read-only zarr v3 Store over one version (see docs/FORMAT.md §8)."""
        from modelstore.zarr_view import VersionZarrStore

        return VersionZarrStore(self, self.manifest(ref))

    def delete(self, ref: str) -> VersionInfo:
        """Delete a version from the catalog (its weights go at the next `gc`, unless shared)."""
        self._writable()
        info = self.resolve(ref)
        self.catalog.delete_version(info.id)
        return info

    # -- catalog: query and annotations (docs/QUERY.md) --------------------------------
    def query(self, expr: str) -> list[VersionInfo]:
        """Versions matching a query (docs/QUERY.md), in query order."""
        from modelstore.query import run

        return run(self.catalog, expr).versions

    def query_result(self, expr: str):
        """Like query(), plus the queried keys (the table's columns) and the plan: a query.QueryResult."""
        from modelstore.query import run

        return run(self.catalog, expr)

    def set_meta(self, ref: str, values: dict, *, author: str | None = None) -> VersionInfo:
        """Set typed metadata (content id unchanged; replaced values kept in the history)."""
        self._writable()
        from modelstore import annotate

        return annotate.set_meta(self.catalog, ref, values, author=author)

    def unset_meta(self, ref: str, keys: list[str], *, author: str | None = None) -> VersionInfo:
        self._writable()
        from modelstore import annotate

        return annotate.unset_meta(self.catalog, ref, keys, author=author)

    def meta_history(self, ref: str, key: str | None = None) -> list[dict]:
        from modelstore import annotate

        return annotate.meta_history(self.catalog, ref, key)

    def add_metrics(self, ref: str, dataset: str, values, *, author: str | None = None) -> VersionInfo:
        """Record metrics on a validation dataset ({name: value} or ["name=value", ...])."""
        self._writable()
        from modelstore import annotate

        return annotate.add_metrics(self.catalog, ref, dataset, values, author=author)

    def metric_history(self, ref: str, dataset: str | None = None, name: str | None = None) -> list[dict]:
        from modelstore import annotate

        return annotate.metric_history(self.catalog, ref, dataset, name)

    def tag(self, ref: str, name: str, *, delete: bool = False, author: str | None = None) -> dict:
        """Point MODEL@NAME at a version (moving it), or delete the tag."""
        self._writable()
        from modelstore import annotate

        if delete:
            return annotate.untag(self.catalog, ref, name)
        return annotate.tag(self.catalog, ref, name, author=author)

    def tags(self, model: str | None = None) -> list[dict]:
        from modelstore import annotate

        return annotate.tags(self.catalog, model)

    def comment(self, ref: str, text: str, *, author: str | None = None) -> dict:
        self._writable()
        from modelstore import annotate

        return annotate.comment(self.catalog, ref, text, author=author)

    def lineage(self, ref: str, *, max_depth: int | None = None) -> dict:
        """Ancestors and descendants of a version (each with its depth)."""
        from modelstore import annotate

        return annotate.lineage(self.catalog, ref, max_depth=max_depth)

    # -- maintenance -----------------------------------------------------------------
    def stats(self) -> dict:
        from modelstore.usage import storage_stats

        return storage_stats(self)

    def fsck(self, verify_data: bool = True) -> dict:
        from modelstore.fsck import fsck

        return fsck(self, verify_data=verify_data)

    def gc(self) -> dict:
        self._writable()
        from modelstore.gc import gc

        return gc(self)

