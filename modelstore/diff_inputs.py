"""Diff inputs: layer/module naming rules and the two sides (a stored version or a model file).

Part of modelstore.diff, whose docstring states the rules.
"""

from __future__ import annotations

import math
import mmap
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from modelstore import chunking, dtypes, hashing
from modelstore.errors import InvalidInputError, NotFoundError



__all__ = [
    "Diff", "TensorDiff", "GroupDiff", "diff", "diff_files", "diff_sides", "open_side", "needs_store",
    "StoredSide", "FileSide", "STATUSES", "module_of", "block_of",
]

STATUSES = ("identical", "modified", "added", "removed", "reshaped", "retyped", "renamed")

BATCH_PAIRS = 16  # chunk pairs per kernel call
BATCH_BYTES = 32 << 20  # bytes (both sides) per kernel call
PREFETCH = 2  # batches decoded ahead of the kernel
ALIGN_MAX_CELLS = 250_000  # block pairs scored by the alignment DP, per family
_INDEX_BONUS = 1e-7  # tie-break toward pairing blocks with the same index
MODEL_SUFFIXES = (".safetensors", ".npz", ".pt", ".pth", ".bin")


# --------------------------------------------------------------------------- names


def module_of(name: str) -> str:
    """The module of a parameter: its name minus the last component ('' at top level)."""
    return name.rsplit(".", 1)[0] if "." in name else ""


def _split_block(name: str) -> tuple[str, str, str] | None:
    """(family, index token, suffix) when the name's module has a numeric component."""
    parts = name.split(".")
    for i in range(len(parts) - 1):
        if parts[i].isdigit():
            return ".".join(parts[:i]), parts[i], ".".join(parts[i + 1:])
    return None


def _join(family: str, token: str, suffix: str) -> str:
    return ".".join(p for p in (family, token) if p != "") + (("." + suffix) if suffix else "")


def block_of(name: str) -> str:
    """The block of a parameter (the unit of ``--layers``): the name minus its last
    component, cut after the first numeric component (``encoder.layer.3.attn.q.weight`` ->
    ``encoder.layer.3``); names without such an index group by module."""
    sp = _split_block(name)
    if sp is None:
        return module_of(name)
    return ".".join(p for p in (sp[0], sp[1]) if p != "")


# --------------------------------------------------------------------------- sides


