"""Known-answer self-test of the kernels (used by ``modelstore doctor``).

``run()`` checks the active backend; ``run("numba")`` a given one. Inputs are raw bytes and
the expected outputs were worked out by hand (see the comments): every expected float is
exactly representable and is what the fixed summation order (4 lanes; element i in lane i % 4)
produces, so the comparison is exact except for a 1e-12 relative slack on sums (the numpy
reference sums in another order). Raises InternalError listing every mismatch.
"""

from __future__ import annotations

import math
import struct

from modelstore.errors import InternalError

NAN = math.nan
INF = math.inf

F64, F32, F16, BF16, F8_E4M3, F8_E5M2, I64, I32, I16, I8, U8, BOOL, U16, U32, U64 = range(15)


def _f32(*xs: float) -> bytes:
    return struct.pack(f"<{len(xs)}f", *xs)


def _f64(*xs: float) -> bytes:
    return struct.pack(f"<{len(xs)}d", *xs)


def _u16(*xs: int) -> bytes:
    return struct.pack(f"<{len(xs)}H", *xs)


_F32_NAN = struct.pack("<I", 0x7FC00000)
_F32_1_TO_1000 = _f32(*range(1, 1001))
_F32_1_TO_1000_LAST0 = _f32(*range(1, 1000), 0.0)
_F32_1_TO_1000_NAN501 = _f32(*range(1, 501)) + _F32_NAN + _f32(*range(502, 1001))

# (name, buffer, code, expected Stats)
STATS_CASES = [
    ("F32 [1,2,3,4]", _f32(1, 2, 3, 4), F32, (4, 0, 0, 10.0, 30.0, 1.0, 4.0)),
    # NaN, +Inf, -Inf are counted and excluded; -0.0 is a finite value (min == -0.0 == 0.0).
    ("F32 specials", _F32_NAN + _f32(INF, -INF, 1.5, -0.0), F32, (5, 1, 2, 1.5, 2.25, 0.0, 1.5)),
    # 1..1000 (vector loop + tail): sum n(n+1)/2, sum of squares n(n+1)(2n+1)/6.
    ("F32 1..1000", _F32_1_TO_1000, F32, (1000, 0, 0, 500500.0, 333833500.0, 1.0, 1000.0)),
    # same with 501 replaced by NaN: the block is redone on the NaN-excluding path.
    ("F32 1..1000 NaN", _F32_1_TO_1000_NAN501, F32,
     (1000, 1, 0, 500500.0 - 501, 333833500.0 - 501 * 501, 1.0, 1000.0)),
    # BF16 bits: 1.0, -2.0, NaN, -Inf, 3.0
    ("BF16", _u16(0x3F80, 0xC000, 0x7FC0, 0xFF80, 0x4040), BF16, (5, 1, 1, 2.0, 14.0, -2.0, 3.0)),
    # F16 bits: 1.0, 2^-24 (smallest subnormal), +Inf, NaN, -2.0, 65504 (max).
    # sum: lanes (1 + NaN-skipped) ... = (1 + (2^-24 - 2)) + (65504 + 0) = 65503 + 2^-24 (exact);
    # sumsq: lane1 = 2^-48 + 65504^2 rounds to 4290774016, total 4290774021.
    ("F16", _u16(0x3C00, 0x0001, 0x7C00, 0x7E00, 0xC000, 0x7BFF), F16,
     (6, 1, 1, 65503.0 + 2.0**-24, 4290774021.0, -2.0, 65504.0)),
    # F8_E4M3 bytes: 1.0, 448 (max), NaN (0x7F), 2^-9 (smallest subnormal), -1.0, NaN (0xFF).
    ("F8_E4M3", bytes([0x38, 0x7E, 0x7F, 0x01, 0xB8, 0xFF]), F8_E4M3,
     (6, 2, 0, 448.0 + 2.0**-9, 200706.0 + 2.0**-18, -1.0, 448.0)),
    # F8_E5M2 bytes: 1.0, +Inf, NaN, -2.0
    ("F8_E5M2", bytes([0x3C, 0x7C, 0x7D, 0xC0]), F8_E5M2, (4, 1, 1, -1.0, 5.0, -2.0, 1.0)),
    ("I8", bytes([0x80, 0x7F, 0xFF]), I8, (3, 0, 0, -2.0, 16384 + 16129 + 1.0, -128.0, 127.0)),
    ("U16", _u16(65535, 0, 1), U16, (3, 0, 0, 65536.0, 65535.0**2 + 1, 0.0, 65535.0)),
    ("I32", struct.pack("<3i", -(2**31), 2**31 - 1, 7), I32, (3, 0, 0, 6.0, 2.0**62 + (2.0**31 - 1) ** 2 + 49, -(2.0**31), 2.0**31 - 1)),
    # U64 max converts to 2^64 (nearest double).
    ("U64 max", struct.pack("<Q", 2**64 - 1), U64, (1, 0, 0, 2.0**64, 2.0**128, 2.0**64, 2.0**64)),
    # BOOL: any non-zero byte is 1.0.
    ("BOOL", bytes([0, 1, 2, 255]), BOOL, (4, 0, 0, 3.0, 3.0, 0.0, 1.0)),
    ("empty", b"", F32, (0, 0, 0, 0.0, 0.0, NAN, NAN)),
]

