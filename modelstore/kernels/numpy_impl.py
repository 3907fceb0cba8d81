"""NumPy reference implementation of the kernels: the oracle the tests trust.

Deliberately simple: view the bytes with the dtype's numpy type (ml_dtypes for BF16/F8),
widen to float64 with ``astype`` (exact for every float type), mask out NaN/Inf, and use
numpy's reductions (pairwise summation, error ~1e-15 relative to the sum of |terms|).
Large buffers are processed in slices of 2**20 elements (bounded memory) whose partial sums
are combined with ``math.fsum``. Semantics are documented in :mod:`modelstore.kernels`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from modelstore import dtypes
from modelstore.kernels import Delta, Stats, check_code, resolve_threads

SLICE = 1 << 20  # elements per slice (memory bound: a few float64 temporaries of 8 MiB)

# Unsigned integer type of each width, to compare raw bit patterns ("identical bits").
_BITS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _bytes(buf: Any) -> np.ndarray:
    """The raw bytes of a C-contiguous buffer as a uint8 array (no copy)."""
    if isinstance(buf, np.ndarray):
        if not buf.flags.c_contiguous:
            raise ValueError("expected a C-contiguous buffer (got a strided numpy array)")
        return buf.reshape(-1).view(np.uint8)
    mv = memoryview(buf)  # TypeError for objects without the buffer protocol
    if not mv.c_contiguous:
        raise ValueError("expected a C-contiguous buffer")
    return np.frombuffer(mv, dtype=np.uint8)


def _typed(buf: Any, code: int) -> tuple[dtypes.DType, np.ndarray]:
    dt = dtypes.BY_CODE[check_code(code)]
    raw = _bytes(buf)
    if raw.size % dt.itemsize:
        raise ValueError(f"buffer length {raw.size} is not a multiple of the {dt.name} itemsize {dt.itemsize}")
    return dt, raw


def _values(dt: dtypes.DType, raw: np.ndarray) -> np.ndarray:
    """float64 values of the elements (bool: non-zero byte -> 1.0)."""
    if dt.kind == "b":
        return (raw != 0).astype(np.float64)
    with np.errstate(invalid="ignore"):  # ml_dtypes warns when it casts NaN encodings
        return raw.view(dt.numpy).astype(np.float64)


def _bits(dt: dtypes.DType, raw: np.ndarray) -> np.ndarray:
    return raw.view(_BITS[dt.itemsize])


def _slices(n: int):
    for lo in range(0, n, SLICE):
        yield lo, min(n, lo + SLICE)


def _sum(parts: list[float]) -> float:
    try:
        return math.fsum(parts)
    except (OverflowError, ValueError):
        return sum(parts, 0.0)


def chunk_stats(buf: Any, code: int) -> Stats:
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to Inf is a valid result
        return _chunk_stats(buf, code)


def chunk_delta(a: Any, b: Any, code: int, atol: float = 0.0, rtol: float = 0.0) -> Delta:
    with np.errstate(over="ignore", invalid="ignore"):
        return _chunk_delta(a, b, code, atol, rtol)


def _chunk_stats(buf: Any, code: int) -> Stats:
    dt, raw = _typed(buf, code)
    n = raw.size // dt.itemsize
    n_nan = n_inf = 0
    sums: list[float] = []
    sumsqs: list[float] = []
    mn, mx = math.inf, -math.inf
    for lo, hi in _slices(n):
        x = _values(dt, raw[lo * dt.itemsize : hi * dt.itemsize])
        nan = np.isnan(x)
        inf = np.isinf(x)
        n_nan += int(nan.sum())
        n_inf += int(inf.sum())
        f = x[~(nan | inf)]
        if f.size:
            sums.append(float(np.sum(f)))
            sumsqs.append(float(np.sum(f * f)))
            mn = min(mn, float(f.min()))
            mx = max(mx, float(f.max()))
    if n - n_nan - n_inf == 0:
        mn = mx = math.nan
    return Stats(n, n_nan, n_inf, _sum(sums), _sum(sumsqs), mn, mx)


def _chunk_delta(a: Any, b: Any, code: int, atol: float, rtol: float) -> Delta:
    dt, ra = _typed(a, code)
    _, rb = _typed(b, code)
    if ra.size != rb.size:
        raise ValueError(f"chunk_delta: buffers differ in length ({ra.size} vs {rb.size} bytes)")
    atol, rtol = float(atol), float(rtol)
    n = ra.size // dt.itemsize
    acc: dict[str, list[float]] = {k: [] for k in ("d2", "a2", "b2", "ab", "abs")}
    max_abs = 0.0
    n_changed = n_changed_tol = n_nonfinite = 0
    for lo, hi in _slices(n):
        sa = ra[lo * dt.itemsize : hi * dt.itemsize]
        sb = rb[lo * dt.itemsize : hi * dt.itemsize]
        xa, xb = _values(dt, sa), _values(dt, sb)
        nonfinite = ~(np.isfinite(xa) & np.isfinite(xb))
        same_bits = _bits(dt, sa) == _bits(dt, sb)
        n_nonfinite += int(nonfinite.sum())
        nf_changed = int((nonfinite & ~same_bits).sum())  # changed unless identical bits
        fin = ~nonfinite
        fa, fb = xa[fin], xb[fin]
        d = fa - fb
        ad = np.abs(d)
        acc["d2"].append(float(np.sum(d * d)))
        acc["a2"].append(float(np.sum(fa * fa)))
        acc["b2"].append(float(np.sum(fb * fb)))
        acc["ab"].append(float(np.sum(fa * fb)))
        acc["abs"].append(float(np.sum(ad)))
        if ad.size:
            max_abs = max(max_abs, float(ad.max()))
        if dt.kind in "iu":  # integers: compare exactly, not the (rounded) doubles
            changed = sa.view(dt.numpy)[fin] != sb.view(dt.numpy)[fin]
        else:  # floats by value (-0.0 == 0.0), bool by truth value
            changed = fa != fb
        n_changed += int(changed.sum()) + nf_changed
        n_changed_tol += int((ad > atol + rtol * np.abs(fb)).sum()) + nf_changed
    return Delta(n, _sum(acc["d2"]), _sum(acc["a2"]), _sum(acc["b2"]), _sum(acc["ab"]), max_abs,
                 _sum(acc["abs"]), n_changed, n_changed_tol, n_nonfinite)


def stats_many(bufs: list, code: int, threads: int = 0) -> list[Stats]:
    resolve_threads(threads)  # validated; the reference runs sequentially
    code = check_code(code)
    return [chunk_stats(b, code) for b in bufs]


def delta_many(pairs: list, code: int, atol: float = 0.0, rtol: float = 0.0, threads: int = 0) -> list[Delta]:
    resolve_threads(threads)
    code = check_code(code)
    out = []
    for i, p in enumerate(pairs):
        try:
            a, b = p
        except (TypeError, ValueError):
            raise ValueError(f"delta_many: item {i} is not an (a, b) pair") from None
        out.append(chunk_delta(a, b, code, atol, rtol))
    return out
