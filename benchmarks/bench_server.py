"""HTTP server over a 10,000-version catalog: latency of the dashboard pages and their API
equivalents (p50, p95), and requests/s of GET /api/query with 8 concurrent clients.

Data (built in code, seeded): one tiny real checkpoint committed, then 10,000 versions of 4
models registered in bulk (Catalog.register_many) sharing its content id, each with ~10 typed
attributes and 3 metrics on 2 datasets (bench_query.records, the query benchmark's generator).

The server is a real `modelstore serve` (uvicorn) in a subprocess on 127.0.0.1; each figure
is the client-observed wall time of one keep-alive request (loopback: an upper bound of the
server time). Baselines, same process: the same work through the Python API directly
(jsonviews / Store.query on an open Store), so the ratio is the HTTP + JSON overhead.
Dashboard pages that are not served yet (404) or fail are skipped with a note.

Scale with MODELSTORE_BENCH_SCALE (1.0 = 10,000 versions).
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np

# the catalog's data (and sys.path set up to import modelstore) are the query benchmark's
from bench_query import ROOT, SCALE, records

from modelstore import jsonviews
from modelstore.store import Store

N = max(1000, int(10_000 * SCALE))
RUNS = 41
CLIENTS = 8
CONCURRENT_REQUESTS = 800  # in all, across the clients
MODELS = ["resnet-50", "org/vit-base", "bert-small", "yolo-v8"]
QUERY = 'task = "object-detection" and accuracy > 90% and size < 100MB order by accuracy desc limit 20'


def build(root: Path) -> None:
    with Store.init(root) as s:
        rng = np.random.default_rng(0)
        info = s.commit({"w": rng.standard_normal((64, 64)).astype(np.float32)}, model="seed")
        s.catalog.register_many(records(N, seed=11, models=MODELS, content_id=info.content_id))
        s.tag(f"{MODELS[0]}@5", "production")
        s.comment(f"{MODELS[0]}@5", "the one we ship")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(root: Path):
    import httpx

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log = open(root.parent / "server.log", "w+b")  # noqa: SIM115 - a file, not a pipe nobody drains
    proc = subprocess.Popen([sys.executable, "-m", "modelstore", "--store", str(root), "serve", "--port", str(port)],
                            env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                log.close()  # the server keeps its own descriptor
                return proc, base
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.seek(0)
            text = log.read().decode(errors="replace")
            log.close()
            raise RuntimeError(f"server did not start: {text}")
        time.sleep(0.1)


def percentiles(fn, runs: int = RUNS) -> tuple[float, float]:
    fn()  # warm: caches, the server thread's Store
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]


def throughput(base: str, path: str, clients: int, total: int) -> float:
    import httpx

    left = [total]
    lock = threading.Lock()
    errors: list = []

    def worker():
        with httpx.Client(base_url=base, timeout=60) as http:  # keep-alive: one connection per client
            while True:
                with lock:
                    if left[0] <= 0:
                        return
                    left[0] -= 1
                r = http.get(path)
                if r.status_code != 200:
                    errors.append(r.status_code)
                    return

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t
    if errors:
        raise RuntimeError(f"GET {path}: status {errors[0]}")
    return total / elapsed


def run(report) -> None:
    import httpx

    with tempfile.TemporaryDirectory(dir=os.environ.get("MODELSTORE_BENCH_DIR")) as tmp:
        root = Path(tmp) / "store"
        t = time.perf_counter()
        build(root)
        print(f"# catalog of {N:,} versions built in {time.perf_counter() - t:.1f} s", flush=True)
        proc, base = start_server(root)
        model = MODELS[1]
        q = quote(QUERY)
        try:
            with Store.open(root) as s:
                base_models = percentiles(lambda: jsonviews.models_summary(s))
                base_page = percentiles(lambda: jsonviews.versions_page(s, model, limit=50, sort="version", desc=True))
                base_query = percentiles(lambda: jsonviews.query_rows(jsonviews.limited_query(s, QUERY, 1000).versions))
                cases = [
                    ("page  /", "/", base_models, "models_summary()"),
                    (f"page  /models/{model}", f"/models/{model}", base_page, "versions_page() 50"),
                    ("page  /query?q=...", f"/query?q={q}", base_query, "Store.query + json"),
                    ("api   /api/models", "/api/models", base_models, "models_summary()"),
                    (f"api   /api/models/{model}/versions", f"/api/models/{model}/versions?limit=50&desc=1",
                     base_page, "versions_page() 50"),
                    ("api   /api/query?q=...", f"/api/query?q={q}", base_query, "Store.query + json"),
                    (f"api   /api/versions/{model}@7", f"/api/versions/{model}@7",
                     percentiles(lambda: s.show(f"{model}@7")), "Store.show()"),
                ]
                for label, path, (b50, b95), bname in cases:
                    with httpx.Client(base_url=base, timeout=60) as http:  # keep-alive within a case
                        status = http.get(path).status_code
                        if status != 200 and label.startswith("page"):  # the dashboard is built separately
                            why = "not served yet" if status == 404 else "failed"
                            print(f"# {label}: skipped ({status}: the dashboard page {why})", flush=True)
                            continue
                        if status != 200:
                            raise RuntimeError(f"GET {path}: status {status}")
                        p50, p95 = percentiles(lambda path=path: http.get(path))
                    report(f"{label} p50", p50 * 1000, "ms", b50 * 1000, bname)
                    report(f"{label} p95", p95 * 1000, "ms", b95 * 1000, bname)
                rows = len(httpx.get(f"{base}/api/query?q={q}").json())
                one = 1 / base_query[0]
                rps = throughput(base, f"/api/query?q={q}", CLIENTS, CONCURRENT_REQUESTS)
                report(f"GET /api/query, {CLIENTS} clients ({rows} rows)", rps, "req/s", one,
                       "in-process, 1 thread")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    from run import report

    run(report)


if __name__ == "__main__":
    main()
