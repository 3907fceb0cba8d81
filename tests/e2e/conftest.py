"""End-to-end fixtures: a store with every dashboard feature, a real `modelstore serve`
subprocess on 127.0.0.1, and a headless Chromium (Debian's) driven by Playwright.

`build_store` is shared with tests/test_server_pages.py (in-process pages tests).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("MODELSTORE_CHROMIUM", "/usr/bin/chromium")
HOSTILE = "<script>alert('xss')</script>"


def _mlp(width: int, depth: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sd = {"embed.weight": rng.standard_normal((64, width), dtype=np.float32) * 0.02}
    for i in range(depth):
        sd[f"layers.{i}.fc.weight"] = rng.standard_normal((width, width), dtype=np.float32) / np.float32(np.sqrt(width))
        sd[f"layers.{i}.fc.bias"] = np.zeros(width, dtype=np.float32)
    sd["head.weight"] = rng.standard_normal((10, width), dtype=np.float32) * 0.05
    return sd


def _step(sd: dict[str, np.ndarray], seed: int, scale: float = 1e-2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (v + rng.standard_normal(v.shape, dtype=np.float32) * scale * (np.abs(v).mean() + 1e-3)).astype(v.dtype)
            for k, v in sd.items()}


def build_store(store) -> dict:
    """Two model families trained for a few epochs (metrics on clean and noisy validation sets),
    a fine-tune of one as another model (an org/name) with lineage, tags, comments, and a hostile
    metadata value and message. Returns names the tests check for."""
    refs = {}
    for family, width, depth, base_acc in (("mlp-wide", 48, 2, 0.80), ("mlp-deep", 32, 4, 0.75)):
        sd = _mlp(width, depth, seed=width)
        for epoch in range(1, 5):
            sd = _step(sd, seed=epoch)
            acc = base_acc + 0.03 * epoch
            info = store.commit(
                sd, model=family, message=f"epoch {epoch}",
                meta={"task": "digits", "dataset": "digits", "epoch": epoch, "width": width, "cpu_ghz": 1.0 + 0.5 * depth},
                metrics=[("digits-clean", "accuracy", acc), ("digits-noisy", "accuracy", acc - 0.1 - 0.01 * epoch),
                         ("digits-clean", "loss", 1.0 / epoch)])
            refs[f"{family}@{epoch}"] = info
    ft = _step(dict(sd), seed=99, scale=0.05)
    ft["head.weight"] = ft["head.weight"][:5]  # a new head: reshaped
    ft["layers.4.fc.weight"] = np.eye(32, dtype=np.float32)  # an added block
    info = store.commit(ft, model="acme/mlp-ft", message="<b>fine-tune</b> on noisy digits", parent="mlp-deep@4",
                        meta={"task": "digits", "dataset": "digits", "note": HOSTILE},
                        metrics=[("digits-clean", "accuracy", 0.86), ("digits-noisy", "accuracy", 0.84)])
    refs["acme/mlp-ft@1"] = info
    store.tag("mlp-wide@4", "production")
    store.tag("mlp-deep@2", "baseline")
    store.comment("mlp-wide@4", "Best clean accuracy so far.", author="alice")
    store.comment("acme/mlp-ft@1", HOSTILE, author="mallory")
    return refs


def onnx_mlp(insert: bool = False, activation: str = "Relu", hidden: int = 32):
    """A small ONNX MLP made with onnx.helper: fc1 -> act1 -> [mid -> act_mid] -> fc2 -> softmax."""
    from onnx import TensorProto, helper, numpy_helper

    def w(name, shape, seed):
        return numpy_helper.from_array(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), name)

    nodes = [helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h1"], name="fc1", transB=1),
             helper.make_node(activation, ["h1"], ["a1"], name="act1")]
    inits = [w("fc1.weight", (hidden, 16), 1), w("fc1.bias", (hidden,), 2), w("fc2.weight", (4, hidden), 3),
             w("fc2.bias", (4,), 4)]
    last = "a1"
    if insert:
        nodes += [helper.make_node("Gemm", ["a1", "mid.weight", "mid.bias"], ["hm"], name="mid", transB=1),
                  helper.make_node("Relu", ["hm"], ["am"], name="act_mid")]
        inits += [w("mid.weight", (hidden, hidden), 5), w("mid.bias", (hidden,), 6)]
        last = "am"
    nodes += [helper.make_node("Gemm", [last, "fc2.weight", "fc2.bias"], ["logits"], name="fc2", transB=1),
              helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=-1)]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def add_graph_models(store, folder: Path) -> bool:
    """`onnx-mlp`: @1 an MLP committed from .onnx, @2 with a layer inserted and the activation
    changed to Tanh (a graph diff: 2 added, 1 changed), @3 the same weights as plain arrays (no
    graph). False when onnx is not installed."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    a, b = folder / "mlp.onnx", folder / "mlp-deeper.onnx"
    onnx.save(onnx_mlp(), str(a))
    onnx.save(onnx_mlp(insert=True, activation="Tanh"), str(b))
    store.commit(str(a), model="onnx-mlp", message="MLP exported to ONNX")
    store.commit(str(b), model="onnx-mlp", message="a hidden layer more, tanh")
    arrays = {i.name: numpy_helper.to_array(i) for i in onnx_mlp().graph.initializer}
    store.commit(arrays, model="onnx-mlp", message="weights only")
    return True