# (name, a, b, code, atol, rtol, expected Delta)
DELTA_CASES = [
    # d = [0, 0, 0, -1]
    ("F32 [1,2,3,4] vs [1,2,3,5]", _f32(1, 2, 3, 4), _f32(1, 2, 3, 5), F32, 0.0, 0.0,
     (4, 1.0, 30.0, 39.0, 34.0, 1.0, 1.0, 1, 1, 0)),
    # |d| = 1 > 0.5 + 0*|b|: changed beyond tolerance
    ("F32 atol 0.5", _f32(1, 2, 3, 4), _f32(1, 2, 3, 5), F32, 0.5, 0.0, (4, 1.0, 30.0, 39.0, 34.0, 1.0, 1.0, 1, 1, 0)),
    # |d| = 1 <= 0 + 0.25*5: within tolerance
    ("F32 rtol 0.25", _f32(1, 2, 3, 4), _f32(1, 2, 3, 5), F32, 0.0, 0.25, (4, 1.0, 30.0, 39.0, 34.0, 1.0, 1.0, 1, 0, 0)),
    # on the boundary: |d| = 1 is not > 1.0 (atol), nor > 0.2*5 (rounds to exactly 1.0)
    ("F32 atol 1 boundary", _f32(1, 2, 3, 4), _f32(1, 2, 3, 5), F32, 1.0, 0.0, (4, 1.0, 30.0, 39.0, 34.0, 1.0, 1.0, 1, 0, 0)),
    ("F32 rtol 0.2 boundary", _f32(1, 2, 3, 4), _f32(1, 2, 3, 5), F32, 0.0, 0.2, (4, 1.0, 30.0, 39.0, 34.0, 1.0, 1.0, 1, 0, 0)),
    ("I32 atol 1 boundary", struct.pack("<5i", 1, 2, 3, 4, 9), struct.pack("<5i", 1, 2, 3, 5, 7), I32, 1.0, 0.0,
     (5, 5.0, 111.0, 88.0, 97.0, 2.0, 3.0, 2, 1, 0)),
    # pairs: (NaN, same NaN) unchanged; (Inf, Inf) unchanged; (-Inf, 1) changed; all three
    # non-finite and excluded; (1.5, 1.5) and (-0.0, 0.0) finite and unchanged.
    ("F32 specials", _F32_NAN + _f32(INF, -INF, 1.5, -0.0), _F32_NAN + _f32(INF, 1.0, 1.5, 0.0), F32, 0.0, 0.0,
     (5, 0.0, 2.25, 2.25, 2.25, 0.0, 0.0, 1, 1, 3)),
    # different NaN payloads are different bits: changed
    ("F32 NaN payloads", _F32_NAN, struct.pack("<I", 0x7FC00001), F32, 0.0, 0.0,
     (1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1, 1, 1)),
    # 1..1000 vs the same with the last element 0: d = 1000 once.
    ("F32 1..1000", _F32_1_TO_1000, _F32_1_TO_1000_LAST0, F32, 0.0, 0.5,
     (1000, 1e6, 333833500.0, 332833500.0, 332833500.0, 1000.0, 1000.0, 1, 1, 0)),
    ("F32 identical with NaN", _F32_1_TO_1000_NAN501, _F32_1_TO_1000_NAN501, F32, 0.0, 0.0,
     (1000, 0.0, 333582499.0, 333582499.0, 333582499.0, 0.0, 0.0, 0, 0, 1)),
    # 2^53+1 and 2^53 are different integers (changed) but the same double (d = 0).
    ("I64 beyond 2^53", struct.pack("<2q", 2**53 + 1, -5), struct.pack("<2q", 2**53, -5), I64, 0.0, 0.0,
     (2, 0.0, 2.0**106, 2.0**106, 2.0**106, 0.0, 0.0, 1, 0, 0)),
    # BOOL by truth value: 2 vs 1 unchanged, 255 vs 0 changed.
    ("BOOL", bytes([0, 1, 2, 255]), bytes([0, 1, 1, 0]), BOOL, 0.0, 0.0, (4, 1.0, 3.0, 2.0, 2.0, 1.0, 1.0, 1, 1, 0)),
    # BF16 1.0 vs 1.0078125 (next bf16): d = -2^-7; with atol 2^-7 not beyond tolerance.
    ("BF16 ulp", _u16(0x3F80), _u16(0x3F81), BF16, 2.0**-7, 0.0,
     (1, 2.0**-14, 1.0, (1 + 2.0**-7) ** 2, 1 + 2.0**-7, 2.0**-7, 2.0**-7, 1, 0, 0)),
    ("F64 -0.0 vs 0.0", _f64(-0.0, 0.0), _f64(0.0, -0.0), F64, 0.0, 0.0, (2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0, 0)),
    ("empty", b"", b"", F16, 0.0, 0.0, (0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0, 0)),
]

