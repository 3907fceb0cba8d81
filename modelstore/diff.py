"""Model diff: first the structure (tensors added, removed, reshaped, retyped, renamed; layer
blocks inserted or removed), then, for tensors both sides share, how their weights differ.

A *side* is a stored version (its manifest gives chunk ids, per-chunk Σx² and stats; chunks
are decoded and verified with ``checkout.read_chunk``) or a model file or folder (read through
``formats.open_model``, i.e. memory maps; chunk ids are computed on open by hashing row blocks
with the chunk rule — the store's chunk target when a store is involved, and a stored
counterpart's chunk rows when it has any — so shared chunks are skipped for files too).
Arguments: an existing path is a file; anything else is a REF (needs a store).

Pipeline
1. Pairing. Names are paired exactly, except inside *families of indexed blocks*: a tensor
   name's block is the name minus its last component, cut after the first purely numeric
   component (``encoder.layer.3.attention.self.query.weight`` -> block ``encoder.layer.3``,
   family ``encoder.layer``, suffix ``attention.self.query.weight``; names without such an
   index group by module, i.e. the name minus its last component). For each family present
   on both sides the two block sequences are aligned (``_align_blocks``): a Needleman–Wunsch
   style DP maximising Σ (structure similarity + 2 × content similarity) over paired blocks,
   gaps free, so an inserted ``layer.4`` is reported as one added block and ``B.layer.5`` is
   compared with ``A.layer.4`` (``matched_to`` on the tensors and the block). Ambiguity: when
   content gives no evidence (every block changed, structures identical) blocks pair by index
   (a tiny bonus breaks ties toward equal indices), so an insertion then shows as a block
   added at the end plus modified blocks, exactly as a name-by-name diff would; among equally
   good content matches (a duplicated block) the one at the same index wins. Families with
   more than ``ALIGN_MAX_CELLS`` block pairs are paired by index. ``align=False``: names only.
2. Renames. Leftover tensors only in A and only in B with identical (dtype, shape, chunk ids)
   are ``renamed`` (``renamed_from`` = old name; several candidates: the most similar name),
   found without reading weights. Copies (content also still under its old name) are
   ``added``. Empty tensors are never renamed.
3. Classification of pairs: dtype differs -> ``retyped``; shape differs -> ``reshaped``
   (neither gets numbers); else weights are compared: ``identical`` when no element changed
   (with ``atol``/``rtol``: none beyond ``atol + rtol*|b|``; ``exact`` says whether the bytes
   are identical too), else ``modified``. frac_changed and frac_chunks_changed count elements
   and chunks changed in the same sense.
4. Weights. For a pair with equal chunk rows, a chunk pair with equal ids contributes zero
   delta and its Σx² (manifest ``chunk_sumsq``; the chunk-stats index when the tensor holds
   NaN/Inf; for two files ``kernels.stats_many`` over one side) without being decoded; only
   differing chunk pairs are read and fed to ``kernels.delta_many`` in bounded batches (a
   prefetch thread decodes the next batches while the kernel runs with the GIL released).
   Two versions of one store: when one chunk of a pair is stored as an XOR-delta chain
   through the other (a version against its ancestor), it is rebuilt from the other's
   decoded bytes plus the links in between (``_read_pair``), so the root is decoded once.
   ``skip_shared=False`` compares every chunk pair (same numbers; for testing). Pairs whose
   chunk rows differ (different chunk targets) are compared over the union of both sides'
   row boundaries, so every kernel call sees aligned byte ranges.
5. Aggregation (float64, ``math.fsum``) per tensor, per module, per block (``--layers``) and
   for the whole model, over compared tensors (identical, modified, renamed):
   rel_l2 = sqrt(Σ sum_d2) / sqrt(Σ sum_a2) (0 when Δ = 0, null when A = 0 ≠ Δ),
   cosine = Σab / sqrt(Σa² Σb²) (1.0 for two zero tensors, null if exactly one is zero),
   mean_abs = Σ|d| / n_finite; NaN/Inf pairs are excluded from the sums (kernel contract).
   A block only A has is its own group even if B has a block of the same name.
6. Optional low-rank check (``rank=True``; see ``modelstore.lowrank``): for modified 2-D
   float tensors up to ``rank_max_elems`` elements (largest relative change first), Δ is
   materialised in float32 from the differing chunks and its numerical rank estimated; the
   time budget ``rank_budget`` is checked before each tensor (later ones are skipped, noted).

Memory: a file side is an mmap whose pages are released (MADV_DONTNEED) chunk by chunk once
hashed or compared; a stored side holds at most (PREFETCH + 1) batches of decoded chunks
(``BATCH_BYTES`` each). Diffing two multi-GB versions stays well under 1 GB RSS.
"""

from __future__ import annotations

import math
import mmap
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from difflib import SequenceMatcher
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


# --------------------------------------------------------------------------- results


