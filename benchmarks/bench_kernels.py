"""Kernel throughput: ``kernels.delta_many`` over two 256 MiB buffers, chunked at 4 MiB.

For F32 and BF16 "trained-like" weights (a ~ normal * 0.02, b = a + small noise), times
delta_many on the native and numba backends with 1 and 2 threads, and prints GB/s (bytes of
a + b read per second) beside two baselines measured in the same process:

* membw: ``np.add.reduce`` of both buffers viewed as uint64 (reads the same bytes; the
  memory-bandwidth ceiling of a single numpy thread), re-measured right before each kernel
  figure because the machine may be shared;
* numpy-script: the float64 numpy code one would write by hand for the same statistics.

Run ``python benchmarks/bench_kernels.py`` or via ``benchmarks/run.py``. Sizes scale with
MODELSTORE_BENCH_SCALE (1.0 = 256 MiB per buffer). Each timing is the best of REPEAT runs.
Target: native at 2 threads >= 0.7 x membw (F32).
"""

from __future__ import annotations

import gc
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ml_dtypes  # noqa: E402

from modelstore import dtypes, kernels  # noqa: E402

MiB = 1 << 20
SCALE = float(os.environ.get("MODELSTORE_BENCH_SCALE", "1.0"))
BUF_BYTES = max(4 * MiB, int(256 * MiB * SCALE)) // (4 * MiB) * (4 * MiB)
CHUNK = 4 * MiB
REPEAT = 3
ATOL, RTOL = 1e-8, 1e-5  # numpy.isclose defaults: exercises the general tolerance test

Report = Callable[[str, float, str, float], None]


def _best(fn: Callable[[], object], repeat: int = REPEAT) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _make(np_dtype, nbytes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """a ~ N(0, 0.02^2), b = a + N(0, (1e-4)^2), both stored as np_dtype, nbytes each."""
    itemsize = np.dtype(np_dtype).itemsize
    n = nbytes // itemsize
    a = np.empty(n, np_dtype)
    b = np.empty(n, np_dtype)
    rng = np.random.default_rng(seed)
    step = 1 << 24
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        x = rng.standard_normal(hi - lo, dtype=np.float32) * np.float32(0.02)
        a[lo:hi] = x.astype(np_dtype)
        x += rng.standard_normal(hi - lo, dtype=np.float32) * np.float32(1e-4)
        b[lo:hi] = x.astype(np_dtype)
    return a, b


def _membw(a: np.ndarray, b: np.ndarray) -> float:
    ua, ub = a.view(np.uint8).view(np.uint64), b.view(np.uint8).view(np.uint64)
    t = _best(lambda: (np.add.reduce(ua), np.add.reduce(ub)), repeat=5)
    return (a.nbytes + b.nbytes) / t / 1e9


def _numpy_script(pairs: list, np_dtype) -> None:
    """What one writes by hand with numpy for the same per-chunk statistics."""
    for ca, cb in pairs:
        xa = ca.view(np_dtype).astype(np.float64)
        xb = cb.view(np_dtype).astype(np.float64)
        finite = np.isfinite(xa) & np.isfinite(xb)
        n_nonfinite = xa.size - int(finite.sum())
        xa, xb = xa[finite], xb[finite]
        d = xa - xb
        ad = np.abs(d)
        (np.dot(d, d), np.dot(xa, xa), np.dot(xb, xb), np.dot(xa, xb), ad.max(initial=0.0), ad.sum(),
         int((xa != xb).sum()), int((ad > ATOL + RTOL * np.abs(xb)).sum()), n_nonfinite)


def _bench_dtype(report: Report, name: str, np_dtype, backends: list[str]) -> None:
    code = dtypes.BY_NAME[name].code
    a, b = _make(np_dtype, BUF_BYTES)
    a8, b8 = a.view(np.uint8), b.view(np.uint8)
    pairs = [(a8[i : i + CHUNK], b8[i : i + CHUNK]) for i in range(0, a8.size, CHUNK)]
    nbytes = a.nbytes + b.nbytes
    label = f"kernels delta_many {name} {BUF_BYTES // MiB}MiB"

    membw = _membw(a, b)
    report(f"{label} membw (np.add.reduce u64)", membw, "GB/s", membw)
    t_np = _best(lambda: _numpy_script(pairs, np_dtype), repeat=1)
    np_gbs = nbytes / t_np / 1e9
    report(f"{label} numpy-script f64", np_gbs, "GB/s", membw)

    for be_name in backends:
        be = kernels.get_backend(be_name)
        be.delta_many(pairs[:1], code, ATOL, RTOL, 1)  # warm-up (numba: load/compile)
        for threads in (1, 2):
            # the machine may be shared: re-measure the ceiling right before each figure
            bw = _membw(a, b)
            t = _best(lambda: be.delta_many(pairs, code, ATOL, RTOL, threads))
            gbs = nbytes / t / 1e9
            report(f"{label} {be_name} t={threads} vs membw", gbs, "GB/s", bw)
            report(f"{label} {be_name} t={threads} vs numpy-script", gbs, "GB/s", np_gbs)
    del a, b, a8, b8, pairs
    gc.collect()


def run(report: Report) -> None:
    backends = [b for b in ("native", "numba") if b in kernels.available_backends()]
    if "native" in backends:
        native = kernels.get_backend("native")
        print(f"# native kernels: {native.info}; numba: {'yes' if 'numba' in backends else 'no'}", flush=True)
    _bench_dtype(report, "F32", np.float32, backends)
    _bench_dtype(report, "BF16", ml_dtypes.bfloat16, backends)


def _print_report(name: str, value: float, unit: str, baseline: float | None = None) -> None:
    line = f"{name:62s} {value:9.2f} {unit:5s}"
    if baseline:
        line += f"  baseline {baseline:9.2f}  ratio {value / baseline:6.2f}x"
    print(line, flush=True)


def main() -> int:
    run(_print_report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
