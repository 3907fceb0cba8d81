"""Tests of modelstore.kernels: every available backend against the NumPy reference.

Tolerances (the documented contract of modelstore.kernels):

* counts (n, n_nan, n_inf, n_changed, n_changed_tol, n_nonfinite): exact;
* min, max, max_abs: exact by value (-0.0 == 0.0; NaN matches NaN);
* sums (sum, sumsq, sum_d2, sum_a2, sum_b2, sum_ab, sum_abs): |got - ref| <= 1e-9 * B, where
  B is the sum of the absolute values of the summed terms (the natural scale of rounding
  error; a relative bound on the result itself is meaningless under cancellation). When B
  overflows (F64 near the top of its range) the order of summation decides between Inf, NaN
  and a huge finite value, so such a sum is not compared.
* native vs numba: bit-identical (same summation order), and so are the native SIMD variants
  and *_many vs a loop of singles, whatever the thread count.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelstore import dtypes, kernels
from modelstore.errors import InternalError
from modelstore.kernels import Delta, Stats, numpy_impl, selftest

ROOT = Path(__file__).resolve().parents[1]
ORACLE = kernels.get_backend("numpy")
BACKENDS = kernels.available_backends()
FAST = [b for b in BACKENDS if b != "numpy"]  # compiled backends, compared to the oracle
ALL_CODES = sorted(dtypes.BY_CODE)
FLOAT_CODES = [c for c in ALL_CODES if dtypes.BY_CODE[c].kind == "f"]
SUM_SLACK = 1e-9

STATS_SUMS = {3: "sum", 4: "sumsq"}
DELTA_SUMS = {1: "sum_d2", 2: "sum_a2", 3: "sum_b2", 4: "sum_ab", 6: "sum_abs"}

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                            HealthCheck.data_too_large])


# --------------------------------------------------------------------------- helpers


def _same_value(x: float, y: float) -> bool:
    return x == y or (x != x and y != y)


def _identical(x: tuple, y: tuple) -> bool:
    """Field by field: same type class, same value (NaN == NaN), same sign of zero."""
    if len(x) != len(y):
        return False
    for a, b in zip(x, y):
        if isinstance(a, float) or isinstance(b, float):
            if not (isinstance(a, float) and isinstance(b, float)):
                return False
            if not _same_value(a, b) or math.copysign(1.0, a) != math.copysign(1.0, b):
                return False
        elif type(a) is not int or type(b) is not int or a != b:
            return False
    return True


def _finite_values(raw: bytes, code: int) -> np.ndarray:
    dt = dtypes.BY_CODE[code]
    x = numpy_impl._values(dt, np.frombuffer(raw, np.uint8))
    return x[np.isfinite(x)]


def _stats_scales(raw: bytes, code: int) -> dict[int, float]:
    x = _finite_values(raw, code)
    with np.errstate(over="ignore"):
        return {3: float(np.abs(x).sum()), 4: float((x * x).sum())}


def _delta_scales(a: bytes, b: bytes, code: int) -> dict[int, float]:
    dt = dtypes.BY_CODE[code]
    xa = numpy_impl._values(dt, np.frombuffer(a, np.uint8))
    xb = numpy_impl._values(dt, np.frombuffer(b, np.uint8))
    fin = np.isfinite(xa) & np.isfinite(xb)
    xa, xb = xa[fin], xb[fin]
    with np.errstate(over="ignore", invalid="ignore"):
        d = xa - xb
        return {1: float((d * d).sum()), 2: float((xa * xa).sum()), 3: float((xb * xb).sum()),
                4: float(np.abs(xa * xb).sum()), 6: float(np.abs(d).sum())}


def _check_against_oracle(got: tuple, ref: tuple, sums: dict[int, str], scales: dict[int, float], what: str):
    assert len(got) == len(ref), what
    for i, (g, r) in enumerate(zip(got, ref)):
        field = f"{what} field {i} ({type(ref).__name__}.{ref._fields[i]})"
        if i in sums:
            scale = scales[i]
            if not math.isfinite(scale):
                continue  # intermediate overflow: order-dependent, see module docstring
            assert math.isfinite(g) and math.isfinite(r), f"{field}: {g} vs {r}"
            assert abs(g - r) <= SUM_SLACK * scale, f"{field}: {g!r} vs {r!r} (scale {scale})"
        elif isinstance(r, float):
            assert isinstance(g, float) and _same_value(g, r), f"{field}: {g!r} vs {r!r}"
        else:
            assert type(g) is int and g == r, f"{field}: {g!r} vs {r!r}"


# --------------------------------------------------------------------------- data strategies

_SPECIAL_FLOATS = [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0]


def _specials(dt: dtypes.DType) -> np.ndarray:
    """Special values of a float dtype, as raw bits: NaNs, Infs, zeros, subnormals, extremes."""
    t = dt.numpy
    fi = ml_dtypes.finfo(t) if dt.name in ("BF16", "F8_E4M3", "F8_E5M2") else np.finfo(t)
    vals = [float(fi.max), -float(fi.max), float(fi.tiny), -float(fi.tiny), float(fi.smallest_subnormal),
            -float(fi.smallest_subnormal), float(fi.eps), 0.5]
    with np.errstate(over="ignore", invalid="ignore"):
        arr = np.array(_SPECIAL_FLOATS + vals, dtype=np.float64).astype(t)
    return arr.view(numpy_impl._BITS[dt.itemsize])


@st.composite
def buffers(draw, code: int, max_len: int = 3000) -> bytes:
    """Raw bytes of one chunk: random bits, or realistic values, sprinkled with special values."""
    dt = dtypes.BY_CODE[code]
    n = draw(st.one_of(st.integers(0, 40), st.integers(0, max_len)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mode = draw(st.sampled_from(["bits", "values", "values"]))
    if mode == "bits" or dt.kind == "b":
        raw = rng.integers(0, 256, n * dt.itemsize, dtype=np.uint8)
        return raw.tobytes()
    if dt.kind == "f":
        scale = draw(st.sampled_from([1e-30, 1e-6, 0.02, 1.0, 1e4, 1e30, 1e200]))
        with np.errstate(over="ignore"):
            x = (rng.standard_normal(n) * scale).astype(dt.numpy)
        bits = x.view(numpy_impl._BITS[dt.itemsize]).copy()
        if n and draw(st.booleans()):
            specials = _specials(dt)
            k = int(rng.integers(1, max(2, n // 10)))
            bits[rng.integers(0, n, k)] = specials[rng.integers(0, specials.size, k)]
        return bits.tobytes()
    info = np.iinfo(dt.numpy)
    hi = min(int(info.max), draw(st.sampled_from([10, 1000, int(info.max)])))
    lo = 0 if dt.kind == "u" else max(int(info.min), -hi - 1)
    x = rng.integers(lo, hi, n, dtype=dt.numpy, endpoint=True)
    if n and draw(st.booleans()):
        x[rng.integers(0, n, 3)] = [info.min, info.max, 0]
    return x.tobytes()


@st.composite
def pairs(draw, code: int, max_len: int = 3000) -> tuple[bytes, bytes]:
    """(a, b): b is a, a perturbed copy of a (tiny or large changes), or unrelated."""
    dt = dtypes.BY_CODE[code]
    a = draw(buffers(code, max_len))
    n = len(a) // dt.itemsize
    how = draw(st.sampled_from(["same", "perturbed", "perturbed", "random"]))
    if how == "same":
        return a, bytes(a)
    if how == "random":
        b = draw(buffers(code, max_len))
        if len(b) != len(a):  # repeat or cut b to the length of a
            b = (b * (len(a) // max(1, len(b)) + 1))[: len(a)] if b else bytes(len(a))
        return a, b
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    bits = np.frombuffer(a, numpy_impl._BITS[dt.itemsize]).copy()
    if n:
        k = int(rng.integers(1, n + 1))
        idx = rng.integers(0, n, k)
        kind = draw(st.sampled_from(["lowbit", "randbits", "sign"]))
        if kind == "lowbit":  # the next/previous representable value (or +-1 for ints)
            bits[idx] ^= 1
        elif kind == "randbits":
            bits[idx] = rng.integers(0, np.iinfo(bits.dtype).max, k, dtype=bits.dtype, endpoint=True)
        else:  # flip the sign bit: -0.0 vs 0.0, NaN sign, etc.
            bits[idx] ^= np.array(1 << (8 * dt.itemsize - 1), dtype=bits.dtype)
    return a, bits.tobytes()


# (atol, rtol): zero (the cheaper code paths), random, and exact small values that equal
# typical differences (ints +-1, low-bit flips of small floats) to hit the > vs >= boundary.
tolerances = st.tuples(
    st.one_of(st.just(0.0), st.floats(0, 10), st.sampled_from([1e-300, 1e-8, 0.25, 0.5, 1.0, 2.0])),
    st.one_of(st.just(0.0), st.floats(0, 2), st.sampled_from([1e-5, 0.1, 0.5, 1.0])),
)


# --------------------------------------------------------------------------- vs the oracle


@pytest.mark.parametrize("backend", FAST)
@SETTINGS
@given(data=st.data(), code=st.sampled_from(ALL_CODES))
def test_stats_matches_oracle(backend, data, code):
    buf = data.draw(buffers(code))
    got = kernels.get_backend(backend).chunk_stats(buf, code)
    ref = ORACLE.chunk_stats(buf, code)
    assert isinstance(got, Stats)
    _check_against_oracle(got, ref, STATS_SUMS, _stats_scales(buf, code), f"{backend} {dtypes.BY_CODE[code].name}")


@pytest.mark.parametrize("backend", FAST)
@SETTINGS
@given(data=st.data(), code=st.sampled_from(ALL_CODES), tol=tolerances)
def test_delta_matches_oracle(backend, data, code, tol):
    a, b = data.draw(pairs(code))
    atol, rtol = tol
    got = kernels.get_backend(backend).chunk_delta(a, b, code, atol, rtol)
    ref = ORACLE.chunk_delta(a, b, code, atol, rtol)
    assert isinstance(got, Delta)
    _check_against_oracle(got, ref, DELTA_SUMS, _delta_scales(a, b, code),
                          f"{backend} {dtypes.BY_CODE[code].name} atol={atol} rtol={rtol}")


@pytest.mark.skipif(not {"native", "numba"} <= set(BACKENDS), reason="needs native and numba")
@SETTINGS
@given(data=st.data(), code=st.sampled_from(ALL_CODES), tol=tolerances)
def test_native_and_numba_bit_identical(data, code, tol):
    a, b = data.draw(pairs(code))
    nat, nb = kernels.get_backend("native"), kernels.get_backend("numba")
    assert _identical(nat.chunk_stats(a, code), nb.chunk_stats(a, code))
    assert _identical(nat.chunk_delta(a, b, code, *tol), nb.chunk_delta(a, b, code, *tol))


@pytest.mark.skipif("native" not in BACKENDS, reason="native extension not built")
@pytest.mark.parametrize("code", ALL_CODES)
def test_native_simd_variants_identical(code):
    import modelstore._native as native

    rng = np.random.default_rng(code)
    dt = dtypes.BY_CODE[code]
    a = rng.integers(0, 256, 4099 * dt.itemsize, dtype=np.uint8).tobytes()
    b = bytearray(a)
    b[::5] = bytes(len(b[::5]))
    results = []
    try:
        for variant in ("baseline", "avx2", "auto"):
            try:
                native.set_simd(variant)
            except ValueError:
                continue  # not supported on this CPU / build
            results.append((native.chunk_stats(a, code), native.chunk_delta(a, b, code, 1e-3, 0.5),
                            native.chunk_delta(a, b, code, 0.0, 0.0), native.chunk_delta(a, b, code, 0.25, 0.0)))
    finally:
        native.set_simd("auto")
    for r in results[1:]:
        assert all(_identical(x, y) for x, y in zip(r, results[0]))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("name", ["F16", "BF16", "F8_E4M3", "F8_E5M2"])
def test_every_bit_pattern_decodes_exactly(backend, name):
    """Each bit pattern p of the small float types, as a chunk [p, p, p, p] (one vector)."""
    dt = dtypes.BY_NAME[name]
    bits = np.arange(1 << (8 * dt.itemsize), dtype=numpy_impl._BITS[dt.itemsize])
    with np.errstate(invalid="ignore"):
        want = bits.view(dt.numpy).astype(np.float64)
    chunks = [np.repeat(bits[i : i + 1], 4).tobytes() for i in range(bits.size)]
    res = kernels.get_backend(backend).stats_many(chunks, dt.code, threads=2)
    for w, s in zip(want, res):
        if math.isnan(w):
            assert (s.n_nan, s.n_inf) == (4, 0) and math.isnan(s.min)
        elif math.isinf(w):
            assert (s.n_nan, s.n_inf) == (0, 4) and math.isnan(s.max)
        else:
            assert (s.n_nan, s.n_inf, s.min, s.max, s.sum) == (0, 0, w, w, 4 * w)
            assert math.copysign(1.0, s.min) == math.copysign(1.0, w)
    # and the whole table at once, in one chunk, against the oracle
    whole = bits.tobytes()
    _check_against_oracle(kernels.get_backend(backend).chunk_stats(whole, dt.code), ORACLE.chunk_stats(whole, dt.code),
                          STATS_SUMS, _stats_scales(whole, dt.code), name)


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), code=st.sampled_from(ALL_CODES), tol=tolerances)
def test_identical_buffers_give_zero_delta(backend, data, code, tol):
    a = data.draw(buffers(code))
    be = kernels.get_backend(backend)
    d = be.chunk_delta(a, bytes(a), code, *tol)  # equal bytes, different objects
    st_ = be.chunk_stats(a, code)
    assert d.n == st_.n
    assert (d.sum_d2, d.max_abs, d.sum_abs, d.n_changed, d.n_changed_tol) == (0.0, 0.0, 0.0, 0, 0)
    assert d.n_nonfinite == st_.n_nan + st_.n_inf
    assert d.sum_a2 == d.sum_b2 == d.sum_ab
    assert d.sum_a2 == st_.sumsq or not math.isfinite(st_.sumsq)


def test_identical_buffers_with_nan_inside():
    x = np.array([1.0, np.nan, 3.0, -np.inf, 0.5] * 300, dtype=np.float32)
    for backend in BACKENDS:
        d = kernels.get_backend(backend).chunk_delta(x, x.copy(), dtypes.BY_NAME["F32"].code)
        assert (d.n_changed, d.n_changed_tol, d.sum_d2, d.n_nonfinite) == (0, 0, 0.0, 600)


@pytest.mark.parametrize("backend", BACKENDS)
def test_accuracy_on_many_elements(backend):
    """Sums of 2**22 values against math.fsum (correctly rounded): far below 1e-12."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(1 << 22) * 0.02 + 0.01).astype(np.float32)
    exact_sum = math.fsum(x.astype(np.float64).tolist())
    exact_sq = math.fsum((x.astype(np.float64) ** 2).tolist())  # x^2 is exact for float32 x
    scale = float(np.abs(x.astype(np.float64)).sum())
    s = kernels.get_backend(backend).chunk_stats(x, dtypes.BY_NAME["F32"].code)
    assert abs(s.sum - exact_sum) <= 1e-13 * scale
    assert abs(s.sumsq - exact_sq) <= 1e-13 * exact_sq