def _num(x):
    """JSON-safe float: None for NaN/Inf/None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass
class Sums:
    """Merged kernel sums over a set of element pairs (float64)."""

    n: int = 0
    sum_d2: float = 0.0
    sum_a2: float = 0.0
    sum_b2: float = 0.0
    sum_ab: float = 0.0
    max_abs: float = 0.0
    sum_abs: float = 0.0
    n_changed: int = 0  # beyond tolerance when one is given, else a != b
    n_nonfinite: int = 0
    chunks: int = 0
    chunks_changed: int = 0

    @classmethod
    def merge(cls, items) -> "Sums":
        items = list(items)
        return cls(
            n=sum(s.n for s in items), sum_d2=math.fsum(s.sum_d2 for s in items),
            sum_a2=math.fsum(s.sum_a2 for s in items), sum_b2=math.fsum(s.sum_b2 for s in items),
            sum_ab=math.fsum(s.sum_ab for s in items), max_abs=max((s.max_abs for s in items), default=0.0),
            sum_abs=math.fsum(s.sum_abs for s in items), n_changed=sum(s.n_changed for s in items),
            n_nonfinite=sum(s.n_nonfinite for s in items), chunks=sum(s.chunks for s in items),
            chunks_changed=sum(s.chunks_changed for s in items))

    def metrics(self) -> dict:
        l2 = math.sqrt(self.sum_d2) if self.sum_d2 >= 0 else math.nan
        if self.sum_d2 == 0:
            rel = 0.0
        elif self.sum_a2 > 0:
            rel = l2 / math.sqrt(self.sum_a2)
        else:
            rel = None
        if self.sum_a2 == 0 and self.sum_b2 == 0:
            cos = 1.0
        elif self.sum_a2 == 0 or self.sum_b2 == 0:
            cos = None
        else:
            cos = self.sum_ab / (math.sqrt(self.sum_a2) * math.sqrt(self.sum_b2))
            if math.isfinite(cos):
                cos = max(-1.0, min(1.0, cos))
        finite = self.n - self.n_nonfinite
        return {
            "l2_delta": _num(l2), "rel_l2": _num(rel), "cosine": _num(cos), "max_abs": _num(self.max_abs),
            "mean_abs": _num(self.sum_abs / finite) if finite > 0 else None,
            "frac_changed": self.n_changed / self.n if self.n else 0.0,
            "frac_chunks_changed": self.chunks_changed / self.chunks if self.chunks else 0.0,
            "l2_a": _num(math.sqrt(self.sum_a2)), "l2_b": _num(math.sqrt(self.sum_b2)),
            "n_changed": self.n_changed, "n_nonfinite": self.n_nonfinite,
        }


@dataclass
class TensorDiff:
    name: str  # B's name (A's for removed tensors)
    status: str
    name_a: str | None
    name_b: str | None
    shape_a: tuple | None
    shape_b: tuple | None
    dtype_a: str | None
    dtype_b: str | None
    renamed_from: str | None = None
    matched_to: str | None = None  # A's name when block alignment paired it under another index
    block: str = ""
    module: str = ""
    side: str = "b"  # "a" for tensors of blocks only A has (grouped apart from B's namesakes)
    sums: Sums | None = None  # None: no weight comparison (added, removed, reshaped, retyped)
    exact: bool | None = None  # bit-identical (all chunk ids equal)
    chunks_read: int = 0
    rank: int | None = None
    rank_note: str | None = None

    @property
    def rel_l2(self) -> float | None:
        return self.sums.metrics()["rel_l2"] if self.sums else None

    def to_dict(self) -> dict:
        m = self.sums.metrics() if self.sums else {}
        d = {
            "name": self.name, "status": self.status,
            "shape_a": list(self.shape_a) if self.shape_a is not None else None,
            "shape_b": list(self.shape_b) if self.shape_b is not None else None,
            "dtype_a": self.dtype_a, "dtype_b": self.dtype_b,
            "l2_delta": m.get("l2_delta"), "rel_l2": m.get("rel_l2"), "cosine": m.get("cosine"),
            "max_abs": m.get("max_abs"), "mean_abs": m.get("mean_abs"),
            "frac_changed": m.get("frac_changed"), "frac_chunks_changed": m.get("frac_chunks_changed"),
            "renamed_from": self.renamed_from, "matched_to": self.matched_to,
            "name_a": self.name_a, "name_b": self.name_b, "block": self.block, "module": self.module,
            "l2_a": m.get("l2_a"), "l2_b": m.get("l2_b"), "n_changed": m.get("n_changed"),
            "n_nonfinite": m.get("n_nonfinite"), "exact": self.exact, "chunks_read": self.chunks_read,
        }
        if self.rank is not None or self.rank_note is not None:
            d["rank"] = self.rank
            d["rank_note"] = self.rank_note
        return d


@dataclass
class GroupDiff:
    """Aggregate over a block, a module or the whole model."""

    name: str
    status: str
    matched_to: str | None
    counts: dict
    params_a: int
    params_b: int
    sums: Sums | None  # None: no member was compared (all added/removed/reshaped/retyped)

    def metrics(self) -> dict:
        if self.sums is None:
            return dict.fromkeys(("l2_delta", "rel_l2", "cosine", "max_abs", "mean_abs", "frac_changed",
                                  "frac_chunks_changed", "l2_a", "l2_b", "n_changed", "n_nonfinite"))
        return self.sums.metrics()

    def to_dict(self) -> dict:
        m = self.metrics()
        return {"name": self.name, "status": self.status, "matched_to": self.matched_to,
                "n_tensors": sum(self.counts.values()), "counts": dict(self.counts),
                "params_a": self.params_a, "params_b": self.params_b,
                **{k: m[k] for k in ("l2_delta", "rel_l2", "cosine", "max_abs", "mean_abs", "frac_changed",
                                     "frac_chunks_changed", "l2_a", "l2_b")}}


@dataclass(repr=False)
class Diff:
    """The result of a diff; ``to_dict()`` is the JSON document of ``modelstore diff --json``."""

    a: str
    b: str
    a_kind: str
    b_kind: str
    tensors: list[TensorDiff]
    layers: list[GroupDiff]  # per block (``--layers``)
    modules: list[GroupDiff]
    total: GroupDiff
    options: dict = field(default_factory=dict)
    io: dict = field(default_factory=dict)  # chunks skipped/read, bytes, seconds

    def __repr__(self) -> str:
        return f"Diff({self.a!r} -> {self.b!r}: {self.summary_line()})"

    @property
    def counts(self) -> dict:
        c = {s: 0 for s in STATUSES}
        for t in self.tensors:
            c[t.status] += 1
        return c

    @property
    def rel_l2(self) -> float | None:
        return self.total.metrics()["rel_l2"]

    def tensor(self, name: str, status: str | None = None) -> TensorDiff:
        """The entry called `name` (B's name; A's for removed tensors). A name can appear
        twice (a removed A tensor and the B tensor now at that name): pass `status`, else
        the entry present in B wins."""
        found = [t for t in self.tensors if t.name == name and (status is None or t.status == status)]
        if not found:
            raise NotFoundError(f"no tensor {name!r} in this diff")
        return next((t for t in found if t.name_b is not None), found[0])

    def layer(self, name: str, status: str | None = None) -> GroupDiff:
        """The block called `name`; a block only A has can share its name with a B block
        (a removed layer.7 beside B's layer.7 = A's layer.8): pass `status`, else B's wins."""
        found = [g for g in self.layers if g.name == name and (status is None or g.status == status)]
        if not found:
            raise NotFoundError(f"no layer {name!r} in this diff")
        return next((g for g in found if g.status != "removed"), found[0])

    def summary(self) -> dict:
        m = self.total.metrics()
        s = dict(self.counts)
        s.update({k: m[k] for k in ("rel_l2", "l2_delta", "cosine", "max_abs", "mean_abs", "frac_changed",
                                    "frac_chunks_changed")})
        s["tensors_a"] = sum(1 for t in self.tensors if t.name_a is not None)
        s["tensors_b"] = sum(1 for t in self.tensors if t.name_b is not None)
        s["params_a"] = self.total.params_a
        s["params_b"] = self.total.params_b
        s["layers_added"] = [g.name for g in self.layers if g.status == "added"]
        s["layers_removed"] = [g.name for g in self.layers if g.status == "removed"]
        s["layers_shifted"] = sum(1 for g in self.layers if g.matched_to is not None)
        return s

    def summary_line(self) -> str:
        c = self.counts
        parts = [f"{c['identical']} identical", f"{c['modified']} modified", f"{c['added']} added",
                 f"{c['removed']} removed", f"{c['renamed']} renamed"]
        if c["reshaped"]:
            parts.append(f"{c['reshaped']} reshaped")
        if c["retyped"]:
            parts.append(f"{c['retyped']} retyped")
        rel = self.rel_l2
        return ", ".join(parts) + f"; whole-model relative change {_fmt_g(rel)}"

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "a_kind": self.a_kind, "b_kind": self.b_kind,
                "summary": self.summary(), "tensors": [t.to_dict() for t in self.tensors],
                "layers": [g.to_dict() for g in self.layers], "modules": [g.to_dict() for g in self.modules],
                "options": dict(self.options), "io": dict(self.io)}