_STATS_FLOATS = {3, 4, 5, 6}  # indexes of float fields
_DELTA_FLOATS = {1, 2, 3, 4, 5, 6}


def _same(got: tuple, want: tuple, float_fields: set[int]) -> bool:
    if len(got) != len(want):
        return False
    for i, (g, w) in enumerate(zip(got, want)):
        if i in float_fields:
            if isinstance(w, float) and math.isnan(w):
                if not (isinstance(g, float) and math.isnan(g)):
                    return False
            elif not (g == w or math.isclose(g, w, rel_tol=1e-12, abs_tol=0.0)):
                return False
        elif type(g) is not int or g != w:
            return False
    return True


def run(backend: str | None = None) -> None:
    """Check the known answers on `backend` (default: the active one); InternalError on mismatch."""
    from modelstore import kernels

    be = kernels.get_backend(backend) if backend else kernels.get_backend(kernels.backend())
    failures: list[str] = []

    def check(what: str, fn, want: tuple, floats: set[int]) -> None:
        try:
            got = tuple(fn())
        except Exception as e:  # noqa: BLE001 - report everything
            failures.append(f"{what}: raised {type(e).__name__}: {e}")
            return
        if not _same(got, want, floats):
            failures.append(f"{what}: got {got}, expected {want}")

    for name, buf, code, want in STATS_CASES:
        check(f"chunk_stats {name}", lambda: be.chunk_stats(buf, code), want, _STATS_FLOATS)
    for name, a, b, code, atol, rtol, want in DELTA_CASES:
        check(f"chunk_delta {name}", lambda: be.chunk_delta(a, b, code, atol, rtol), want, _DELTA_FLOATS)

    # the *_many paths (thread pool) on the same inputs
    for threads in (1, 2):
        for name, buf, code, want in STATS_CASES:
            check(f"stats_many[threads={threads}] {name}", lambda: be.stats_many([buf, buf], code, threads)[1],
                  want, _STATS_FLOATS)
        for name, a, b, code, atol, rtol, want in DELTA_CASES:
            check(f"delta_many[threads={threads}] {name}",
                  lambda: be.delta_many([(a, b), (a, b)], code, atol, rtol, threads)[1], want, _DELTA_FLOATS)

    # bad input must be rejected
    for what, fn in (
        ("length not a multiple of the itemsize", lambda: be.chunk_stats(b"\0" * 3, F32)),
        ("unequal lengths", lambda: be.chunk_delta(b"\0" * 4, b"\0" * 8, F32)),
        ("unknown dtype code", lambda: be.chunk_stats(b"\0" * 4, 99)),
    ):
        try:
            fn()
        except ValueError:
            pass
        except Exception as e:  # noqa: BLE001
            failures.append(f"{what}: raised {type(e).__name__} instead of ValueError")
        else:
            failures.append(f"{what}: accepted")

    if failures:
        raise InternalError(
            f"kernel self-test failed on backend {be.name!r} ({len(failures)} problem(s)):\n  "
            + "\n  ".join(failures)
        )