# --------------------------------------------------------------------------- *_many


def _chunks(code: int, big: int) -> list[bytes]:
    rng = np.random.default_rng(11)
    dt = dtypes.BY_CODE[code]
    sizes = [0, 1, 3, 7, 513, 4097, big, 1000, 0, 2**19 + 3]
    out = []
    for n in sizes:
        if dt.kind == "f":
            x = (rng.standard_normal(n) * 0.02).astype(dt.numpy)
            bits = x.view(numpy_impl._BITS[dt.itemsize]).copy()
            if n > 10:
                bits[rng.integers(0, n, 3)] = _specials(dt)[:3]
            out.append(bits.tobytes())
        else:
            out.append(rng.integers(0, 256, n * dt.itemsize, dtype=np.uint8).tobytes())
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["F32", "BF16", "I64"])
def test_many_equals_loop_of_singles(backend, name):
    code = dtypes.BY_NAME[name].code
    be = kernels.get_backend(backend)
    big = 3_000_000 if name == "F32" else 700_000  # > 1 segment: the item is split in ranges
    chunks = _chunks(code, big)
    others = [bytes(reversed(c)) if len(c) % 2 == 0 else c for c in chunks]
    others = [o[: len(c)] for o, c in zip(others, chunks)]
    singles_s = [be.chunk_stats(c, code) for c in chunks]
    singles_d = [be.chunk_delta(c, o, code, 1e-3, 1e-2) for c, o in zip(chunks, others)]
    for threads in (1, 2, 0):
        many_s = be.stats_many(chunks, code, threads=threads)
        many_d = be.delta_many(list(zip(chunks, others)), code, 1e-3, 1e-2, threads=threads)
        assert len(many_s) == len(chunks) and len(many_d) == len(chunks)
        for x, y in zip(many_s, singles_s):
            assert isinstance(x, Stats) and _identical(x, y)
        for x, y in zip(many_d, singles_d):
            assert isinstance(x, Delta) and _identical(x, y)
    assert be.stats_many([], code) == [] and be.delta_many([], code) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_merge_of_chunks_matches_whole(backend):
    be = kernels.get_backend(backend)
    code = dtypes.BY_NAME["F32"].code
    rng = np.random.default_rng(3)
    a = rng.standard_normal(100_003).astype(np.float32)
    a[[5, 700, 90_000]] = [np.nan, np.inf, -np.inf]
    b = a + rng.standard_normal(a.size).astype(np.float32) * np.float32(1e-3)
    b[12] = np.nan
    a8, b8 = a.view(np.uint8), b.view(np.uint8)
    cuts = [0, 4, 4, 4000, 4004, 200_000, a8.size]
    ca = [a8[x:y] for x, y in zip(cuts, cuts[1:])]
    cb = [b8[x:y] for x, y in zip(cuts, cuts[1:])]
    ms = kernels.merge_stats(be.stats_many(ca, code))
    md = kernels.merge_delta(be.delta_many(list(zip(ca, cb)), code, 1e-4, 1e-3))
    ws, wd = be.chunk_stats(a, code), be.chunk_delta(a, b, code, 1e-4, 1e-3)
    _check_against_oracle(ms, ws, STATS_SUMS, _stats_scales(a.tobytes(), code), "merge_stats")
    _check_against_oracle(md, wd, DELTA_SUMS, _delta_scales(a.tobytes(), b.tobytes(), code), "merge_delta")
    assert isinstance(ms, Stats) and isinstance(md, Delta)


