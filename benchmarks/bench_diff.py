"""Model diff: `modelstore diff` on stored versions and on files, beside the NumPy script.

Two ~1 GB bf16 versions of a 12-block transformer (MODELSTORE_BENCH_SCALE scales the size):
  (a) fine-tune: 3 of 12 blocks (25% of the layers) changed, the rest bit-identical;
  (b) training step: every weight moves by ~1%.
Figures are throughputs over the logical bytes of both versions (higher is better), so the
ratio column is the speed-up over the baseline measured in the same process:
  baseline = the script a user would write: safetensors.numpy.load_file both files, then per
  tensor ‖Δ‖₂, ‖A‖₂, cosine, max|Δ|, mean|Δ|, fraction changed in NumPy (float32).
Targets (issue 3): files diff >= 5x the NumPy script; stored diff with 25% changed >= 10x the
NumPy script on the files. Library calls are compared with the script run in this process;
the `modelstore diff` command lines (once wired into the CLI) with the script run as a
process, so both pay interpreter start and imports. Peak RSS (VmHWM) of each run is measured
in a child process. Each timing is the best of MODELSTORE_BENCH_REPEAT runs (default 2),
because the machine may be shared.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modelstore.diff import diff, diff_files  # noqa: E402
from modelstore.store import Store  # noqa: E402
from modelstore.testing.models import finetune, sized_transformer, train_step  # noqa: E402

SCALE = float(os.environ.get("MODELSTORE_BENCH_SCALE", "1.0"))
REPEAT = int(os.environ.get("MODELSTORE_BENCH_REPEAT", "2"))
GB = 1e9

NUMPY_SCRIPT = """
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy: safetensors.numpy needs it)
import numpy as np
from safetensors.numpy import load_file


def numpy_diff(path_a, path_b):
    A, B = load_file(path_a), load_file(path_b)
    rows = []
    for k, a in A.items():
        b = B.get(k)
        if b is None or b.shape != a.shape or b.dtype != a.dtype:
            continue
        a = a.astype(np.float32).ravel()
        b = b.astype(np.float32).ravel()
        d = a - b
        na, nb, nd = np.linalg.norm(a), np.linalg.norm(b), np.linalg.norm(d)
        ad = np.abs(d)
        rows.append((k, nd, nd / na if na else None, a @ b / (na * nb) if na and nb else None,
                     ad.max() if ad.size else 0.0, ad.mean() if ad.size else 0.0,
                     np.count_nonzero(d) / max(1, d.size)))
    return rows
