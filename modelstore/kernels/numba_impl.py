"""Numba implementation of the kernels (used when the native extension is not built).

It follows the native kernels' accumulation order exactly (csrc/modelstore/kernels.hpp:
4 lanes, blocks of 512 elements, TwoSum of the block sums, segments of 2**19 elements merged
in order), so its results are bit-identical to the native backend's and independent of the
thread count. Each block first runs a branch-free loop over 4 explicit lanes (which LLVM
vectorises); if a sum of squares comes out non-finite (a NaN/Inf input, or an F64 overflow)
the block is redone by the element-wise loop that excludes non-finite elements.

Decoding: F32/F64 are read through a typed view of the bytes and widened with np.float64();
4- and 8-byte integers are converted to float64 by numpy per segment; F16/BF16 and every
one-byte type (F8_*, BOOL, and also I8/U8, I16/U16) go through a float64 lookup table of
256 / 65536 entries indexed by the bits (numba cannot use ml_dtypes types directly, but the
tables are built with them). So only four specialisations of each kernel get compiled.

All kernels are ``@njit(cache=True, nogil=True, fastmath=False)``; the *_many functions
run the (item, segment) tasks on a ThreadPoolExecutor, in parallel since the GIL is released.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from numba import njit, types
from numba.extending import overload

from modelstore import dtypes
from modelstore.kernels import Delta, Stats, check_code, resolve_threads
from modelstore.kernels.numpy_impl import _bytes

LANES = 4  # == kernels::kLanes
BLOCK = 512  # == kernels::kBlock
SEGMENT = 1 << 19  # == kernels::kSegment
MIN_PARALLEL_BYTES = 1 << 20  # below this the thread pool costs more than it saves

# --------------------------------------------------------------------------- decoding


def _dec(v, table, i):  # pragma: no cover - replaced by the overload inside njit code
    raise NotImplementedError


@overload(_dec)
def _ov_dec(v, table, i):
    if isinstance(table, types.NoneType):
        return lambda v, table, i: np.float64(v[i])
    return lambda v, table, i: table[v[i]]


@njit(cache=True, nogil=True, fastmath=False)
def _two_sum(hi, lo, x):
    s = hi + x
    bp = s - hi
    err = (hi - (s - bp)) + (x - bp)
    return s, lo + err


@njit(cache=True, nogil=True, fastmath=False)
def _fin(x):
    return x - x == 0.0


# --------------------------------------------------------------------------- kernels


@njit(cache=True, nogil=True, fastmath=False)
def _stats_range(v, table, start, stop):
    """Partial stats of elements [start, stop): (n_nan, n_inf, s_hi, s_lo, q_hi, q_lo, mn, mx)."""
    n_nan = 0
    n_inf = 0
    s_hi = 0.0
    s_lo = 0.0
    q_hi = 0.0
    q_lo = 0.0
    mn = np.inf
    mx = -np.inf
    ls = np.empty(4)
    lq = np.empty(4)
    lmn = np.empty(4)
    lmx = np.empty(4)
    for b0 in range(start, stop, BLOCK):
        cnt = min(BLOCK, stop - b0)
        full = cnt - cnt % 4
        s0 = s1 = s2 = s3 = 0.0
        q0 = q1 = q2 = q3 = 0.0
        mn0 = mn1 = mn2 = mn3 = np.inf
        mx0 = mx1 = mx2 = mx3 = -np.inf
        w = v[b0 : b0 + cnt]  # index from 0: LLVM then drops the negative-index handling
        for i in range(0, full, 4):
            x0 = _dec(w, table, i)
            x1 = _dec(w, table, i + 1)
            x2 = _dec(w, table, i + 2)
            x3 = _dec(w, table, i + 3)
            s0 += x0
            s1 += x1
            s2 += x2
            s3 += x3
            q0 += x0 * x0
            q1 += x1 * x1
            q2 += x2 * x2
            q3 += x3 * x3
            mn0 = x0 if x0 < mn0 else mn0
            mn1 = x1 if x1 < mn1 else mn1
            mn2 = x2 if x2 < mn2 else mn2
            mn3 = x3 if x3 < mn3 else mn3
            mx0 = x0 if x0 > mx0 else mx0
            mx1 = x1 if x1 > mx1 else mx1
            mx2 = x2 if x2 > mx2 else mx2
            mx3 = x3 if x3 > mx3 else mx3
        done = full
        if not (_fin(q0) and _fin(q1) and _fin(q2) and _fin(q3)):
            done = 0  # NaN/Inf inside: redo the block element-wise
            s0 = s1 = s2 = s3 = 0.0
            q0 = q1 = q2 = q3 = 0.0
            mn0 = mn1 = mn2 = mn3 = np.inf
            mx0 = mx1 = mx2 = mx3 = -np.inf
        ls[0], ls[1], ls[2], ls[3] = s0, s1, s2, s3
        lq[0], lq[1], lq[2], lq[3] = q0, q1, q2, q3
        lmn[0], lmn[1], lmn[2], lmn[3] = mn0, mn1, mn2, mn3
        lmx[0], lmx[1], lmx[2], lmx[3] = mx0, mx1, mx2, mx3
        for i in range(b0 + done, b0 + cnt):
            x = _dec(v, table, i)
            if not _fin(x):
                if x != x:
                    n_nan += 1
                else:
                    n_inf += 1
                continue
            j = (i - b0) & 3
            ls[j] += x
            lq[j] += x * x
            lmn[j] = x if x < lmn[j] else lmn[j]
            lmx[j] = x if x > lmx[j] else lmx[j]
        s_hi, s_lo = _two_sum(s_hi, s_lo, (ls[0] + ls[1]) + (ls[2] + ls[3]))
        q_hi, q_lo = _two_sum(q_hi, q_lo, (lq[0] + lq[1]) + (lq[2] + lq[3]))
        for j in range(4):
            mn = lmn[j] if lmn[j] < mn else mn
            mx = lmx[j] if lmx[j] > mx else mx
    return n_nan, n_inf, s_hi, s_lo, q_hi, q_lo, mn, mx


@njit(cache=True, nogil=True, fastmath=False)
def _delta_range(va, vb, ra, rb, table, start, stop, atol, rtol, raw_cmp):
    """Partial delta of elements [start, stop): (n_changed, n_changed_tol, n_nonfinite, max_abs,
    then (hi, lo) of sum_d2, sum_a2, sum_b2, sum_ab, sum_abs). raw_cmp: n_changed compares
    ra/rb (I64/U64 bits) instead of the values."""
    n_chg = 0
    n_tol = 0
    n_nf = 0
    max_abs = 0.0
    acc = np.zeros(10)  # (hi, lo) x (d2, a2, b2, ab, abs)
    L = np.empty((6, 4))  # d2, a2, b2, ab, abs, max
    C = np.empty((2, 4), dtype=np.int64)  # changed, changed_tol
    for b0 in range(start, stop, BLOCK):
        cnt = min(BLOCK, stop - b0)
        full = cnt - cnt % 4
        d20 = d21 = d22 = d23 = 0.0
        a20 = a21 = a22 = a23 = 0.0
        b20 = b21 = b22 = b23 = 0.0
        ab0 = ab1 = ab2 = ab3 = 0.0
        sa0 = sa1 = sa2 = sa3 = 0.0
        mx0 = mx1 = mx2 = mx3 = 0.0
        c0 = c1 = c2 = c3 = 0
        t0 = t1 = t2 = t3 = 0
        wa = va[b0 : b0 + cnt]  # index from 0: LLVM then drops the negative-index handling
        wb = vb[b0 : b0 + cnt]
        wra = ra[b0 : b0 + cnt]
        wrb = rb[b0 : b0 + cnt]
        for i in range(0, full, 4):
            xa0 = _dec(wa, table, i)
            xa1 = _dec(wa, table, i + 1)
            xa2 = _dec(wa, table, i + 2)
            xa3 = _dec(wa, table, i + 3)
            xb0 = _dec(wb, table, i)
            xb1 = _dec(wb, table, i + 1)
            xb2 = _dec(wb, table, i + 2)
            xb3 = _dec(wb, table, i + 3)
            d0 = xa0 - xb0
            d1 = xa1 - xb1
            d2 = xa2 - xb2
            d3 = xa3 - xb3
            e0 = abs(d0)
            e1 = abs(d1)
            e2 = abs(d2)
            e3 = abs(d3)
            d20 += d0 * d0
            d21 += d1 * d1
            d22 += d2 * d2
            d23 += d3 * d3
            a20 += xa0 * xa0
            a21 += xa1 * xa1
            a22 += xa2 * xa2
            a23 += xa3 * xa3
            b20 += xb0 * xb0
            b21 += xb1 * xb1
            b22 += xb2 * xb2
            b23 += xb3 * xb3
            ab0 += xa0 * xb0
            ab1 += xa1 * xb1
            ab2 += xa2 * xb2
            ab3 += xa3 * xb3
            sa0 += e0
            sa1 += e1
            sa2 += e2
            sa3 += e3
            mx0 = e0 if e0 > mx0 else mx0
            mx1 = e1 if e1 > mx1 else mx1
            mx2 = e2 if e2 > mx2 else mx2
            mx3 = e3 if e3 > mx3 else mx3
            if raw_cmp:
                c0 += wra[i] != wrb[i]
                c1 += wra[i + 1] != wrb[i + 1]
                c2 += wra[i + 2] != wrb[i + 2]
                c3 += wra[i + 3] != wrb[i + 3]
            else:
                c0 += xa0 != xb0
                c1 += xa1 != xb1
                c2 += xa2 != xb2
                c3 += xa3 != xb3
            t0 += e0 > atol + rtol * abs(xb0)
            t1 += e1 > atol + rtol * abs(xb1)
            t2 += e2 > atol + rtol * abs(xb2)
            t3 += e3 > atol + rtol * abs(xb3)
        done = full
        if not (_fin(a20 + b20) and _fin(a21 + b21) and _fin(a22 + b22) and _fin(a23 + b23)):
            done = 0  # NaN/Inf inside: redo the block element-wise
            d20 = d21 = d22 = d23 = 0.0
            a20 = a21 = a22 = a23 = 0.0
            b20 = b21 = b22 = b23 = 0.0
            ab0 = ab1 = ab2 = ab3 = 0.0
            sa0 = sa1 = sa2 = sa3 = 0.0
            mx0 = mx1 = mx2 = mx3 = 0.0
            c0 = c1 = c2 = c3 = 0
            t0 = t1 = t2 = t3 = 0
        L[0, 0], L[0, 1], L[0, 2], L[0, 3] = d20, d21, d22, d23
        L[1, 0], L[1, 1], L[1, 2], L[1, 3] = a20, a21, a22, a23
        L[2, 0], L[2, 1], L[2, 2], L[2, 3] = b20, b21, b22, b23
        L[3, 0], L[3, 1], L[3, 2], L[3, 3] = ab0, ab1, ab2, ab3
        L[4, 0], L[4, 1], L[4, 2], L[4, 3] = sa0, sa1, sa2, sa3
        L[5, 0], L[5, 1], L[5, 2], L[5, 3] = mx0, mx1, mx2, mx3
        C[0, 0], C[0, 1], C[0, 2], C[0, 3] = c0, c1, c2, c3
        C[1, 0], C[1, 1], C[1, 2], C[1, 3] = t0, t1, t2, t3
        for i in range(b0 + done, b0 + cnt):
            xa = _dec(va, table, i)
            xb = _dec(vb, table, i)
            if not (_fin(xa) and _fin(xb)):
                n_nf += 1
                if ra[i] != rb[i]:  # identical bits (same NaN, same Inf) count as unchanged
                    n_chg += 1
                    n_tol += 1
                continue
            j = (i - b0) & 3
            d = xa - xb
            e = abs(d)
            L[0, j] += d * d
            L[1, j] += xa * xa
            L[2, j] += xb * xb
            L[3, j] += xa * xb
            L[4, j] += e
            L[5, j] = e if e > L[5, j] else L[5, j]
            C[0, j] += (ra[i] != rb[i]) if raw_cmp else (xa != xb)
            C[1, j] += e > atol + rtol * abs(xb)
        for k in range(5):
            acc[2 * k], acc[2 * k + 1] = _two_sum(acc[2 * k], acc[2 * k + 1], (L[k, 0] + L[k, 1]) + (L[k, 2] + L[k, 3]))
        for j in range(4):
            max_abs = L[5, j] if L[5, j] > max_abs else max_abs
            n_chg += C[0, j]
            n_tol += C[1, j]
    return n_chg, n_tol, n_nf, max_abs, acc


# --------------------------------------------------------------------------- partial merging
# Exactly the C++ StatsPartial / DeltaPartial merge and finish (same operations, same order).


def _csum_add(hi: float, lo: float, o_hi: float, o_lo: float) -> tuple[float, float]:
    s = hi + o_hi
    bp = s - hi
    err = (hi - (s - bp)) + (o_hi - bp)
    return s, (lo + err) + o_lo


def _csum_value(hi: float, lo: float) -> float:
    return hi + lo if hi - hi == 0.0 else hi


def _finish_stats(n: int, parts: list) -> Stats:
    n_nan = n_inf = 0
    s = (0.0, 0.0)
    q = (0.0, 0.0)
    mn, mx = math.inf, -math.inf
    for p_nan, p_inf, s_hi, s_lo, q_hi, q_lo, p_mn, p_mx in parts:
        n_nan += p_nan
        n_inf += p_inf
        s = _csum_add(s[0], s[1], s_hi, s_lo)
        q = _csum_add(q[0], q[1], q_hi, q_lo)
        mn = p_mn if p_mn < mn else mn
        mx = p_mx if p_mx > mx else mx
    if n - n_nan - n_inf <= 0:
        mn = mx = math.nan
    return Stats(n, int(n_nan), int(n_inf), _csum_value(*s), _csum_value(*q), float(mn), float(mx))


def _finish_delta(n: int, parts: list) -> Delta:
    chg = tol = nf = 0
    mx = 0.0
    acc = [(0.0, 0.0)] * 5
    for p_chg, p_tol, p_nf, p_mx, p_acc in parts:
        chg += p_chg
        tol += p_tol
        nf += p_nf
        mx = p_mx if p_mx > mx else mx
        acc = [_csum_add(acc[k][0], acc[k][1], float(p_acc[2 * k]), float(p_acc[2 * k + 1])) for k in range(5)]
    v = [_csum_value(*a) for a in acc]
    return Delta(n, v[0], v[1], v[2], v[3], float(mx), v[4], int(chg), int(tol), int(nf))


# --------------------------------------------------------------------------- views and tables

_tables: dict[int, np.ndarray] = {}
_tables_lock = threading.Lock()


def _build_table(dt: dtypes.DType) -> np.ndarray:
    bits = np.arange(1 << (8 * dt.itemsize), dtype=np.uint8 if dt.itemsize == 1 else np.uint16)
    if dt.kind == "b":
        return (bits != 0).astype(np.float64)
    with np.errstate(invalid="ignore"):  # NaN encodings are expected here
        return bits.view(dt.numpy).astype(np.float64)


def _table(dt: dtypes.DType) -> np.ndarray | None:
    if dt.itemsize > 2:
        return None
    t = _tables.get(dt.code)
    if t is None:
        with _tables_lock:
            t = _tables.get(dt.code)
            if t is None:
                t = _build_table(dt)
                t.setflags(write=False)
                _tables[dt.code] = t
    return t


_RAW = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


class _View:
    """How the kernels read one buffer. Only four kernel specialisations exist: float64 values
    (F64, and the 4/8-byte integers converted per segment), float32 values (F32), and uint8 /
    uint16 bits decoded through a table (all 1- and 2-byte types)."""

    __slots__ = ("vals", "bits", "convert", "size", "nbytes")

    def __init__(self, buf: Any, dt: dtypes.DType) -> None:
        raw = _bytes(buf)
        if raw.size % dt.itemsize:
            raise ValueError(f"buffer length {raw.size} is not a multiple of the {dt.name} itemsize {dt.itemsize}")
        if raw.ctypes.data % dt.itemsize:
            raw = raw.copy()  # misaligned (e.g. a memoryview slice): numba assumes aligned arrays
        else:
            raw = raw.view()
        # Always read-only: numba compiles separate code for writable and read-only arrays.
        raw.setflags(write=False)
        self.nbytes = raw.size
        self.size = raw.size // dt.itemsize
        self.bits = raw.view(_RAW[dt.itemsize])
        self.convert = dt.kind in "iu" and dt.itemsize >= 4
        if dt.itemsize <= 2:
            self.vals = self.bits  # decoded through the table
        else:
            self.vals = raw.view(dt.numpy)  # F32/F64, or ints converted by segment()

    def segment(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, int, int]:
        """(values, bits, start, stop) for the kernel call on elements [lo, hi)."""
        if not self.convert:
            return self.vals, self.bits, lo, hi
        v = self.vals[lo:hi]
        # int -> float64 rounds to nearest like the C++ cast; the 64-bit raw view keeps the
        # integers for the exact n_changed comparison of I64/U64.
        f = v.astype(np.float64)
        f.setflags(write=False)  # same numba types as F64 (read-only float64 + uint64 bits)
        bits = v.view(np.uint64) if v.dtype.itemsize == 8 else f.view(np.uint64)
        return f, bits, 0, hi - lo


def _segments(n: int) -> list[tuple[int, int]]:
    return [(lo, min(n, lo + SEGMENT)) for lo in range(0, n, SEGMENT)]


def _run(tasks: list, fn, threads: int, nbytes: int) -> list:
    workers = min(threads, len(tasks))
    if workers <= 1 or nbytes < MIN_PARALLEL_BYTES:
        return [fn(t) for t in tasks]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="modelstore-kernels") as ex:
        return list(ex.map(fn, tasks))


# --------------------------------------------------------------------------- public functions


def stats_many(bufs: list, code: int, threads: int = 0) -> list[Stats]:
    threads = resolve_threads(threads)
    dt = dtypes.BY_CODE[check_code(code)]
    table = _table(dt)
    views = [_View(b, dt) for b in bufs]
    tasks = [(i, lo, hi) for i, v in enumerate(views) for lo, hi in _segments(v.size)]

    def one(task):
        i, lo, hi = task
        vals, _, start, stop = views[i].segment(lo, hi)
        return _stats_range(vals, table, start, stop)

    parts = _run(tasks, one, threads, sum(v.nbytes for v in views))
    per_item: list[list] = [[] for _ in views]
    for (i, _, _), p in zip(tasks, parts):
        per_item[i].append(p)
    return [_finish_stats(v.size, ps) for v, ps in zip(views, per_item)]


def delta_many(pairs: list, code: int, atol: float = 0.0, rtol: float = 0.0, threads: int = 0) -> list[Delta]:
    threads = resolve_threads(threads)
    dt = dtypes.BY_CODE[check_code(code)]
    atol, rtol = float(atol), float(rtol)
    table = _table(dt)
    raw_cmp = dt.kind in "iu" and dt.itemsize == 8  # I64/U64 are not exact in double
    items = []
    for i, p in enumerate(pairs):
        try:
            a, b = p
        except (TypeError, ValueError):
            raise ValueError(f"delta_many: item {i} is not an (a, b) pair") from None
        va, vb = _View(a, dt), _View(b, dt)
        if va.nbytes != vb.nbytes:
            raise ValueError(f"delta_many: item {i}: buffers differ in length ({va.nbytes} vs {vb.nbytes} bytes)")
        items.append((va, vb))
    tasks = [(i, lo, hi) for i, it in enumerate(items) for lo, hi in _segments(it[0].size)]

    def one(task):
        i, lo, hi = task
        va, vb = items[i]
        xa, ra, start, stop = va.segment(lo, hi)
        xb, rb, _, _ = vb.segment(lo, hi)
        return _delta_range(xa, xb, ra, rb, table, start, stop, atol, rtol, raw_cmp)

    parts = _run(tasks, one, threads, sum(2 * it[0].nbytes for it in items))
    per_item: list[list] = [[] for _ in items]
    for (i, _, _), p in zip(tasks, parts):
        per_item[i].append(p)
    return [_finish_delta(it[0].size, ps) for it, ps in zip(items, per_item)]


def chunk_stats(buf: Any, code: int) -> Stats:
    return stats_many([buf], code, threads=1)[0]


def chunk_delta(a: Any, b: Any, code: int, atol: float = 0.0, rtol: float = 0.0) -> Delta:
    na, nb = _bytes(a).size, _bytes(b).size
    if na != nb:
        raise ValueError(f"chunk_delta: buffers differ in length ({na} vs {nb} bytes)")
    return delta_many([(a, b)], code, atol, rtol, threads=1)[0]