def test_merge_edge_cases():
    e = kernels.merge_stats([])
    assert e.n == 0 and math.isnan(e.min) and math.isnan(e.max)
    assert kernels.merge_delta([]) == Delta(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0, 0)
    s1 = Stats(2, 2, 0, 0.0, 0.0, math.nan, math.nan)  # only NaNs
    s2 = Stats(3, 0, 1, 1.5, 4.25, -2.0, 0.5)
    m = kernels.merge_stats([s1, s2])
    assert m == Stats(5, 2, 1, 1.5, 4.25, -2.0, 0.5)
    m = kernels.merge_stats([s1, s1])
    assert (m.n, m.n_nan) == (4, 4) and math.isnan(m.min)
    inf = Stats(1, 0, 0, 1e308, math.inf, 1e308, 1e308)
    assert kernels.merge_stats([inf, inf]).sum == math.inf  # overflow does not raise
    d = Delta(1, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 1, 0, 1)
    assert kernels.merge_delta([d, d]) == Delta(2, 2.0, 4.0, 6.0, 8.0, 5.0, 12.0, 2, 0, 2)


# --------------------------------------------------------------------------- inputs


@pytest.mark.parametrize("backend", BACKENDS)
def test_buffer_kinds(backend):
    be = kernels.get_backend(backend)
    x = np.array([1.5, -2.0, np.nan, 3.25, 0.0, 7.0], dtype=np.float32)
    code = dtypes.BY_NAME["F32"].code
    want = be.chunk_stats(x.tobytes(), code)
    padded = b"\x00" + x.tobytes()
    for buf in (x, x.view(np.uint8), x.reshape(2, 3), bytearray(x.tobytes()), memoryview(x.tobytes()),
                memoryview(padded)[1:], x.view(np.int32)):
        assert _identical(be.chunk_stats(buf, code), want), type(buf)
    bf = x.astype(ml_dtypes.bfloat16)  # an ml_dtypes array (no buffer protocol of its own)
    assert _identical(be.chunk_stats(bf, dtypes.BY_NAME["BF16"].code),
                      ORACLE.chunk_stats(bf.view(np.uint8).tobytes(), dtypes.BY_NAME["BF16"].code))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_raises_valueerror(backend):
    be = kernels.get_backend(backend)
    f32 = dtypes.BY_NAME["F32"].code
    with pytest.raises(ValueError):
        be.chunk_stats(b"\x00" * 6, f32)  # not a multiple of 4
    with pytest.raises(ValueError):
        be.chunk_delta(b"\x00" * 6, b"\x00" * 6, f32)
    with pytest.raises(ValueError):
        be.chunk_delta(b"\x00" * 8, b"\x00" * 4, f32)  # unequal lengths
    with pytest.raises(ValueError):
        be.delta_many([(b"\x00" * 8, b"\x00" * 8), (b"\x00" * 8, b"\x00" * 12)], f32)
    with pytest.raises(ValueError):
        be.stats_many([b"\x00" * 4, b"\x00" * 5], f32)
    for code in (15, -1, 99, 2**70, "F32", 1.0):
        with pytest.raises(ValueError):
            be.chunk_stats(b"\x00" * 8, code)
        with pytest.raises(ValueError):
            be.chunk_delta(b"\x00" * 8, b"\x00" * 8, code)
        with pytest.raises(ValueError):
            be.stats_many([b"\x00" * 8], code)
        with pytest.raises(ValueError):
            be.delta_many([(b"\x00" * 8, b"\x00" * 8)], code)
    with pytest.raises(ValueError):
        be.stats_many([b""], f32, threads=-1)
    with pytest.raises(ValueError):
        be.delta_many([b"\x00" * 8], f32)  # not an (a, b) pair
    with pytest.raises(ValueError):
        be.chunk_stats(np.zeros((4, 4), np.float32)[:, :2], f32)  # not contiguous
    with pytest.raises(TypeError):
        be.chunk_stats(12345, f32)  # no buffer protocol


