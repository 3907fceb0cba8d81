"""Manifests: what a version is made of, and its content id.

The content id is XXH3-128 of the canonical JSON of the identity part only (format,
tensors sorted by name with dtype, shape, chunk rows and chunk ids). Stats ride along in
the stored document but are not hashed: they are derived from the bytes, and float sums
may differ in the last bits between kernel back-ends. See docs/FORMAT.md §6.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from modelstore import dtypes, hashing
from modelstore.errors import FormatError

MANIFEST_FORMAT = 1


@dataclass(frozen=True, slots=True)
class TensorStats:
    n: int = 0
    n_nan: int = 0
    n_inf: int = 0
    sum: float = 0.0
    sumsq: float = 0.0
    min: float | None = None
    max: float | None = None

    @property
    def mean(self) -> float | None:
        finite = self.n - self.n_nan - self.n_inf
        return self.sum / finite if finite else None

    @property
    def l2(self) -> float:
        return math.sqrt(self.sumsq)

    @classmethod
    def merge(cls, parts) -> "TensorStats":
        n = n_nan = n_inf = 0
        s = sq = 0.0
        lo = hi = None
        for p in parts:
            pn, pnan, pinf, psum, psq, pmin, pmax = p
            n += pn
            n_nan += pnan
            n_inf += pinf
            s += psum
            sq += psq
            if pmin is not None and not math.isnan(pmin):
                lo = pmin if lo is None else min(lo, pmin)
            if pmax is not None and not math.isnan(pmax):
                hi = pmax if hi is None else max(hi, pmax)
        return cls(n, n_nan, n_inf, s, sq, lo, hi)

    def to_dict(self) -> dict:
        return {"n": self.n, "n_nan": self.n_nan, "n_inf": self.n_inf, "sum": _f(self.sum),
                "sumsq": _f(self.sumsq), "min": _f(self.min), "max": _f(self.max)}


def _f(x):
    """JSON has no NaN/Inf: store them as None (only reachable via overflow)."""
    if x is None or not math.isfinite(x):
        return None
    return x


@dataclass(frozen=True, slots=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    chunk_rows: int
    chunks: tuple[bytes, ...]
    stats: TensorStats = field(default_factory=TensorStats)
    chunk_sumsq: tuple[float, ...] = ()

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * dtypes.get(self.dtype).itemsize

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def identity(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "chunk_rows": self.chunk_rows, "chunks": [c.hex() for c in self.chunks]}

    def to_dict(self) -> dict:
        d = self.identity()
        d["stats"] = self.stats.to_dict()
        d["chunk_sumsq"] = [_f(x) for x in self.chunk_sumsq]
        return d


@dataclass(frozen=True, slots=True)
class Manifest:
    tensors: tuple[TensorEntry, ...]

    def __post_init__(self):
        object.__setattr__(self, "tensors", tuple(sorted(self.tensors, key=lambda t: t.name)))

    @property
    def content_id(self) -> bytes:
        return hashing.digest(_canonical({"format": MANIFEST_FORMAT, "tensors": [t.identity() for t in self.tensors]}))

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def params(self) -> int:
        return sum(t.numel for t in self.tensors)

    def by_name(self) -> dict[str, TensorEntry]:
        return {t.name: t for t in self.tensors}

    def chunk_ids(self) -> set[bytes]:
        return {c for t in self.tensors for c in t.chunks}

    def to_json(self) -> bytes:
        return _canonical({"format": MANIFEST_FORMAT, "tensors": [t.to_dict() for t in self.tensors]})

    @classmethod
    def from_json(cls, raw: bytes) -> "Manifest":
        try:
            doc = json.loads(raw)
            if doc.get("format") != MANIFEST_FORMAT:
                raise FormatError(f"manifest format {doc.get('format')!r} is not supported; upgrade modelstore")
            tensors = []
            for t in doc["tensors"]:
                st = t.get("stats") or {}
                tensors.append(TensorEntry(
                    name=t["name"], dtype=t["dtype"], shape=tuple(t["shape"]), chunk_rows=t["chunk_rows"],
                    chunks=tuple(bytes.fromhex(c) for c in t["chunks"]),
                    stats=TensorStats(st.get("n", 0), st.get("n_nan", 0), st.get("n_inf", 0),
                                      st.get("sum") or 0.0, st.get("sumsq") or 0.0, st.get("min"), st.get("max")),
                    chunk_sumsq=tuple(x if x is not None else math.nan for x in t.get("chunk_sumsq", ())),
                ))
        except FormatError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FormatError(f"corrupt manifest: {exc}") from None
        return cls(tuple(tensors))


def _canonical(doc) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