def _fmt_g(x) -> str:
    return "n/a" if x is None else f"{x:.3g}"


# --------------------------------------------------------------------------- pairing


@dataclass
class _Pair:
    a: TInfo | None
    b: TInfo | None
    how: str = "name"  # name | aligned | renamed | added | removed
    block: str = ""
    side: str = "b"  # "a": the tensor of a block only A has (its group must not merge with B's namesake)


def _block_members(tensors: dict[str, TInfo]):
    """{family: {token: {suffix: TInfo}}} and the names outside any family."""
    fams: dict[str, dict[str, dict[str, TInfo]]] = {}
    loose = []
    for name, t in tensors.items():
        sp = _split_block(name)
        if sp is None:
            loose.append(name)
        else:
            fams.setdefault(sp[0], {}).setdefault(sp[1], {})[sp[2]] = t
    return fams, loose


def _align_blocks(tok_a: list[str], tok_b: list[str], blocks_a, blocks_b) -> list[tuple[str, str]]:
    """Monotone pairing of A's and B's blocks maximising Σ similarity over paired blocks (DP).

    sim(i, j) = struct + 2 * content, where struct is the fraction of member suffixes (of the
    union) present in both with the same dtype and shape, and content the fraction with the
    same chunk ids. Blocks with struct < 0.5 and no shared content are never paired. Gaps are
    free; a tiny bonus for equal indices makes index pairing win every tie. Structure is
    compared once per pair of distinct block layouts, content through an index of member
    contents, so the cost is O(members + na*nb).
    """
    na, nb = len(tok_a), len(tok_b)
    if na * nb > ALIGN_MAX_CELLS:
        common = set(tok_a) & set(tok_b)
        return [(t, t) for t in tok_a if t in common and _struct_sim(_layout(blocks_a[t]), _layout(blocks_b[t])) >= 0.5]
    lay_a = [_layout(blocks_a[t]) for t in tok_a]
    lay_b = [_layout(blocks_b[t]) for t in tok_b]
    struct_cache: dict[tuple, float] = {}
    content: dict[tuple[int, int], int] = {}
    index: dict[tuple, list[int]] = {}
    for i, t in enumerate(tok_a):
        for suffix, m in blocks_a[t].items():
            if m.numel:
                index.setdefault((suffix, m.chunk_rows, m.content_key()), []).append(i)
    for j, t in enumerate(tok_b):
        for suffix, m in blocks_b[t].items():
            for i in index.get((suffix, m.chunk_rows, m.content_key()), ()) if m.numel else ():
                content[i, j] = content.get((i, j), 0) + 1
    sim: list[list[float | None]] = []
    for i in range(na):
        row = []
        for j in range(nb):
            key = (lay_a[i], lay_b[j])
            st = struct_cache.get(key)
            if st is None:
                st = struct_cache[key] = _struct_sim(lay_a[i], lay_b[j])
            c = content.get((i, j), 0)
            if st < 0.5 and c == 0:
                row.append(None)
                continue
            union = len(lay_a[i].keys() | lay_b[j].keys())
            row.append(st + 2.0 * c / union + (_INDEX_BONUS if tok_a[i] == tok_b[j] else 0.0))
        sim.append(row)
    score = [[0.0] * (nb + 1) for _ in range(na + 1)]
    move = [[0] * (nb + 1) for _ in range(na + 1)]  # 1 diag, 2 up (skip A), 3 left (skip B)
    for i in range(1, na + 1):
        move[i][0] = 2
    for j in range(1, nb + 1):
        move[0][j] = 3
    for i in range(1, na + 1):
        row, prev, srow, mrow = score[i], score[i - 1], sim[i - 1], move[i]
        for j in range(1, nb + 1):
            s = srow[j - 1]
            up, left = prev[j], row[j - 1]
            if s is not None and prev[j - 1] + s >= up and prev[j - 1] + s >= left:
                row[j], mrow[j] = prev[j - 1] + s, 1
            elif up >= left:
                row[j], mrow[j] = up, 2
            else:
                row[j], mrow[j] = left, 3
    out = []
    i, j = na, nb
    while i > 0 or j > 0:
        mv = move[i][j]
        if mv == 1:
            out.append((tok_a[i - 1], tok_b[j - 1]))
            i, j = i - 1, j - 1
        elif mv == 2:
            i -= 1
        else:
            j -= 1
    out.reverse()
    return out