# --------------------------------------------------------------------------- selection


def _python(code: str, **env) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k != kernels.ENV_VAR}
    e.update(env)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=120)


def test_import_is_cheap_and_default_selection():
    r = _python(
        "import sys; import modelstore.kernels as k; assert 'numba' not in sys.modules; "
        "b = k.backend(); print(b); print(k.chunk_stats(b'\\x00\\x00\\x80\\x3f', 1)); "
        "print('numba' in sys.modules)"
    )
    assert r.returncode == 0, r.stderr
    name, stats, numba_loaded = r.stdout.split("\n")[:3]
    assert name == BACKENDS[0]
    assert stats == "Stats(n=1, n_nan=0, n_inf=0, sum=1.0, sumsq=1.0, min=1.0, max=1.0)"
    assert numba_loaded == str(name == "numba")


@pytest.mark.parametrize("forced", BACKENDS)
def test_env_forces_backend(forced):
    r = _python("import sys, modelstore.kernels as k; print(k.backend()); "
                "print(k.delta_many([(b'\\x00\\x00\\x80\\x3f', b'\\x00\\x00\\x00\\x40')], 1)[0].n_changed); "
                "print('numba' in sys.modules)", MODELSTORE_KERNEL=forced)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [forced, "1", str(forced == "numba")]


