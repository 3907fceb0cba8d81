"""Bulk ingestion: a folder of 50 checkpoints of one training run, `import dir` vs 50 `commit`s.

The run is synthetic but trained-like: a transformer (modelstore.testing.models) of about
20 MB fp32 per checkpoint (× MODELSTORE_BENCH_SCALE), every weight moving a little each
epoch (train_step), saved as epoch1..epoch50.safetensors. Measured: one
`modelstore import dir` process (one open store, each checkpoint the parent of the next)
against the baseline of one `modelstore commit` process per file (what a shell loop does;
parents chain the same way, so stored bytes match and the difference is per-process cost).
MB/s is raw checkpoint bytes over wall time including process start; stored ÷ raw is the
store's growth over the folder's size. Also: `modelstore.track` committing an in-memory
state dict each epoch against saving a .safetensors file each epoch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modelstore.testing.models import sized_transformer, train_step

SCALE = float(os.environ.get("MODELSTORE_BENCH_SCALE", "1.0"))
N_CHECKPOINTS = 50
MB = 1e6


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "modelstore", *args], env=env, check=True,
                          capture_output=True, text=True)


def make_run(folder: Path, nbytes: int, n: int = N_CHECKPOINTS) -> int:
    """Write n checkpoints of one training run; returns their total size in bytes."""
    sd = sized_transformer(nbytes, "F32", n_layers=6)
    total = 0
    for epoch in range(1, n + 1):
        sd = train_step(sd, lr=1e-3, seed=epoch)
        path = folder / f"epoch{epoch}.safetensors"
        save_file(sd, str(path))
        total += path.stat().st_size
    return total


def _disk_bytes(store: Path) -> int:
    """Bytes the store occupies on disk (allocated blocks: packs, index, catalog)."""
    return sum(p.stat().st_blocks * 512 for p in store.rglob("*") if p.is_file())


def run(report) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        tmp = Path(tmp)
        folder = tmp / "run"
        folder.mkdir()
        raw = make_run(folder, int(20e6 * SCALE))
        files = sorted(folder.iterdir(), key=lambda p: int(p.stem[5:]))

        one = tmp / "one"
        _cli("init", str(one))
        t = time.perf_counter()
        doc = json.loads(_cli("--store", str(one), "import", "dir", str(folder), "--model", "run", "--json").stdout)
        t_dir = time.perf_counter() - t
        assert len(doc["versions"]) == N_CHECKPOINTS

        many = tmp / "many"
        _cli("init", str(many))
        t = time.perf_counter()
        stored_many = 0
        for f in files:
            info = json.loads(_cli("--store", str(many), "commit", str(f), "--model", "run", "--json").stdout)
            stored_many += info["stored"]
        t_many = time.perf_counter() - t

        print(f"# {N_CHECKPOINTS} checkpoints, {raw / MB:.0f} MB raw ({raw / N_CHECKPOINTS / MB:.1f} MB each); "
              f"import dir {t_dir:.1f} s, {N_CHECKPOINTS} commit processes {t_many:.1f} s", flush=True)
        report("ingest: import dir, 50 checkpoints (MB/s)", raw / MB / t_dir, "MB/s",
               raw / MB / t_many, "50 commit processes")
        report("ingest: import dir, stored / raw", doc["stored_bytes"] / raw, "ratio",
               stored_many / raw, "50 commit processes")
        report("ingest: import dir, store on disk / raw", _disk_bytes(one) / raw, "ratio",
               _disk_bytes(many) / raw, "50 commit processes")
        bench_track(report, tmp, int(20e6 * SCALE))


def bench_track(report, tmp: Path, nbytes: int, epochs: int = 20) -> None:
    """modelstore.track committing an in-memory state dict every epoch (no temp file), beside
    writing and fsyncing a .safetensors file every epoch (what a loop does without a store)."""
    from modelstore.store import Store
    from modelstore.track import track

    sd = sized_transformer(nbytes, "F32", n_layers=6, seed=1)
    raw = sum(v.nbytes for v in sd.values())
    t_track = t_save = 0.0
    stored = 0
    Store.init(tmp / "tracked").close()
    with track(tmp / "tracked", model="run") as run:
        for epoch in range(epochs):
            sd = train_step(sd, lr=1e-3, seed=100 + epoch)
            t = time.perf_counter()
            stored += run.commit(sd, metrics={"val": {"loss": 1.0 / (epoch + 1)}}, step=epoch).stored
            t_track += time.perf_counter() - t
            t = time.perf_counter()
            path = tmp / f"plain{epoch % 2}.safetensors"
            save_file(sd, str(path))
            with open(path, "rb+") as f:  # durable, as a commit is
                os.fsync(f.fileno())
            t_save += time.perf_counter() - t
    report("track: commit per epoch, in-memory state dict (ms)", 1e3 * t_track / epochs, "ms",
           1e3 * t_save / epochs, "safetensors save + fsync")
    report("track: stored / raw over the run", stored / (raw * epochs), "ratio", 1.0, "one file per epoch")


if __name__ == "__main__":  # python benchmarks/bench_ingest.py (its folder is on sys.path)
    from run import report as _report

    run(_report)
