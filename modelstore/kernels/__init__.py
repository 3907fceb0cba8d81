"""Numeric kernels: per-chunk statistics and per-chunk-pair deltas over raw tensor bytes.

Every function takes raw little-endian bytes (bytes, bytearray, memoryview, mmap, or a
C-contiguous numpy array of any dtype, including ml_dtypes ones and uint8 views) plus a dtype
code from :mod:`modelstore.dtypes`. The bytes are reinterpreted, never converted by dtype.

``chunk_stats(buf, code) -> Stats(n, n_nan, n_inf, sum, sumsq, min, max)``
    NaN and +-Inf are counted and excluded from sum/sumsq/min/max; min and max are NaN when
    there is no finite element (e.g. n == 0).

``chunk_delta(a, b, code, atol=0.0, rtol=0.0) -> Delta(n, sum_d2, sum_a2, sum_b2, sum_ab,
max_abs, sum_abs, n_changed, n_changed_tol, n_nonfinite)``
    A pair where either side is NaN/Inf is counted in n_nonfinite, excluded from every sum and
    from max_abs, and counts as changed (n_changed and n_changed_tol) unless both sides have
    identical bits. For finite pairs d = a - b (in double); n_changed counts a != b by value
    (-0.0 == 0.0; integers are compared exactly, as integers); n_changed_tol counts
    |a - b| > atol + rtol*|b| (numpy.isclose convention). max_abs is 0.0 without finite pairs.

``stats_many(bufs, code, threads=0)`` / ``delta_many(pairs, code, atol, rtol, threads=0)``
    The same over many chunks, multithreaded (threads=0: os.cpu_count()), GIL released.
    Results are bit-identical to a loop of singles, whatever the thread count.

``merge_stats(list[Stats])`` / ``merge_delta(list[Delta])``
    Combine per-chunk results into per-tensor results (pure Python).

Numerics: every element is widened exactly to double (F64/F32/F16/BF16/F8 bit-exact; ints and
bool converted, bool non-zero -> 1.0; I64/U64 beyond 2**53 round to the nearest double, so
their sums are approximate, while n_changed still compares the integers exactly). Sums use
4 lanes over blocks of 512 elements plus compensated (TwoSum) accumulation of the block sums,
so the error of any sum is below ~1e-13 of the sum of the absolute values of its terms for any
length (1e8 elements included). The native and numba backends use the same summation order
and give bit-identical results; the numpy reference (pairwise summation) agrees to ~1e-13
relative on sums, exactly on counts, and exactly (by value) on min/max/max_abs.

Backends, chosen at first use: ``native`` (the compiled ``modelstore._native``), else
``numba``, else ``numpy``. ``MODELSTORE_KERNEL=native|numba|numpy`` forces one; a forced
backend that cannot be loaded raises :class:`modelstore.errors.InternalError` (never a silent
fallback). Importing this package is cheap: numba is only imported if its backend is used.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import threading
from typing import Any, Callable, Iterable, NamedTuple

from modelstore.errors import InternalError

__all__ = [
    "Stats",
    "Delta",
    "chunk_stats",
    "chunk_delta",
    "stats_many",
    "delta_many",
    "merge_stats",
    "merge_delta",
    "backend",
    "available_backends",
    "get_backend",
    "KERNEL_ABI",
    "ENV_VAR",
]

KERNEL_ABI = 1  # must equal modelstore._native.KERNEL_ABI
ENV_VAR = "MODELSTORE_KERNEL"
BACKENDS = ("native", "numba", "numpy")  # preference order
NUM_DTYPE_CODES = 15  # codes 0..14, see modelstore.dtypes


class Stats(NamedTuple):
    n: int
    n_nan: int
    n_inf: int
    sum: float
    sumsq: float
    min: float
    max: float


class Delta(NamedTuple):
    n: int
    sum_d2: float
    sum_a2: float
    sum_b2: float
    sum_ab: float
    max_abs: float
    sum_abs: float
    n_changed: int
    n_changed_tol: int
    n_nonfinite: int


EMPTY_STATS = Stats(0, 0, 0, 0.0, 0.0, math.nan, math.nan)
EMPTY_DELTA = Delta(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0, 0)


# --------------------------------------------------------------------------- shared helpers


def check_code(code: Any) -> int:
    """The dtype code as an int; ValueError if it is not one of modelstore.dtypes' codes."""
    try:
        c = code.__index__()
    except (AttributeError, TypeError):
        raise ValueError(f"dtype code must be an integer, got {code!r}") from None
    if not 0 <= c < NUM_DTYPE_CODES:
        raise ValueError(f"unknown dtype code {c} (valid codes are 0..{NUM_DTYPE_CODES - 1})")
    return c