def test_env_bogus_backend_raises_at_first_use():
    r = _python(
        "import modelstore.kernels as k\n"  # importing must not fail
        "from modelstore.errors import InternalError\n"
        "try:\n    k.chunk_stats(b'', 1)\nexcept InternalError as e:\n    print('raised:', e)\n",
        MODELSTORE_KERNEL="fortran",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("raised:") and "fortran" in r.stdout


def test_env_forced_but_unavailable_raises():
    r = _python(
        "import sys; sys.modules['modelstore._native'] = None; sys.modules['numba'] = None\n"
        "import modelstore.kernels as k\nfrom modelstore.errors import InternalError\n"
        "for name in ('native', 'numba'):\n"
        "    k._reset_selection()\n"
        "    import os; os.environ['MODELSTORE_KERNEL'] = name\n"
        "    try:\n        k.backend()\n    except InternalError as e:\n        print(name, 'raised')\n"
        "    else:\n        print(name, 'selected', k.backend())\n"
        "k._reset_selection(); del os.environ['MODELSTORE_KERNEL']; print(k.backend(), k.available_backends())\n",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:3] == ["native raised", "numba raised", "numpy ['numpy']"]


def test_get_backend_unknown_name():
    with pytest.raises(InternalError):
        kernels.get_backend("cuda")
    assert kernels.available_backends()[-1] == "numpy"
    assert kernels.backend() in BACKENDS


# --------------------------------------------------------------------------- self-test


@pytest.mark.parametrize("backend", BACKENDS)
def test_selftest_passes(backend):
    selftest.run(backend)


def test_selftest_active_backend():
    selftest.run()


def test_selftest_detects_a_broken_backend(monkeypatch):
    good = kernels.get_backend("numpy")

    def off_by_one(a, b, code, atol=0.0, rtol=0.0):
        d = good.chunk_delta(a, b, code, atol, rtol)
        return d._replace(n_changed=d.n_changed + (d.n == 4))

    broken = kernels.Backend("broken", good.chunk_stats, off_by_one, good.stats_many, good.delta_many)
    real = kernels.get_backend
    monkeypatch.setattr(kernels, "get_backend", lambda name: broken if name == "broken" else real(name))
    with pytest.raises(InternalError, match="chunk_delta F32"):
        selftest.run("broken")