"""
_ns: dict = {}
exec(compile(NUMPY_SCRIPT, "<numpy-diff>", "exec"), _ns)
numpy_diff = _ns["numpy_diff"]


def _best(fn, repeat: int = REPEAT) -> float:
    best = float("inf")
    for _ in range(max(1, repeat)):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _child_peak_rss_mb(code: str) -> float:
    """Peak RSS (MB, whole process incl. the interpreter and imports) of a fresh Python running `code`."""
    # VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec and reports the (big) parent's peak.
    script = textwrap.dedent("""
        import sys
        sys.path.insert(0, %r)
        import numpy, modelstore.diff, safetensors.numpy
        %s
        with open("/proc/self/status") as f:
            print(next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024)
    """) % (str(ROOT), code)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "child failed")
    return float(out.stdout.strip().splitlines()[-1])


def _save(path: Path, sd: dict) -> int:
    from safetensors.numpy import save_file

    save_file(sd, str(path))
    return sum(v.nbytes for v in sd.values())


def _cli_has_diff() -> bool:
    from modelstore import cli

    return any((c.name or getattr(c.callback, "__name__", "")) == "diff" for c in cli.app.registered_commands)


def _cli(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-m", "modelstore", *args], check=True, stdout=subprocess.DEVNULL, env=env)


def run(report) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench_diff_"))
    try:
        _run(report, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(report, tmp: Path) -> None:
    t0 = time.perf_counter()
    base = sized_transformer(int(1e9 * SCALE), dtype="BF16", n_layers=12, seed=0)
    nbytes = _save(tmp / "v1.safetensors", base)
    ft = finetune(base, layers=[0, 1, 2], scale=1e-2)  # 3 of 12 blocks
    _save(tmp / "v2_finetune.safetensors", ft)
    del ft
    step = train_step(base, lr=1e-2)
    _save(tmp / "v3_step.safetensors", step)
    del step
    store = Store.init(tmp / "store")
    for name in ("v1", "v2_finetune", "v3_step"):
        store.commit(tmp / f"{name}.safetensors", model="bench")
    del base
    print(f"# setup: 3 versions of {nbytes / GB:.2f} GB bf16 written and committed in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)

    both = 2 * nbytes / GB
    v1 = str(tmp / "v1.safetensors")
    cases = (("(a) 25% of layers changed", str(tmp / "v2_finetune.safetensors"), "bench@2"),
             ("(b) every weight changed", str(tmp / "v3_step.safetensors"), "bench@3"))
    for label, path_b, ref_b in cases:
        # Sanity: our numbers agree with the NumPy script's.
        d = diff_files(v1, path_b)
        t_np = _best(lambda: numpy_diff(v1, path_b))
        t_files = _best(lambda: diff_files(v1, path_b))
        t_stored = _best(lambda: diff("bench@1", ref_b, store=store))
        t_mixed = _best(lambda: diff("bench@1", path_b, store=store))
        report(f"diff files {label}", both / t_files, "GB/s", both / t_np, "numpy script")
        report(f"diff stored versions {label}", both / t_stored, "GB/s", both / t_np, "numpy script")
        report(f"diff version vs file {label}", both / t_mixed, "GB/s", both / t_np, "numpy script")
        print(f"#   seconds: files {t_files:.3f}, stored {t_stored:.3f}, version vs file {t_mixed:.3f}, "
              f"numpy script {t_np:.3f}", flush=True)
        print(f"#   {d.summary_line()}; chunks compared {d.io['chunks_compared']}/{d.io['chunks_total']}",
              flush=True)

    # The command line (process start + imports included), once `modelstore diff` is wired.
    # Baseline: the NumPy script run as a process too (interpreter start and imports on both sides).
    if _cli_has_diff():
        path_b = str(tmp / "v2_finetune.safetensors")
        script = NUMPY_SCRIPT + f"\nnumpy_diff({v1!r}, {path_b!r})\n"
        t_np = _best(lambda: subprocess.run([sys.executable, "-c", script], check=True))
        t_cli_files = _best(lambda: _cli("diff", v1, path_b, "--json"))
        t_cli_stored = _best(lambda: _cli("--store", str(tmp / "store"), "diff", "bench@1", "bench@2", "--json"))
        t_idle = _best(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True))
        report("CLI `modelstore diff A.safetensors B.safetensors` (a)", both / t_cli_files, "GB/s", both / t_np,
               "numpy script process")
        report("CLI `modelstore diff bench@1 bench@2` (a)", both / t_cli_stored, "GB/s", both / t_np,
               "numpy script process")
        print(f"#   seconds: CLI files {t_cli_files:.3f}, CLI stored {t_cli_stored:.3f}, numpy script process "
              f"{t_np:.3f}, bare interpreter {t_idle:.3f}", flush=True)

    # Peak RSS (child processes): ours streams; the script holds both versions in memory.
    path_b = str(tmp / "v3_step.safetensors")
    rss_files = _child_peak_rss_mb(f"modelstore.diff.diff_files({v1!r}, {path_b!r})")
    rss_stored = _child_peak_rss_mb(
        "from modelstore.store import Store\n"
        f"s = Store.open({str(tmp / 'store')!r}); modelstore.diff.diff('bench@1', 'bench@3', store=s); s.close()")
    rss_np = _child_peak_rss_mb(NUMPY_SCRIPT + f"\nnumpy_diff({v1!r}, {path_b!r})")
    rss_idle = _child_peak_rss_mb("pass")
    report("peak RSS: interpreter + imports only", rss_idle, "MB")
    report("peak RSS diff files (b) [lower is better]", rss_files, "MB", rss_np, "numpy script")
    report("peak RSS diff stored (b) [lower is better]", rss_stored, "MB", rss_np, "numpy script")
    store.close()


def main() -> int:
    def report(name, value, unit, baseline=None, baseline_name=""):
        line = f"{name:58s} {value:12.3f} {unit:8s}"
        if baseline is not None:
            ratio = value / baseline if baseline else float("inf")
            line += f"  baseline {baseline:12.3f} {baseline_name:24s} ratio {ratio:8.2f}x"
        print(line, flush=True)

    t = time.perf_counter()
    run(report)
    print(f"# bench_diff took {time.perf_counter() - t:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
