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

from modelstore.diff_inputs import (  # noqa: F401
    __all__,
    STATUSES,
    BATCH_PAIRS,
    BATCH_BYTES,
    PREFETCH,
    ALIGN_MAX_CELLS,
    _INDEX_BONUS,
    MODEL_SUFFIXES,
    module_of,
    _split_block,
    _join,
    block_of,
    TInfo,
    Side,
    StoredSide,
    _release_pages,
    FileSide,
    chunking_span,
    _looks_like_path,
    needs_store,
    open_side,
)
from modelstore.diff_report import (  # noqa: F401
    _num,
    Sums,
    TensorDiff,
    GroupDiff,
    Diff,
    _fmt_g,
)
from modelstore.diff_pairing import (  # noqa: F401
    _Pair,
    _block_members,
    _align_blocks,
    _Layout,
    _layout,
    _struct_sim,
    _pair_tensors,
)
from modelstore.diff_weights import (  # noqa: F401
    _Acc,
    _kernels,
    _Engine,
    _pair_result,
    _chain,
    _read_pair,
    _BufferPool,
    _skip_part,
    _sums_of,
    _rank_pass,
)


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


def diff(a, b, *, store=None, chunk_target: int | None = None, graph: bool | None = None, **opts) -> Diff:
    """Diff two REFs, paths or dicts of arrays (REFs need `store`). See ``diff_sides``.

    ``graph``: None adds the graph diff (``.graph``, modelstore.graph_diff) when both sides
    carry a graph; True requires both to (else InvalidInputError); False skips it.
    """
    side_a = side_b = None
    try:
        side_a = open_side(a, store, chunk_target=chunk_target)
        side_b = open_side(b, store, chunk_target=chunk_target, other=side_a)
        if isinstance(side_b, StoredSide) and isinstance(side_a, FileSide) and chunk_target is None \
                and _rows_differ(side_a, side_b):
            side_a.close()  # re-chunk A like the stored B, so shared chunks are found
            side_a = open_side(a, store, other=side_b)
        result = diff_sides(side_a, side_b, **opts)
        result.graph = _graph_section(side_a, side_b, graph) if graph is not False else None
        return result
    finally:
        for s in (side_a, side_b):
            if s is not None:
                s.close()


def _graph_section(side_a: Side, side_b: Side, required: bool | None) -> dict | None:
    """graph_diff of the two sides' graphs plus each side's hardware figures; None when a side has none."""
    from modelstore import graph_diff, graph_store, hwfigures

    ga, gb = graph_store.of_side(side_a), graph_store.of_side(side_b)
    if ga is None or gb is None:
        if required:
            which = side_a.label if ga is None else side_b.label
            raise InvalidInputError(f"{which} carries no graph (only ONNX files, and versions committed from them, do)")
        return None
    out = graph_diff.graph_diff(ga, gb)
    figs = {}
    for key, g, side in (("a", ga, side_a), ("b", gb, side_b)):
        f = hwfigures.figures(g, params=sum(t.numel for t in side.tensors.values()),
                              size=sum(t.nbytes for t in side.tensors.values()))
        figs[key] = {k: f[k] for k in ("params", "size", "flops", "mem_infer", "cpu_ghz_min")}
    out["figures"] = figs
    return out


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
