"""Regenerate a golden store: a tiny store written by this format version and writer.

Run only when the format changes on purpose (and bump FORMAT_VERSION, or add an extension):
    python tests/data/make_golden.py [NAME]     # NAME: store-v1 (default), store-v1-xor-planes-2, ...
test_format_compat.py reads every committed copy forever, so older stores stay readable.
tests/data/store-v1 predates xor-planes plane methods 4 and 5; store-v1-xor-planes-2 has them.
"""

import shutil
import sqlite3
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from modelstore.store import Store  # noqa: E402


def golden_tensors(step: int):
    """Deterministic tensors of every dtype (no RNG: the expected values are formulas)."""
    import ml_dtypes
    import numpy as np

    base = np.arange(-600, 600, dtype=np.float64).reshape(100, 12) / 97.0 + step / 1000.0
    return {
        "f64": base,
        "f32": base.astype(np.float32),
        "f16": base.astype(np.float16),
        "bf16": base.astype(ml_dtypes.bfloat16),
        "f8e4m3": (base / 8).astype(ml_dtypes.float8_e4m3fn),
        "f8e5m2": (base / 8).astype(ml_dtypes.float8_e5m2),
        "i64": (np.arange(50, dtype=np.int64) * 1_000_003 + step),
        "i32": np.arange(50, dtype=np.int32) - 25,
        "i16": np.arange(50, dtype=np.int16) * 7,
        "i8": (np.arange(50) % 100 - 50).astype(np.int8),
        "u8": (np.arange(300) % 256).astype(np.uint8),
        "bool": (np.arange(40) % 3 == 0),
        "scalar": np.array(step + 0.5, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }


def main() -> None:
    target = HERE / (sys.argv[1] if len(sys.argv) > 1 else "store-v1")
    if target.exists():
        shutil.rmtree(target)
    s = Store.init(target, chunk_target_bytes=1024, delta_depth=2)
    for step in range(3):
        s.commit(golden_tensors(step), model="golden", message=f"step {step}", meta={"step": str(step)},
                 author="golden")
    s.close()
    db = sqlite3.connect(target / "catalog.sqlite")  # fold the WAL into the main file
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("PRAGMA journal_mode=DELETE")
    db.close()
    for p in ("lock", "index/lock.mdb", "catalog.sqlite-wal", "catalog.sqlite-shm"):
        (target / p).unlink(missing_ok=True)
    shutil.rmtree(target / "tmp", ignore_errors=True)


if __name__ == "__main__":
    main()