class _Layout(dict):
    """suffix -> (dtype, shape) of a block's members; hashable (for caching pair scores)."""

    def __hash__(self):
        h = getattr(self, "_h", None)
        if h is None:
            h = self._h = hash(frozenset(self.items()))
        return h

    def __eq__(self, other):
        return dict.__eq__(self, other)


def _layout(members: dict[str, TInfo]) -> _Layout:
    return _Layout((suffix, (m.dtype, m.shape)) for suffix, m in members.items())


def _struct_sim(la: dict, lb: dict) -> float:
    union = len(la.keys() | lb.keys())
    if not union:
        return 0.0
    return sum(1 for k, v in la.items() if lb.get(k) == v) / union


def _pair_tensors(ta: dict[str, TInfo], tb: dict[str, TInfo], align: bool):
    """Pairs (incl. renames), and block metadata: {b_block: a_block} for aligned blocks."""
    pairs: list[_Pair] = []
    only_a: dict[str, TInfo] = {}
    only_b: dict[str, TInfo] = {}
    block_match: dict[str, str] = {}  # B block -> A block (paired blocks)
    a_block_to_b: dict[str, str] = {}
    a_only_blocks: set[str] = set()
    if align:
        fa, loose_a = _block_members(ta)
        fb, loose_b = _block_members(tb)
        for name in loose_a:
            if name in tb:
                pairs.append(_Pair(ta[name], tb[name]))
            else:
                only_a[name] = ta[name]
        for name in loose_b:
            if name not in ta:
                only_b[name] = tb[name]
        for fam in sorted(fa.keys() | fb.keys()):
            ba, bb = fa.get(fam, {}), fb.get(fam, {})
            tok_a = sorted(ba, key=lambda s: (int(s), s))
            tok_b = sorted(bb, key=lambda s: (int(s), s))
            matches = _align_blocks(tok_a, tok_b, ba, bb) if ba and bb else []
            paired_a, paired_b = set(), set()
            for xa, xb in matches:
                paired_a.add(xa)
                paired_b.add(xb)
                ka, kb = _join(fam, xa, ""), _join(fam, xb, "")
                block_match[kb] = ka
                a_block_to_b[ka] = kb
                ma, mb = ba[xa], bb[xb]
                for suffix in sorted(ma.keys() | mb.keys()):
                    if suffix in ma and suffix in mb:
                        pairs.append(_Pair(ma[suffix], mb[suffix], "name" if xa == xb else "aligned", kb))
                    elif suffix in ma:
                        only_a[ma[suffix].name] = ma[suffix]
                    else:
                        only_b[mb[suffix].name] = mb[suffix]
            for xa in tok_a:
                if xa not in paired_a:
                    a_only_blocks.add(_join(fam, xa, ""))
                    for t in ba[xa].values():
                        only_a[t.name] = t
            for xb in tok_b:
                if xb not in paired_b:
                    for t in bb[xb].values():
                        only_b[t.name] = t
    else:
        for name, t in ta.items():
            if name in tb:
                pairs.append(_Pair(t, tb[name]))
            else:
                only_a[name] = t
        for name, t in tb.items():
            if name not in ta:
                only_b[name] = t
    # Renames: same (dtype, shape, chunk ids) only in A and only in B.
    by_key: dict[Any, list[TInfo]] = {}
    for t in sorted(only_a.values(), key=lambda t: t.name):
        if t.numel:
            by_key.setdefault(t.content_key(), []).append(t)
    for t in sorted(only_b.values(), key=lambda t: t.name):
        cands = by_key.get(t.content_key()) if t.numel else None
        if not cands:
            continue
        best = cands[0] if len(cands) == 1 else max(
            cands[:64], key=lambda c: (SequenceMatcher(None, c.name, t.name).ratio(), c.name))
        cands.remove(best)
        del only_a[best.name]
        del only_b[t.name]
        pairs.append(_Pair(best, t, "renamed"))
    for t in only_a.values():
        pairs.append(_Pair(t, None, "removed"))
    for t in only_b.values():
        pairs.append(_Pair(None, t, "added"))
    for p in pairs:
        if not p.block:
            if p.b is not None:
                p.block = block_of(p.b.name)
            else:
                ka = block_of(p.a.name)
                p.block = a_block_to_b.get(ka, ka)
                if ka in a_only_blocks:
                    p.side = "a"
    return pairs, block_match


# --------------------------------------------------------------------------- weights


class _Acc:
    __slots__ = ("parts", "chunks", "changed", "read")

    def __init__(self):
        self.parts: list[tuple] = []
        self.chunks = 0
        self.changed = 0
        self.read = 0


def _kernels():
    from modelstore import kernels

    return kernels


