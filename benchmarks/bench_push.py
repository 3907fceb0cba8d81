"""Push to a remote: a ~1 GB model, then a fine-tune with 25% of its layers changed.

Both pushes go to a real server (uvicorn on 127.0.0.1, another process). Baseline, same
run and same server: a plain streaming HTTP upload of the model's .safetensors file to a
raw sink route added only inside this benchmark's server process (written to disk and
fsynced, as a push's batches are). Targets: first push >= 80% of the plain upload's speed
(MB of model per second); the fine-tune push sends <= 30% of the file's bytes.

Each side is measured twice, interleaved (upload, push, upload, reset, push), and the
better of its two runs counts: a fresh server process handles its first large body
measurably slower (the allocator has not settled), whichever side goes first. The reset is
a route of this benchmark's server that deletes the pushed version and runs `gc`, so the
second push sends everything again.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modelstore.remote import remotes, sync
from modelstore.store import Store
from modelstore.testing.models import finetune, sized_transformer

SCALE = float(os.environ.get("MODELSTORE_BENCH_SCALE", "1.0"))
MB = 1e6
TOKEN = "bench"

# The server process: the real app plus a raw sink (streams the body to a file, fsyncs it).
_SERVER = f"""
import os, sys, uvicorn
from fastapi import Request
from modelstore.server import app as app_mod, create_app
root, port, sink = sys.argv[1], int(sys.argv[2]), sys.argv[3]
# The sink streams to disk like an upload does: exempt it from the 1 MiB cap on small bodies.
_own = app_mod._has_own_limit
app_mod._has_own_limit = lambda method, path: path == "/bench/sink" or _own(method, path)
app = create_app(root, token={TOKEN!r})

@app.put("/bench/sink")
async def _sink(request: Request):
    n = 0
    with open(sink, "wb") as f:
        async for piece in request.stream():
            f.write(piece)
            n += len(piece)
        f.flush()
        os.fsync(f.fileno())
    return {{"bytes": n}}

@app.post("/bench/reset")
def _reset():
    s = app.state.stores.get()
    for name, _ in s.models():
        for v in s.log(name):
            s.delete(v.ref)
    return s.gc()

uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(root: Path, sink: Path):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(root), str(port), str(sink)], env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(url + "/api/sync/state", timeout=1)
            return proc, url, port
        except urllib.error.HTTPError:
            return proc, url, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def _plain_upload(port: int, path: Path) -> float:
    """Seconds to PUT the file to the sink, streamed from disk (http.client, 1 MiB blocks)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600, blocksize=1 << 20)
    size = path.stat().st_size
    t = time.perf_counter()
    with open(path, "rb") as f:
        conn.request("PUT", "/bench/sink", body=f, headers={"Content-Length": str(size),
                                                            "Content-Type": "application/octet-stream"})
        resp = conn.getresponse()
        resp.read()
    dt = time.perf_counter() - t
    conn.close()
    assert resp.status == 200, resp.status
    return dt


def _reset(port: int) -> None:
    """Empty the server's store (bench route): the next push of m@1 sends every chunk again."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/bench/reset")
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert resp.status == 200, resp.status


def run(report) -> None:
    with tempfile.TemporaryDirectory(prefix="bench_push_") as tmp:
        tmp = Path(tmp)
        sd = sized_transformer(int(1e9 * SCALE), "F32", n_layers=12)
        file = tmp / "model.safetensors"
        save_file(sd, str(file))
        size = file.stat().st_size
        ft = finetune(sd, [0, 4, 8])  # 3 of 12 blocks: 25% of the layers
        with Store.init(tmp / "local") as s:
            s.commit(file, model="m", message="base")
            s.commit(ft, model="m", message="fine-tune")
        del sd, ft
        Store.init(tmp / "server").close()
        proc, url, port = _start_server(tmp / "server", tmp / "sink.bin")
        try:
            with Store.open(tmp / "local") as s:
                remotes.add(s.root, "origin", url, TOKEN)
            # Dirty pages of the files just written would otherwise slow whichever phase runs
            # first; every timed phase starts after an os.sync().
            plains, firsts = [], []
            for round_ in range(2):
                os.sync()
                plains.append(_plain_upload(port, file))
                (tmp / "sink.bin").unlink()
                if round_:
                    _reset(port)
                os.sync()
                with Store.open(tmp / "local") as s:
                    t = time.perf_counter()
                    first = sync.push(s, "origin", "m@1")
                    firsts.append(time.perf_counter() - t)
                assert first["chunks_skipped"] == 0 and first["versions_sent"], first
            os.sync()
            with Store.open(tmp / "local") as s:
                t = time.perf_counter()
                second = sync.push(s, "origin", "m@2")
                t_second = time.perf_counter() - t
        finally:
            proc.terminate()
            proc.wait(30)
        plain, t_first = min(plains), min(firsts)
        print(f"  runs (s): plain upload {', '.join(f'{x:.2f}' for x in plains)}; "
              f"first push {', '.join(f'{x:.2f}' for x in firsts)}", flush=True)
        gb = size / 1e9
        report(f"first push {gb:.2f} GB model (MB of model/s)", size / MB / t_first, "MB/s",
               size / MB / plain, "plain HTTP upload")
        report("first push: record bytes sent / file bytes", first["bytes_sent"] / size, "ratio")
        report("fine-tune push (25% of layers changed): MB sent", second["bytes_sent"] / MB, "MB",
               size / MB, "file size")
        report("fine-tune push: bytes sent / file bytes", second["bytes_sent"] / size, "ratio", 0.30, "target")
        report("fine-tune push: seconds", t_second, "s", plain, "plain upload of the file")


if __name__ == "__main__":
    from run import report as _report

    run(_report)