def resolve_threads(threads: Any) -> int:
    """threads=0 -> os.cpu_count(); negative -> ValueError."""
    t = threads.__index__() if hasattr(threads, "__index__") else threads
    if not isinstance(t, int):
        raise ValueError(f"threads must be an integer, got {threads!r}")
    if t < 0:
        raise ValueError("threads must be >= 0 (0 = all CPUs)")
    return t or (os.cpu_count() or 1)


def _fsum(values: list[float]) -> float:
    """Correctly rounded sum; plain sum when Inf/NaN or an overflow is involved."""
    try:
        return math.fsum(values)
    except (OverflowError, ValueError):
        return sum(values, 0.0)


def merge_stats(parts: Iterable[Stats]) -> Stats:
    """Combine the Stats of disjoint chunks (e.g. the chunks of one tensor) into one Stats."""
    parts = list(parts)
    if not parts:
        return EMPTY_STATS
    mins = [p[5] for p in parts if p[5] == p[5]]  # skip NaN (chunks without finite values)
    maxs = [p[6] for p in parts if p[6] == p[6]]
    return Stats(
        sum(p[0] for p in parts),
        sum(p[1] for p in parts),
        sum(p[2] for p in parts),
        _fsum([p[3] for p in parts]),
        _fsum([p[4] for p in parts]),
        min(mins) if mins else math.nan,
        max(maxs) if maxs else math.nan,
    )


def merge_delta(parts: Iterable[Delta]) -> Delta:
    """Combine the Delta of disjoint chunk pairs into one Delta."""
    parts = list(parts)
    if not parts:
        return EMPTY_DELTA
    return Delta(
        sum(p[0] for p in parts),
        _fsum([p[1] for p in parts]),
        _fsum([p[2] for p in parts]),
        _fsum([p[3] for p in parts]),
        _fsum([p[4] for p in parts]),
        max(p[5] for p in parts),
        _fsum([p[6] for p in parts]),
        sum(p[7] for p in parts),
        sum(p[8] for p in parts),
        sum(p[9] for p in parts),
    )


# --------------------------------------------------------------------------- backends


class Backend:
    """The four kernel functions of one implementation, plus its name."""

    def __init__(self, name: str, chunk_stats: Callable, chunk_delta: Callable,
                 stats_many: Callable, delta_many: Callable, info: str = "") -> None:
        self.name = name
        self.chunk_stats = chunk_stats
        self.chunk_delta = chunk_delta
        self.stats_many = stats_many
        self.delta_many = delta_many
        self.info = info

    def __repr__(self) -> str:
        return f"<modelstore.kernels backend {self.name!r}{' ' + self.info if self.info else ''}>"


def _native_buffer(buf: Any) -> Any:
    # numpy arrays of ml_dtypes (bfloat16, float8) cannot export a buffer: pass a uint8 view.
    np = sys.modules.get("numpy")  # an ndarray implies numpy is imported already
    if np is not None and isinstance(buf, np.ndarray):
        if not buf.flags.c_contiguous:
            raise ValueError("expected a C-contiguous buffer (got a strided numpy array)")
        return buf.reshape(-1).view(np.uint8)
    return buf