class _Engine:
    def __init__(self, side_a: Side, side_b: Side, *, atol: float, rtol: float, skip_shared: bool, threads: int,
                 progress: Callable[[int, int], None] | None):
        self.a, self.b = side_a, side_b
        self.atol, self.rtol = atol, rtol
        self.use_tol = atol > 0 or rtol > 0
        self.skip_shared = skip_shared
        self.threads = threads
        self.progress = progress
        self.k = _kernels()
        self.io = {"chunks_total": 0, "chunks_skipped": 0, "chunks_compared": 0, "bytes_compared": 0,
                   "stats_chunks": 0}

    # Work lists ------------------------------------------------------------------
    def run(self, jobs: list[tuple[_Pair, _Acc]]) -> None:
        deltas: dict[int, list] = {}  # code -> [(acc, ta, tb, i, length)]
        stats: dict[int, list] = {}  # code -> [(acc, side, t, i, length)]
        segments = []
        for p, acc in jobs:
            ta, tb = p.a, p.b
            code = ta.dt.code
            if ta.chunk_rows != tb.chunk_rows or len(ta.chunks) != len(tb.chunks):
                segments.append((p, acc))
                continue
            spans = ta.spans()
            acc.chunks += len(spans)
            self.io["chunks_total"] += len(spans)
            for i, (_off, length) in enumerate(spans):
                if self.skip_shared and ta.chunks[i] == tb.chunks[i]:
                    self.io["chunks_skipped"] += 1
                    known = self.a.known_sumsq(ta, i) or self.b.known_sumsq(tb, i)
                    if known is not None:
                        s, nonfinite = known
                        acc.parts.append(_skip_part(length // ta.dt.itemsize, s, nonfinite))
                    else:
                        side, t = (self.a, ta) if isinstance(self.a, FileSide) or not isinstance(self.b, FileSide) \
                            else (self.b, tb)
                        stats.setdefault(code, []).append((acc, side, t, i, length))
                else:
                    deltas.setdefault(code, []).append((acc, ta, tb, i, length))
        self.total_bytes = sum(2 * w[4] for ws in deltas.values() for w in ws) + \
            sum(w[4] for ws in stats.values() for w in ws) + \
            sum(2 * p.a.nbytes for p, _ in segments)
        self.done_bytes = 0
        for code, work in stats.items():
            self._run_stats(code, work)
        for code, work in deltas.items():
            self._run_deltas(code, work)
        for p, acc in segments:
            self._run_segments(p, acc)

    def _tick(self, n: int) -> None:
        self.done_bytes += n
        if self.progress is not None:
            self.progress(self.done_bytes, self.total_bytes)

    @staticmethod
    def _batches(work: list, nbytes: Callable[[Any], int], max_items: int, max_bytes: int):
        batch, size = [], 0
        for w in work:
            if batch and (len(batch) >= max_items or size + nbytes(w) > max_bytes):
                yield batch
                batch, size = [], 0
            batch.append(w)
            size += nbytes(w)
        if batch:
            yield batch

    def _run_stats(self, code: int, work: list) -> None:
        for batch in self._batches(work, lambda w: w[4], 64, BATCH_BYTES):
            bufs = [side.chunk(t, i) for _acc, side, t, i, _n in batch]
            res = self.k.stats_many(bufs, code, threads=self.threads)
            del bufs
            for (acc, _side, t, _i, length), st in zip(batch, res):
                st = tuple(st)
                acc.parts.append(_skip_part(length // t.dt.itemsize, float(st[4]), int(st[1]) + int(st[2])))
            self.io["stats_chunks"] += len(batch)
            self._tick(sum(w[4] for w in batch))
            for _acc, side, t, i, _n in batch:
                side.release(t, i)

    def _run_deltas(self, code: int, work: list) -> None:
        batches = list(self._batches(work, lambda w: 2 * w[4], BATCH_PAIRS, BATCH_BYTES))
        if not (self.a.decodes or self.b.decodes):  # two files: slicing an mmap costs nothing
            for batch in batches:
                self._consume(code, batch, [(self.a.chunk(ta, i), self.b.chunk(tb, i))
                                            for _acc, ta, tb, i, _n in batch])
            return
        # Decoding (GIL-free) runs on codecs.THREADS workers, PREFETCH batches ahead of the
        # kernel (GIL-free too), into recycled buffers: fresh 4 MiB buffers cost page faults
        # that halved decode speed. Memory: about (PREFETCH + 1) * BATCH_BYTES.
        from modelstore import codecs

        pool = _BufferPool()
        with ThreadPoolExecutor(max_workers=max(1, codecs.THREADS), thread_name_prefix="diff-decode") as ex:
            def submit(batch):
                return [self._start(ex, pool, ta, tb, i, length) for _acc, ta, tb, i, length in batch]

            inflight = [submit(b) for b in batches[:PREFETCH]]
            try:
                for n, batch in enumerate(batches):
                    jobs = inflight[n]
                    if n + PREFETCH < len(batches):
                        inflight.append(submit(batches[n + PREFETCH]))
                    bufs = [_pair_result(job) for job, _arrays in jobs]
                    self._consume(code, batch, bufs)
                    del bufs
                    for _job, arrays in jobs:  # the kernel is done with them: recycle
                        for arr in arrays:
                            pool.put(arr)
                    inflight[n] = None
            finally:
                for jobs in inflight:  # on error: stop queued decodes
                    for job, _arrays in jobs or ():
                        for f in (job if isinstance(job, tuple) else (job,)):
                            if hasattr(f, "cancel"):
                                f.cancel()

    def _start(self, ex, pool: "_BufferPool", ta: TInfo, tb: TInfo, i: int, length: int):
        """(job, recycled buffers) for chunk pair i: job is a future of both buffers (two
        versions of one store: `_read_pair`), or a tuple of per-side futures/values."""
        a, b = self.a, self.b
        if a.decodes and b.decodes and a.store is b.store:
            arr_a, arr_b = pool.get(length), pool.get(length)
            job = ex.submit(_read_pair, a.store, ta.chunks[i], tb.chunks[i], memoryview(arr_a)[:length],
                            memoryview(arr_b)[:length])
            return job, (arr_a, arr_b)
        parts, arrays = [], []
        for side, t in ((a, ta), (b, tb)):
            if side.decodes:
                arr = pool.get(length)
                arrays.append(arr)
                parts.append(ex.submit(side.chunk, t, i, memoryview(arr)[:length]))
            else:
                parts.append(side.chunk(t, i))
        return tuple(parts), arrays

    def _consume(self, code: int, batch, bufs) -> None:
        res = self.k.delta_many(bufs, code, self.atol, self.rtol, self.threads)
        nbytes = 0
        for (acc, ta, tb, _i, length), d in zip(batch, res):
            d = tuple(d)
            acc.parts.append(d)
            acc.read += 1
            changed = d[8] if self.use_tol else d[7]
            if changed:
                acc.changed += 1
            nbytes += 2 * length
        self.io["chunks_compared"] += len(batch)
        self.io["bytes_compared"] += nbytes
        self._tick(nbytes)
        for _acc, ta, tb, i, _n in batch:
            self.a.release(ta, i)
            self.b.release(tb, i)

    def _run_segments(self, p: _Pair, acc: _Acc) -> None:
        """Different chunk rows on the two sides: compare over the union of row boundaries."""
        ta, tb = p.a, p.b
        if ta.numel == 0:
            return
        if not ta.shape:  # 0-d: one chunk each
            self._segment(acc, self.a.chunk(ta, 0), self.b.chunk(tb, 0), ta.dt.code, True)
            acc.chunks += 1
            self.io["chunks_total"] += 1
            return
        rows = ta.shape[0]
        rb = chunking.row_bytes(ta.shape, ta.dt.itemsize)
        ra, rbk = ta.chunk_rows, tb.chunk_rows
        bounds = sorted(set(range(0, rows, ra)) | set(range(0, rows, rbk)) | {rows})
        acc.chunks += len(ta.chunks)
        self.io["chunks_total"] += len(ta.chunks)
        cur_a = cur_b = None
        ia_cur = ib_cur = -1
        changed_a = set()
        for r0, r1 in zip(bounds, bounds[1:]):
            ia, ib = r0 // ra, r0 // rbk
            if ia != ia_cur:
                cur_a, ia_cur = self.a.chunk(ta, ia), ia
            if ib != ib_cur:
                cur_b, ib_cur = self.b.chunk(tb, ib), ib
            va = memoryview(cur_a).cast("B")[(r0 - ia * ra) * rb:(r1 - ia * ra) * rb]
            vb = memoryview(cur_b).cast("B")[(r0 - ib * rbk) * rb:(r1 - ib * rbk) * rb]
            if self._segment(acc, va, vb, ta.dt.code, False):
                changed_a.add(ia)
            self._tick(2 * (r1 - r0) * rb)
        acc.changed += len(changed_a)
        acc.read += len(ta.chunks)
        self.a.release(ta)
        self.b.release(tb)

    def _segment(self, acc, va, vb, code, count_chunk) -> bool:
        d = tuple(self.k.chunk_delta(va, vb, code, self.atol, self.rtol))
        acc.parts.append(d)
        changed = bool(d[8] if self.use_tol else d[7])
        if count_chunk:
            acc.read += 1
            acc.changed += int(changed)
        self.io["chunks_compared"] += 1
        self.io["bytes_compared"] += 2 * len(va)
        return changed


def _pair_result(job) -> tuple:
    if hasattr(job, "result"):
        return job.result()
    return tuple(p.result() if hasattr(p, "result") else p for p in job)


def _chain(store, cid: bytes) -> list | None:
    """[(id, index entry)] from `cid` down to its plain (non-delta) record, or None if any
    link is missing (read_chunk then reports it)."""
    from modelstore import codecs

    delta = getattr(codecs, "DELTA_ENCODINGS", frozenset())
    chain, cur = [], cid
    while len(chain) <= 64:
        e = store.index.get(cur)
        if e is None:
            return None
        chain.append((cur, e))
        if e.encoding not in delta:
            return chain
        cur = e.base
    return None


_scratch = threading.local()


def _xor_into(codecs, enc: int, payload, raw_len: int, out) -> None:
    """codecs.xor_into, decoding the XOR record into a per-thread scratch buffer instead of
    a fresh allocation each time (whose page faults made it 2x slower). XOR_BLOSC2's meaning
    (a blosc2 record of the XOR) is fixed by the on-disk format; other encodings go through
    codecs.xor_into."""
    import numpy as np

    if enc != getattr(codecs, "XOR_BLOSC2", None) or raw_len % 8:
        codecs.xor_into(enc, payload, raw_len, out)
        return
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.size < raw_len:
        buf = _scratch.buf = np.empty(max(raw_len, 1 << 22), dtype=np.uint8)
    x = buf[:raw_len]
    codecs.decode(codecs.BLOSC2, payload, raw_len, x)
    view = np.frombuffer(memoryview(out).cast("B")[:raw_len], dtype=np.uint8)
    if view.ctypes.data % 8 == 0:
        np.bitwise_xor(view.view(np.uint64), x.view(np.uint64), out=view.view(np.uint64))
    else:
        np.bitwise_xor(view, x, out=view)


def _read_pair(store, ca: bytes, cb: bytes, out_a, out_b) -> tuple:
    """Both chunks of a pair from one store. When one is stored as a delta chain passing
    through the other (a version against its ancestor: the usual diff), it is rebuilt from
    the other's decoded bytes plus the links in between, so the shared root is decoded
    once instead of twice. Both results are verified against their ids."""
    from modelstore import codecs, hashing
    from modelstore.checkout import read_chunk
    from modelstore.errors import IntegrityError

    if ca == cb:
        x = read_chunk(store, ca, out=out_a)
        return x, x
    for first, second, out1, out2, flip in ((ca, cb, out_a, out_b, False), (cb, ca, out_b, out_a, True)):
        chain = _chain(store, second)
        ids = [c for c, _ in chain] if chain else []
        if first in ids[1:]:
            x = read_chunk(store, first, out=out1)
            memoryview(out2).cast("B")[:] = memoryview(x).cast("B")
            for link_id, link in reversed(chain[:ids.index(first)]):
                enc, raw_len, _base, payload = store.packs.read(link_id, link.location, link.stored_len)
                _xor_into(codecs, enc, payload, raw_len, out2)
            if hashing.digest(out2) != second:
                raise IntegrityError(f"chunk {second.hex()} does not match its id (run `modelstore fsck`)")
            return (out2, x) if flip else (x, out2)
    return read_chunk(store, ca, out=out_a), read_chunk(store, cb, out=out_b)


class _BufferPool:
    """Reusable uninitialised byte buffers in power-of-two size classes (thread-safe)."""

    def __init__(self):
        self._free: dict[int, list] = {}
        self._lock = threading.Lock()

    def get(self, n: int):
        import numpy as np

        cap = 1 << max(12, (max(1, n) - 1).bit_length())
        with self._lock:
            free = self._free.get(cap)
            if free:
                return free.pop()
        return np.empty(cap, dtype=np.uint8)

    def put(self, arr) -> None:
        if arr is not None:
            with self._lock:
                self._free.setdefault(arr.size, []).append(arr)


def _skip_part(n: int, sumsq: float, nonfinite: int) -> tuple:
    return (n, 0.0, sumsq, sumsq, sumsq, 0.0, 0.0, 0, 0, nonfinite)


def _sums_of(acc: _Acc, use_tol: bool) -> Sums:
    parts = acc.parts
    return Sums(
        n=sum(int(p[0]) for p in parts), sum_d2=math.fsum(p[1] for p in parts), sum_a2=math.fsum(p[2] for p in parts),
        sum_b2=math.fsum(p[3] for p in parts), sum_ab=math.fsum(p[4] for p in parts),
        max_abs=max((float(p[5]) for p in parts), default=0.0), sum_abs=math.fsum(p[6] for p in parts),
        n_changed=sum(int(p[8] if use_tol else p[7]) for p in parts), n_nonfinite=sum(int(p[9]) for p in parts),
        chunks=acc.chunks, chunks_changed=acc.changed)


# --------------------------------------------------------------------------- low rank


def _rank_pass(side_a: Side, side_b: Side, items: list[TensorDiff], pairs: dict[int, _Pair], *, budget: float,
               max_elems: int, io: dict) -> None:
    import numpy as np

    from modelstore import lowrank

    t0 = time.perf_counter()
    for td in sorted(items, key=lambda t: -(t.rel_l2 or 0.0)):
        p = pairs[id(td)]
        ta, tb = p.a, p.b
        if len(ta.shape) != 2:
            continue
        if ta.dt.kind != "f":
            td.rank_note = "skipped: not a float tensor"
            continue
        if ta.numel > max_elems:
            td.rank_note = f"skipped: {ta.numel:,} elements > rank_max_elems {max_elems:,}"
            continue
        if time.perf_counter() - t0 > budget:
            td.rank_note = f"skipped: rank time budget ({budget:g} s) spent"
            continue
        delta = np.zeros(ta.shape, dtype=np.float32)
        flat = delta.reshape(-1)
        npdt = ta.dt.numpy
        itemsize = ta.dt.itemsize
        wide = np.float64 if itemsize == 8 else np.float32
        if ta.chunk_rows == tb.chunk_rows:  # chunk pairs: shared ones are zero rows, never read
            for i, (off, length) in enumerate(ta.spans()):
                if ta.chunks[i] == tb.chunks[i]:
                    continue
                xa = np.frombuffer(side_a.chunk(ta, i), dtype=npdt)
                xb = np.frombuffer(side_b.chunk(tb, i), dtype=npdt)
                lo = off // itemsize
                flat[lo:lo + xa.size] = xb.astype(wide) - xa.astype(wide)
                side_a.release(ta, i)
                side_b.release(tb, i)
        else:  # different row blocks: Δ = -A chunk by chunk, then += B chunk by chunk
            for side, t, sign in ((side_a, ta, -1.0), (side_b, tb, 1.0)):
                for i, (off, length) in enumerate(t.spans()):
                    x = np.frombuffer(side.chunk(t, i), dtype=npdt).astype(wide)
                    lo = off // itemsize
                    flat[lo:lo + x.size] += (sign * x).astype(np.float32)
                    side.release(t, i)
        sums = td.sums
        rms = math.sqrt(sums.sum_b2 / max(1, sums.n - sums.n_nonfinite)) if sums else 0.0
        m, n = ta.shape
        est = lowrank.estimate_rank(delta, rtol=lowrank.default_rtol(ta.dtype),
                                    floor=lowrank.noise_floor(ta.dtype, rms, m, n))
        del delta, flat
        td.rank = est.rank
        td.rank_note = (f"≥{est.rank} (sketch saturated)" if est.lower_bound else f"{est.method}") + \
            f", σ1={est.sigma_max:.3g}"
    io["rank_seconds"] = round(time.perf_counter() - t0, 4)


# --------------------------------------------------------------------------- driver


def _check_tol(atol, rtol):
    for name, v in (("atol", atol), ("rtol", rtol)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            raise InvalidInputError(f"{name} must be a finite number >= 0, got {v!r}")


def diff_sides(
    side_a: Side,
    side_b: Side,
    *,
    atol: float = 0.0,
    rtol: float = 0.0,
    skip_shared: bool = True,
    align: bool = True,
    rank: bool = False,
    rank_budget: float = 60.0,
    rank_max_elems: int = 64 << 20,
    threads: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Diff:
    """Diff two opened sides (see the module docstring for the rules)."""
    _check_tol(atol, rtol)
    t0 = time.perf_counter()
    use_tol = atol > 0 or rtol > 0
    pairs, block_match = _pair_tensors(side_a.tensors, side_b.tensors, align)
    results: list[TensorDiff] = []
    jobs: list[tuple[_Pair, _Acc]] = []
    accs: dict[int, _Acc] = {}
    for p in pairs:
        ta, tb = p.a, p.b
        name = tb.name if tb is not None else ta.name
        td = TensorDiff(
            name=name, status="", name_a=ta.name if ta else None, name_b=tb.name if tb else None,
            shape_a=ta.shape if ta else None, shape_b=tb.shape if tb else None,
            dtype_a=ta.dtype if ta else None, dtype_b=tb.dtype if tb else None,
            renamed_from=ta.name if p.how == "renamed" else None,
            matched_to=ta.name if p.how == "aligned" else None,
            block=p.block, module=module_of(name) if tb is not None else module_of(_shift(ta.name, p.block)),
            side=p.side,
        )
        if p.how in ("added", "removed"):
            td.status = p.how
        elif ta.dtype != tb.dtype:
            td.status = "retyped"
        elif ta.shape != tb.shape:
            td.status = "reshaped"
        else:
            td.status = "renamed" if p.how == "renamed" else ""
            td.exact = ta.chunk_rows == tb.chunk_rows and ta.chunks == tb.chunks
            acc = _Acc()
            accs[id(td)] = acc
            jobs.append((p, acc))
        results.append(td)
    engine = _Engine(side_a, side_b, atol=atol, rtol=rtol, skip_shared=skip_shared, threads=threads,
                     progress=progress)
    engine.run(jobs)
    for td in results:
        acc = accs.get(id(td))
        if acc is None:
            continue
        td.sums = _sums_of(acc, use_tol)
        td.chunks_read = acc.read
        if not td.status:
            td.status = "identical" if td.sums.n_changed == 0 else "modified"
    io = dict(engine.io)
    if rank:
        by_id = {id(td): p for td, p in zip(results, pairs)}
        mods = [td for td in results if td.status == "modified"]
        _rank_pass(side_a, side_b, mods, by_id, budget=rank_budget, max_elems=rank_max_elems, io=io)
    results.sort(key=lambda t: t.name)
    layers = _groups(results, lambda t: t.block, block_match)
    modules = _groups(results, lambda t: t.module, {})
    total = _group("", results, None)
    io["seconds"] = round(time.perf_counter() - t0, 4)
    opts = {"atol": atol, "rtol": rtol, "skip_shared": skip_shared, "align": align, "rank": rank}
    return Diff(side_a.label, side_b.label, side_a.kind, side_b.kind, results, layers, modules, total, opts, io)


def _shift(a_name: str, b_block: str) -> str:
    """A's name re-rooted under the B block it was aligned to (for grouping removed tensors)."""
    ka = block_of(a_name)
    if ka and a_name.startswith(ka + ".") and b_block != ka and _split_block(a_name):
        return b_block + a_name[len(ka):]
    return a_name


def _group(name: str, members: list[TensorDiff], matched_to: str | None) -> GroupDiff:
    counts = {s: 0 for s in STATUSES}
    for t in members:
        counts[t.status] += 1
    present = {s for s, c in counts.items() if c}
    if present == {"added"}:
        status = "added"
    elif present == {"removed"}:
        status = "removed"
    elif present <= {"identical"}:
        status = "identical"
    elif present <= {"identical", "renamed"}:
        status = "renamed"
    else:
        status = "modified"
    compared = [t.sums for t in members if t.sums is not None]
    sums = Sums.merge(compared) if compared else None
    pa = sum(math.prod(t.shape_a) for t in members if t.shape_a is not None)
    pb = sum(math.prod(t.shape_b) for t in members if t.shape_b is not None)
    return GroupDiff(name, status, matched_to, counts, pa, pb, sums)


def _groups(results: list[TensorDiff], key, block_match: dict[str, str]) -> list[GroupDiff]:
    by: dict[tuple[str, str], list[TensorDiff]] = {}
    for t in results:
        by.setdefault((key(t), t.side), []).append(t)
    out = []
    for (name, side), members in by.items():
        a_name = block_match.get(name) if side == "b" else None
        out.append(_group(name, members, a_name if a_name is not None and a_name != name else None))
    out.sort(key=lambda g: (_natural(g.name), g.status != "removed"))
    return out


def _natural(s: str):
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in s.split(".")]


def diff(a, b, *, store=None, chunk_target: int | None = None, **opts) -> Diff:
    """Diff two REFs, paths or dicts of arrays (REFs need `store`). See ``diff_sides``."""
    side_a = side_b = None
    try:
        side_a = open_side(a, store, chunk_target=chunk_target)
        side_b = open_side(b, store, chunk_target=chunk_target, other=side_a)
        if isinstance(side_b, StoredSide) and isinstance(side_a, FileSide) and chunk_target is None \
                and _rows_differ(side_a, side_b):
            side_a.close()  # re-chunk A like the stored B, so shared chunks are found
            side_a = open_side(a, store, other=side_b)
        return diff_sides(side_a, side_b, **opts)
    finally:
        for s in (side_a, side_b):
            if s is not None:
                s.close()


def _rows_differ(fa: FileSide, sb: StoredSide) -> bool:
    for name, t in fa.tensors.items():
        o = sb.tensors.get(name)
        if o is not None and o.dtype == t.dtype and o.shape == t.shape and o.chunk_rows != t.chunk_rows:
            return True
    return False


def diff_files(path_a, path_b, **opts) -> Diff:
    """Diff two model files (or folders, or dicts of arrays) without a store."""
    for x in (path_a, path_b):
        if isinstance(x, (str, os.PathLike)) and not os.path.exists(x):
            raise NotFoundError(f"{os.fspath(x)}: no such file or folder")
    return diff(path_a, path_b, store=None, **opts)