def _serve_cmd(root: Path, port: int, token: str | None, private: bool = False) -> list[str]:
    """`modelstore serve` when the CLI has it, else uvicorn over create_app (same app)."""
    probe = subprocess.run([sys.executable, "-m", "modelstore", "serve", "--help"], capture_output=True, text=True,
                           cwd=ROOT, timeout=60, check=False)
    if probe.returncode == 0 and "--port" in probe.stdout:
        cmd = [sys.executable, "-m", "modelstore", "--store", str(root), "serve", "--host", "127.0.0.1",
               "--port", str(port)]
        return cmd + (["--token", token] if token else []) + (["--private"] if private else [])
    code = ("import uvicorn, sys; from modelstore.server import create_app; "
            f"uvicorn.run(create_app({str(root)!r}, token={token!r}, private={private!r}), host='127.0.0.1', "
            f"port={port}, log_level='warning')")
    return [sys.executable, "-c", code]


@contextlib.contextmanager
def _serving(root: Path, token: str, private: bool = False):
    """A server process on a free port, up (it answers /static/style.css) before this yields its URL."""
    port = free_port()
    proc = subprocess.Popen(_serve_cmd(root, port, token, private), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/static/style.css", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            out = proc.stdout.read().decode(errors="replace") if proc.poll() is not None else "(still running)"
            proc.kill()
            pytest.fail(f"server did not start on {url}: {out[-2000:]}")
        time.sleep(0.2)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="package")
def e2e_store(tmp_path_factory):
    from modelstore.store import Store

    root = tmp_path_factory.mktemp("e2e") / "store"
    with Store.init(root) as s:
        refs = build_store(s)
        add_graph_models(s, root.parent / "onnx")
    return root, refs


@pytest.fixture(scope="package")
def server(e2e_store):
    """Base URL of a real server process on 127.0.0.1 (stopped at the end of the session)."""
    token = "e2e-secret-token"
    with _serving(e2e_store[0], token) as url:
        yield {"url": url, "token": token}


@pytest.fixture(scope="package")
def private_server(e2e_store):
    """A second server on the same store, started with --private (reads need a token too)."""
    token = "e2e-private-token"
    with _serving(e2e_store[0], token, private=True) as url:
        yield {"url": url, "token": token}


# Package scope: Playwright's sync API keeps an event loop running in the main thread until it
# stops, which would break later tests that call asyncio.run().
@pytest.fixture(scope="package")
def browser():
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    ctx = browser.new_context(viewport={"width": 1360, "height": 900})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.js_errors = errors
    yield pg
    ctx.close()


@pytest.fixture(scope="session")
def shots(tmp_path_factory) -> Path:
    d = os.environ.get("MODELSTORE_SCREENSHOTS")
    path = Path(d) if d else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path
