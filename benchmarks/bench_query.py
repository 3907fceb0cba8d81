"""Catalog and query: bulk registration of 1,000,000 versions' rows, and the user's example query
plus three others, each beside the same query run without the query indexes (a plain scan).

Data (built in code, seeded): 1M versions of 20,000 models; per version ~10 typed attributes
(task of 12, training dataset of 16, cpu_ghz, license, framework, quantized, released, lr,
epochs, owner of 200) and 3 metrics (accuracy, loss, latency_ms) on 2 datasets (`<train>-val`
and another `<dataset>-test`); built-ins: size (log-normal, median 100 MB), params, dtype,
created. No weights.

Baselines, same process:
- registration: the per-commit path (`Catalog.insert_version`, one transaction per version, as
  `modelstore commit` writes a version), timed on a sample and extrapolated to N;
- queries: the same query text over a copy of the same tables without the query indexes
  (primary keys only), planned as a scan (every version checked).

Scale with MODELSTORE_BENCH_SCALE (1.0 = 1M versions). Query times are the wall time of
`query.run` (parse, plan, SQL, and loading the VersionInfo of the results), p50 of 21 runs.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modelstore import query as Q  # noqa: E402
from modelstore.catalog import _SCHEMA, SCHEMA_VERSION, Catalog  # noqa: E402

SCALE = float(os.environ.get("MODELSTORE_BENCH_SCALE", "1.0"))
N = max(1000, int(1_000_000 * SCALE))
RUNS = 21
BASE_RUNS = 3

ARCHS = ["resnet", "yolo", "vit", "bert", "llama", "whisper", "unet", "efficientnet", "detr", "mobilenet"]
TASKS = ["object-detection", "classification", "segmentation", "depth-estimation", "asr", "translation",
         "summarization", "text-generation", "ocr", "pose-estimation", "tracking", "captioning"]
DATASETS = ["imagenet", "coco", "voc", "ade20k", "cityscapes", "kitti", "librispeech", "wmt", "cnn-dm", "c4",
            "openimages", "mpii", "lvis", "objects365", "kinetics", "laion"]
CPUS = [0.8, 1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 3.5]
LICENSES = ["apache-2.0", "mit", "bsd-3-clause", "cc-by-4.0", "llama2", "proprietary"]
FRAMEWORKS = ["pytorch", "jax", "tensorflow", "onnx"]
MODELS = 20_000
T0 = 1_704_067_200  # 2024-01-01T00:00:00Z

QUERIES = [
    ("user's example",
     'task = "object-detection" and dataset = "imagenet" and accuracy > 90% and size < 100MB and cpu_ghz <= 1 '
     "order by accuracy desc limit 10"),
    ("exact metric, ordered",
     "accuracy@coco-val > 0.98 and latency_ms@coco-val < 10ms and params < 50M order by accuracy@coco-val desc "
     "limit 20"),
    ("4 equalities, no limit",
     'license = "apache-2.0" and framework = "pytorch" and quantized = true and owner = "team-17"'),
    ("glob, in, or, not, time",
     'model ~ "yolo-1*" and (task in ["object-detection", "tracking"] or dataset = "coco") and not quantized = true '
     "and created >= 2024-06-01 order by created desc limit 50"),
]


def records(n: int, seed: int = 7, *, models: list[str] | None = None, content_id: str | None = None):
    """`n` seeded catalog records for Catalog.register_many (the data the module doc describes).

    Shared with bench_server.py: `models` replaces the 20,000 generated model names (versions
    cycle through them) and `content_id` gives every version that one content id (a real
    committed checkpoint) instead of a distinct made-up one.
    """
    rnd = random.Random(seed)
    choice, rand = rnd.choice, rnd.random
    step = max(1, 30_000_000 // n)  # versions spread over ~a year whatever the scale
    for i in range(n):
        if models is None:
            m = i % MODELS
            model = f"{ARCHS[m % len(ARCHS)]}-{m // len(ARCHS)}"
        else:
            model = models[i % len(models)]
        train = choice(DATASETS)
        other = choice(DATASETS)
        size = int(math.exp(rnd.gauss(math.log(100e6), 1.0)))
        bf16 = rand() < 0.5
        yield {
            "model": model,
            "content_id": content_id or f"{i:032x}",
            "message": "",
            "author": f"user{i % 97}",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + step * i)),
            "format": "safetensors",
            "size": size, "stored": int(size * rand()), "params": size // (2 if bf16 else 4),
            "n_tensors": 100 + i % 400, "dtype": "BF16" if bf16 else "F32",
            "meta": {
                "task": choice(TASKS), "dataset": train, "cpu_ghz": choice(CPUS), "license": choice(LICENSES),
                "framework": choice(FRAMEWORKS), "quantized": rand() < 0.5,
                "released": f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}T00:00:00Z", "lr": 10 ** -rnd.uniform(2, 5),
                "epochs": rnd.randrange(1, 300), "owner": f"team-{rnd.randrange(200)}",
            },
            "metrics": [
                (f"{train}-val", "accuracy", 0.5 + 0.5 * rand()), (f"{train}-val", "loss", 0.05 + 2 * rand()),
                (f"{train}-val", "latency_ms", math.exp(rnd.gauss(3, 0.7))),
                (f"{other}-test", "accuracy", 0.5 + 0.5 * rand()), (f"{other}-test", "loss", 0.05 + 2 * rand()),
                (f"{other}-test", "latency_ms", math.exp(rnd.gauss(3, 0.7))),
            ],
        }


def copy_without_indexes(src: Path, dst: Path) -> Catalog:
    """The same tables (primary keys only, no query indexes) in another file."""
    import sqlite3

    tables = [stmt.strip() for stmt in _SCHEMA.split(";") if stmt.strip().startswith("CREATE TABLE")]
    db = sqlite3.connect(dst, isolation_level=None)
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-1048576")
    db.execute("ATTACH DATABASE ? AS src", (str(src),))
    db.execute("BEGIN")
    for ddl in tables:
        db.execute(ddl)
        name = ddl.split("(")[0].split()[-1]
        db.execute(f"INSERT INTO main.{name} SELECT * FROM src.{name}")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    db.execute("COMMIT")
    db.execute("DETACH DATABASE src")
    db.close()
    return Catalog(dst, readonly=True)


def timed(fn, runs: int) -> tuple[float, float, object]:
    times, out = [], None
    for _ in range(runs):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.9 * len(times)))], out


def run(report) -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("MODELSTORE_BENCH_DIR")) as tmp:
        tmp = Path(tmp)
        # -- registration --
        t = time.perf_counter()
        for _ in records(N):
            pass
        t_gen = time.perf_counter() - t
        cat = Catalog(tmp / "catalog.sqlite")
        t = time.perf_counter()
        n = cat.register_many(records(N))
        t_reg = time.perf_counter() - t
        sample = min(2000, N)
        one = Catalog(tmp / "one-by-one.sqlite")
        recs = list(records(sample, seed=8))
        t = time.perf_counter()
        for r in recs:
            one.insert_version(model=r["model"], content_id=r["content_id"], message="", author=r["author"],
                               fmt=r["format"], size=r["size"], stored=r["stored"], params=r["params"],
                               n_tensors=r["n_tensors"], dtype=r["dtype"], parents=[], meta=r["meta"], tensors=[],
                               metrics=r["metrics"])
        t_one = (time.perf_counter() - t) * n / sample
        one.close()
        report(f"register {n:,} versions' catalog rows (wall, incl. making records)", t_reg, "s", t_one,
               f"insert_version x{sample} extrap.")
        report("  of which the benchmark making the records (alone)", t_gen, "s")
        size_mb = sum(p.stat().st_size for p in tmp.glob("catalog.sqlite*")) / 1e6
        report("catalog size on disk", size_mb, "MB")

        # -- baseline copy --
        t = time.perf_counter()
        base = copy_without_indexes(tmp / "catalog.sqlite", tmp / "baseline.sqlite")
        print(f"# baseline copy (no query indexes) made in {time.perf_counter() - t:.1f} s", flush=True)
        scan = Q.Tuning(force="scan", hints=False)

        # -- queries --
        for label, text in QUERIES:
            Q.run(cat, text)  # warm the page cache, as a long-lived server would be
            p50, p90, res = timed(lambda: Q.run(cat, text), RUNS)
            Q.run(base, text, tuning=scan)
            b50, _, bres = timed(lambda: Q.run(base, text, tuning=scan), BASE_RUNS)
            assert [v.id for v in res.versions] == [v.id for v in bres.versions], label
            report(f"query p50: {label} ({len(res.versions)} rows; {res.plan.split(':')[0]})", p50 * 1000, "ms",
                   b50 * 1000, "scan, no indexes")
            report(f"query p90: {label}", p90 * 1000, "ms")
        print(f"# example query plan: {Q.explain(cat, QUERIES[0][1])['plan']}", flush=True)
        base.close()
        cat.close()


def main() -> None:
    from run import report

    run(report)


if __name__ == "__main__":
    main()