def _load_native() -> Backend:
    try:
        native = importlib.import_module("modelstore._native")
    except ImportError as e:
        raise InternalError(
            f"kernel backend 'native' is not available: cannot import modelstore._native ({e}); "
            "build it with `python setup.py build_ext --inplace` or `pip install .`"
        ) from e
    abi = getattr(native, "KERNEL_ABI", None)
    if abi != KERNEL_ABI:
        raise InternalError(
            f"kernel backend 'native' is stale: modelstore._native has KERNEL_ABI={abi!r}, "
            f"expected {KERNEL_ABI}; rebuild the extension"
        )

    def chunk_stats(buf, code):
        return Stats(*native.chunk_stats(_native_buffer(buf), check_code(code)))

    def chunk_delta(a, b, code, atol=0.0, rtol=0.0):
        return Delta(*native.chunk_delta(_native_buffer(a), _native_buffer(b), check_code(code),
                                         float(atol), float(rtol)))

    def stats_many(bufs, code, threads=0):
        res = native.stats_many([_native_buffer(b) for b in bufs], check_code(code), resolve_threads(threads))
        return [Stats(*r) for r in res]

    def delta_many(pairs, code, atol=0.0, rtol=0.0, threads=0):
        items = []
        for i, p in enumerate(pairs):
            try:
                a, b = p
            except (TypeError, ValueError):
                raise ValueError(f"delta_many: item {i} is not an (a, b) pair") from None
            items.append((_native_buffer(a), _native_buffer(b)))
        res = native.delta_many(items, check_code(code), float(atol), float(rtol), resolve_threads(threads))
        return [Delta(*r) for r in res]

    return Backend("native", chunk_stats, chunk_delta, stats_many, delta_many,
                   info=f"{native.__version__} {native.simd()}")


def _load_module(name: str) -> Backend:
    modname = f"modelstore.kernels.{name}_impl"
    try:
        mod = importlib.import_module(modname)
    except ImportError as e:
        raise InternalError(f"kernel backend {name!r} is not available: cannot import {modname} ({e})") from e
    return Backend(name, mod.chunk_stats, mod.chunk_delta, mod.stats_many, mod.delta_many)


_LOADERS: dict[str, Callable[[], Backend]] = {
    "native": _load_native,
    "numba": lambda: _load_module("numba"),
    "numpy": lambda: _load_module("numpy"),
}
_loaded: dict[str, Backend] = {}
_selected: Backend | None = None
_lock = threading.Lock()


def get_backend(name: str) -> Backend:
    """The backend `name` ("native", "numba", "numpy"); InternalError if it cannot be loaded."""
    if name not in _LOADERS:
        raise InternalError(f"unknown kernel backend {name!r} (known: {', '.join(BACKENDS)})")
    with _lock:
        be = _loaded.get(name)
        if be is None:
            be = _LOADERS[name]()
            _loaded[name] = be
        return be


def available_backends() -> list[str]:
    """Names of the backends that load here, in preference order (imports numba if present)."""
    out = []
    for name in BACKENDS:
        try:
            get_backend(name)
        except InternalError:
            continue
        out.append(name)
    return out


def _select() -> Backend:
    global _selected
    be = _selected
    if be is not None:
        return be
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if forced and forced != "auto":
        if forced not in _LOADERS:
            raise InternalError(
                f"{ENV_VAR}={forced!r} is not a kernel backend (use one of: {', '.join(BACKENDS)}, auto)"
            )
        try:
            be = get_backend(forced)
        except InternalError as e:
            raise InternalError(f"{ENV_VAR}={forced} was requested but cannot be used: {e}") from e
    else:
        errors = []
        for name in BACKENDS:
            try:
                be = get_backend(name)
                break
            except InternalError as e:
                errors.append(str(e))
        else:  # pragma: no cover - numpy is a hard dependency
            raise InternalError("no kernel backend could be loaded: " + "; ".join(errors))
    _selected = be
    return be


def backend() -> str:
    """Name of the backend the module-level functions use (selects it on first call)."""
    return _select().name


def _reset_selection() -> None:
    """Forget the selected backend (tests only; re-reads MODELSTORE_KERNEL on next use)."""
    global _selected
    _selected = None


# --------------------------------------------------------------------------- public API


def chunk_stats(buf: Any, code: int) -> Stats:
    """Stats of one chunk of raw little-endian bytes of dtype `code`."""
    return _select().chunk_stats(buf, code)


def chunk_delta(a: Any, b: Any, code: int, atol: float = 0.0, rtol: float = 0.0) -> Delta:
    """Delta between two equally long chunks of dtype `code` (a is new, b is the reference)."""
    return _select().chunk_delta(a, b, code, atol, rtol)


def stats_many(bufs: list, code: int, threads: int = 0) -> list[Stats]:
    """chunk_stats over many chunks of one dtype, multithreaded (0 = os.cpu_count())."""
    return _select().stats_many(bufs, code, threads)


def delta_many(pairs: list, code: int, atol: float = 0.0, rtol: float = 0.0, threads: int = 0) -> list[Delta]:
    """chunk_delta over many (a, b) pairs of one dtype, multithreaded (0 = os.cpu_count())."""
    return _select().delta_many(pairs, code, atol, rtol, threads)