@dataclass(eq=False)
class TInfo:
    """One side's view of a tensor: identity (dtype, shape, chunk ids) and where bytes live."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    chunk_rows: int
    chunks: tuple[bytes, ...]
    chunk_sumsq: tuple[float, ...] = ()
    nonfinite: int | None = None  # known total of NaN/Inf elements (stored sides)
    source: Any = None  # TensorEntry or TensorSource

    @property
    def dt(self) -> dtypes.DType:
        return dtypes.get(self.dtype)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dt.itemsize

    def spans(self) -> list[tuple[int, int]]:
        return list(chunking.chunk_spans(self.shape, self.dt.itemsize, self.chunk_rows))

    def content_key(self):
        return (self.dtype, self.shape, self.chunks)


class Side:
    kind = "?"
    label = "?"
    store = None
    tensors: dict[str, TInfo]

    decodes = False  # True: chunk() decodes (worth a worker thread and a reusable `out` buffer)

    def chunk(self, t: TInfo, i: int, out=None):
        """Raw bytes of chunk i of t: a zero-copy view, or decoded and verified (into `out`, a
        writable buffer of exactly the chunk's length, when given)."""
        raise NotImplementedError

    def known_sumsq(self, t: TInfo, i: int) -> tuple[float, int] | None:
        """(Σx² over finite elements, number of non-finite elements) of chunk i, if known cheaply."""
        return None

    def release(self, t: TInfo, i: int | None = None) -> None:
        """Done with tensor t (or only its chunk i) for now: drop what can be dropped."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class StoredSide(Side):
    """A version in a store: everything structural comes from its manifest."""

    kind = "version"

    def __init__(self, store, ref):
        from modelstore.catalog import VersionInfo

        self.store = store
        self.info = ref if isinstance(ref, VersionInfo) else store.resolve(ref)
        self.label = self.info.ref
        manifest = store.manifest(self.info)
        self.tensors = {}
        for e in manifest.tensors:
            dtypes.get(e.dtype)  # unsupported dtype: one clear error
            st = e.stats
            self.tensors[e.name] = TInfo(e.name, e.dtype, tuple(e.shape), e.chunk_rows, tuple(e.chunks),
                                         tuple(e.chunk_sumsq), st.n_nan + st.n_inf, e)

    decodes = True

    def chunk(self, t, i, out=None):
        from modelstore.checkout import read_chunk

        return read_chunk(self.store, t.chunks[i], out=out)

    def known_sumsq(self, t, i):
        s = t.chunk_sumsq[i] if i < len(t.chunk_sumsq) else math.nan
        if t.nonfinite == 0 and math.isfinite(s):
            return s, 0
        st = self.store.index.get_stats(t.chunks[i], t.dt.code)
        if st is not None:
            return float(st[4]), int(st[1]) + int(st[2])
        return None


def _release_pages(view) -> None:
    """Drop an mmap-backed view's pages from this process (they stay in the page cache)."""
    try:
        mm = view.obj
        if not isinstance(mm, mmap.mmap) or view.nbytes == 0:
            return
        import numpy as np

        base = np.frombuffer(mm, dtype=np.uint8).ctypes.data
        start = np.frombuffer(view, dtype=np.uint8).ctypes.data - base
        page = mmap.PAGESIZE
        lo = start - start % page
        hi = min(len(mm), start + view.nbytes)
        if hi > lo:
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
    except Exception:  # best effort: never fail a diff over page accounting
        pass


class FileSide(Side):
    """A model file (or folder, or dict of arrays), read lazily; chunk ids hashed on open."""

    kind = "file"

    def __init__(self, obj, chunk_target: int = chunking.DEFAULT_TARGET,
                 rows_hint: Callable[[str, str, tuple], int | None] | None = None, store=None):
        from modelstore.formats import open_model

        self.store = store  # only for the chunk-stats index (skipped chunks' Σx²)
        self.label = "<arrays>" if isinstance(obj, Mapping) else os.fspath(obj)
        self.src = open_model(obj)
        self._lock = threading.Lock()
        self._views: dict[str, memoryview] = {}  # zero-copy (mmap) views, kept
        self._lru: OrderedDict[str, memoryview] = OrderedDict()  # copies (npz, torch), few
        self.tensors = {}
        try:
            for ts in self.src.tensors:
                dt = dtypes.get(ts.dtype)
                shape = tuple(ts.shape)
                rows = (rows_hint(ts.name, ts.dtype, shape) if rows_hint else None) or \
                    chunking.chunk_rows(shape, dt.itemsize, chunk_target)
                t = TInfo(ts.name, ts.dtype, shape, rows, (), source=ts)
                if ts.nbytes:  # (a tensor with a zero-length dimension has no chunks)
                    buf = self._view(t)
                    mapped = t.name in self._views
                    ids = []
                    for off, length in chunking.chunk_spans(shape, dt.itemsize, rows):
                        view = buf[off:off + length]
                        ids.append(hashing.digest(view))
                        if mapped:  # keep RSS to a chunk, even for a multi-GB tensor
                            _release_pages(view)
                    t.chunks = tuple(ids)
                self.tensors[ts.name] = t
        except BaseException:
            self.close()
            raise

    def _view(self, t: TInfo) -> memoryview:
        with self._lock:
            v = self._views.get(t.name)
            if v is not None:
                return v
            v = self._lru.get(t.name)
            if v is not None:
                self._lru.move_to_end(t.name)
                return v
        v = t.source.buffer()
        with self._lock:
            if isinstance(v.obj, mmap.mmap):
                self._views[t.name] = v
            else:
                self._lru[t.name] = v
                while len(self._lru) > 1:
                    self._lru.popitem(last=False)
        return v

    def chunk(self, t, i, out=None):
        off, length = chunking_span(t, i)
        return self._view(t)[off:off + length]

    def known_sumsq(self, t, i):
        if self.store is not None:
            st = self.store.index.get_stats(t.chunks[i], t.dt.code)
            if st is not None:
                return float(st[4]), int(st[1]) + int(st[2])
        return None

    def release(self, t, i=None):
        v = self._views.get(t.name)
        if v is not None:
            if i is None:
                _release_pages(v)
            else:
                off, length = chunking_span(t, i)
                _release_pages(v[off:off + length])

    def close(self):
        self._views.clear()
        self._lru.clear()
        self.src.close()


def chunking_span(t: TInfo, i: int) -> tuple[int, int]:
    itemsize = t.dt.itemsize
    if not t.shape:
        return 0, itemsize
    rb = chunking.row_bytes(t.shape, itemsize)
    start = i * t.chunk_rows * rb
    return start, min(t.chunk_rows * rb, rb * t.shape[0] - start)


def _looks_like_path(x: str) -> bool:
    return x.lower().endswith(MODEL_SUFFIXES) or x.startswith(("/", "./", "../", "~")) or x.endswith(("/", os.sep))


def needs_store(*args) -> bool:
    """True if some argument must be looked up as a REF (it is not an existing path or a dict).

    An existing path is always read as a model file or folder (``MODEL@latest`` reaches a
    model whose name is also a path here). A missing argument that looks like a file (a
    model suffix such as .safetensors, or a leading / ./ ../ ~) raises NotFoundError.
    """
    need = False
    for x in args:
        if isinstance(x, Mapping):
            continue
        p = os.fspath(x)
        if os.path.exists(p):
            continue
        if _looks_like_path(p):
            raise NotFoundError(f"{p}: no such file or folder")
        need = True
    return need


def open_side(x, store=None, *, chunk_target: int | None = None, other: Side | None = None) -> Side:
    """A side for a REF (needs `store`), a path (file or HF folder), or a dict of arrays.

    Files are chunked with `chunk_target`, else the store's chunk target, else the default;
    when `other` is a stored version, a file tensor of the same name, dtype and shape takes
    that version's chunk rows, so their shared chunks are recognised.
    """
    from modelstore.catalog import VersionInfo

    if isinstance(x, VersionInfo):
        if store is None:
            raise InvalidInputError("a VersionInfo needs a store")
        return StoredSide(store, x)
    if not isinstance(x, Mapping):
        p = os.fspath(x)
        if not os.path.exists(p):
            if store is None:
                raise NotFoundError(f"{p}: no such file or folder")
            try:
                return StoredSide(store, p)
            except NotFoundError:
                if _looks_like_path(p):
                    raise NotFoundError(f"{p}: no such file or folder (nor a REF in this store)") from None
                raise
    target = chunk_target or (store.config.chunk_target_bytes if store is not None else chunking.DEFAULT_TARGET)
    hint = None
    if isinstance(other, StoredSide) and chunk_target is None:
        by_name = other.tensors

        def hint(name, dtype, shape):
            t = by_name.get(name)
            return t.chunk_rows if t is not None and t.dtype == dtype and t.shape == shape else None
    return FileSide(x, target, hint, store=store)


