"""Diff results: per-tensor sums and statuses, per-layer groups, the Diff value object and its JSON.

Part of modelstore.diff, whose docstring states the rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from modelstore.errors import NotFoundError

from modelstore.diff_inputs import (  # noqa: F401
    STATUSES,
)


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
    graph: dict | None = None  # modelstore.graph_diff result when both sides carry a graph

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
                "options": dict(self.options), "io": dict(self.io),
                **({"graph": self.graph} if self.graph is not None else {})}


def _fmt_g(x) -> str:
    return "n/a" if x is None else f"{x:.3g}"


