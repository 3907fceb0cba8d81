"""Run every benchmark: `python benchmarks/run.py [name ...]`.

Each figure is printed beside a baseline measured in the same process, with the ratio.
Sizes scale with MODELSTORE_BENCH_SCALE (default 1.0 = the sizes the issues name).
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SUITES = ["bench_storage", "bench_series", "bench_kernels", "bench_diff", "bench_query", "bench_server",
          "bench_push", "bench_ingest"]


def report(name: str, value: float, unit: str, baseline: float | None = None, baseline_name: str = "") -> None:
    line = f"{name:58s} {value:12.3f} {unit:8s}"
    if baseline is not None:
        ratio = value / baseline if baseline else float("inf")
        line += f"  baseline {baseline:12.3f} {baseline_name:24s} ratio {ratio:8.2f}x"
    print(line, flush=True)


def main(argv: list[str]) -> int:
    names = argv or SUITES
    for name in names:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            print(f"# {name}: skipped ({exc})")
            continue
        print(f"# {name}")
        t = time.perf_counter()
        mod.run(report)
        print(f"# {name} took {time.perf_counter() - t:.1f} s\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
