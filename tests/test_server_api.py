"""The JSON API over real stores, in process (TestClient), plus one real `modelstore serve`.

Every refusal is checked three ways: the status, the error envelope's `kind`, and that the
catalog (and the store's tmp/ folder) is exactly as before.
"""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import quote

import numpy as np
import pytest
from conftest import ROOT, free_port
from fastapi.testclient import TestClient
from safetensors.numpy import load as st_load
from safetensors.numpy import save_file

from modelstore.server import create_app
from modelstore.store import Store


def _tensors(seed: int, scale: float = 1.0) -> dict:
    rng = np.random.default_rng(seed)
    return {"embed.weight": (rng.standard_normal((300, 64)) * scale).astype(np.float32),
            "layer.0.weight": rng.standard_normal((64, 64)).astype(np.float16),
            "layer.0.bias": np.arange(64, dtype=np.int32), "head": rng.standard_normal((7,)).astype(np.float64)}


@pytest.fixture
def root(tmp_path):
    """A store with org/net@1 (tagged prod) and @2 (a child with metrics), and plain@1."""
    s = Store.init(tmp_path / "store")
    with s:
        for i, (model, meta) in enumerate([("org/net", {"task": "cls", "lr": "0.01"}),
                                           ("org/net", {"task": "cls", "lr": "0.001"}),
                                           ("plain", {"task": "seg"})]):
            path = tmp_path / f"ckpt{i}.safetensors"
            save_file(_tensors(i), str(path))
            s.commit(path, model=model, message=f"commit {i}", meta=meta,
                     metrics=[("clean", "acc", 0.8 + i / 20), ("noisy", "acc", 0.5 + i / 20)])
        s.tag("org/net@1", "prod")
        s.comment("org/net@2", "looks good", author="ann")
    return tmp_path / "store"


@pytest.fixture
def client(root):
    with TestClient(create_app(root)) as c:
        yield c


def state(root) -> dict:
    """Everything the catalog holds that a write could change, and the store's temp files."""
    with Store.open(root) as s:
        versions = [v.to_dict() for v in s.log()]
        out = {"versions": versions, "tags": s.tags(),
               "history": [s.meta_history(v["ref"]) + s.metric_history(v["ref"]) for v in versions]}
    out["tmp"] = sorted(os.listdir(root / "tmp")) if (root / "tmp").exists() else []
    return out


def assert_error(r, status: int, kind: str):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"kind", "message"}, body
    assert body["error"]["kind"] == kind, body
    assert body["error"]["message"], body


# -- reads ---------------------------------------------------------------------------------
def test_health_docs_and_openapi(client):
    assert client.get("/api/health").json() == {"ok": True, "version": __import__("modelstore").__version__,
                                                "format_version": 1}
    docs = client.get("/docs")
    assert docs.status_code == 200
    # served from this server, never a CDN: every asset the page loads is local and answers
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", docs.text) + re.findall(r"url: '([^']+)'", docs.text)
    assert assets and not [a for a in assets if "://" in a], assets
    for a in assets:
        if not a.startswith("data:"):
            assert client.get(a).status_code == 200, a
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/api/models", "/api/query", "/api/diff", "/api/keys", "/api/versions/{ref}/download",
              "/api/models/{model}/versions"):
        assert p in paths, sorted(paths)


def test_models_and_version_pages(client, root):
    models = client.get("/api/models").json()
    assert [m["model"] for m in models] == ["org/net", "plain"]
    net = models[0]
    with Store.open(root) as s:
        assert net["latest"] == s.resolve("org/net@2").to_dict()
    assert net["versions"] == 2 and [t["tag"] for t in net["tags"]] == ["prod"]
    assert net["last_activity"] >= net["latest"]["created"]

    page = client.get("/api/models/org/net/versions").json()
    assert page["total"] == 2 and [v["ref"] for v in page["versions"]] == ["org/net@1", "org/net@2"]
    page = client.get("/api/models/org/net/versions", params={"sort": "acc@noisy", "desc": 1, "limit": 1}).json()
    assert page["total"] == 2 and [v["ref"] for v in page["versions"]] == ["org/net@2"]
    page = client.get("/api/models/org/net/versions", params={"sort": "lr", "offset": 1}).json()
    assert [v["ref"] for v in page["versions"]] == ["org/net@1"]  # lr 0.001 < 0.01
    assert client.get("/api/models/org/net/versions", params={"offset": 5}).json() == {"total": 2, "versions": []}
    assert_error(client.get("/api/models/nothing/versions"), 404, "not_found")
    assert_error(client.get("/api/models/org/net/versions", params={"sort": "acc desc limit 1"}), 400, "invalid_input")
    assert_error(client.get("/api/models/org/net/versions", params={"sort": "tag"}), 400, "invalid_input")
    assert_error(client.get("/api/models/org/net/versions", params={"limit": "x"}), 422, "invalid_input")


def test_version_endpoints_match_the_store(client, root):
    with Store.open(root) as s:
        assert client.get("/api/versions/org/net@2").json() == s.show("org/net@2")
        assert client.get("/api/versions/org/net").json() == s.show("org/net@2")  # MODEL = latest
        assert client.get("/api/versions/org/net@prod").json()["ref"] == "org/net@1"
        cid = s.resolve("plain@1").content_id
        assert client.get(f"/api/versions/{cid[:10]}").json()["ref"] == "plain@1"
        assert client.get("/api/versions/org/net@2/lineage").json() == s.lineage("org/net@2")
        s.add_metrics("org/net@2", "clean", {"acc": 0.99})
        current = client.get("/api/versions/org/net@2/metrics").json()
        assert current == [r for r in s.metric_history("org/net@2") if r["latest"]]
        assert client.get("/api/versions/org/net@2/metrics?history=1").json() == s.metric_history("org/net@2")
    tensors = client.get("/api/versions/plain@1/tensors").json()
    assert tensors[0] == {"name": "embed.weight", "dtype": "F32", "shape": [300, 64], "nbytes": 300 * 64 * 4}
    assert sorted(t["name"] for t in tensors) == sorted(_tensors(2))
    comments = client.get("/api/versions/org/net@2/comments").json()
    assert [(c["author"], c["text"], c["ref"]) for c in comments] == [("ann", "looks good", "org/net@2")]
    assert client.get("/api/tags", params={"model": "org/net"}).json()[0]["ref"] == "org/net@1"
    for suffix in ("", "/tensors", "/metrics", "/lineage", "/comments", "/download"):
        assert_error(client.get(f"/api/versions/org/net@9{suffix}"), 404, "not_found")
        assert_error(client.get(f"/api/versions/deadbeef00{suffix}"), 404, "not_found")


def test_query_keys_and_diff(client, root):
    with Store.open(root) as s:
        q = 'task = "cls" and acc@clean > 0.8 order by acc@clean desc'
        assert client.get("/api/query", params={"q": q}).json() == [v.to_query_json() for v in s.query(q)]
        assert [r["ref"] for r in client.get("/api/query", params={"q": q, "limit": 1}).json()] == ["org/net@2"]
        assert client.get("/api/query", params={"q": "order by version limit 1", "limit": 5}).json() \
            == [v.to_query_json() for v in s.query("order by version limit 1")]
        want = s.diff(s.resolve("org/net@1"), s.resolve("org/net@2")).to_dict()
    got = client.get("/api/diff", params={"a": "org/net@1", "b": "org/net@2"}).json()
    got.pop("io"), want.pop("io")  # timings
    assert got == want and got["summary"]["modified"] == 3  # the int bias is the same
    keys = client.get("/api/keys").json()
    assert {"task", "lr", "size", "model"} <= set(keys["attributes"])
    assert keys["metrics"] == ["acc"] and keys["datasets"] == ["clean", "noisy"]
    for bad in ("acc >", "task = ", "order by tag", "x" * 20000, "acc > 1 limit -1"):
        assert_error(client.get("/api/query", params={"q": bad}), 400, "invalid_input")
    assert_error(client.get("/api/query"), 422, "invalid_input")
    assert_error(client.get("/api/diff", params={"a": "org/net@1", "b": "nope@3"}), 404, "not_found")
    # a REF is never read as a server-side path
    assert_error(client.get("/api/diff", params={"a": "org/net@1", "b": str(root / "config.json")}), 404, "not_found")
    assert_error(client.get("/api/nothing"), 404, "not_found")
    assert_error(client.delete("/api/models"), 405, "method_not_allowed")


# -- writes --------------------------------------------------------------------------------
def test_annotations(client, root):
    hdr = {"X-Modelstore-User": "bob"}
    r = client.post("/api/versions/plain@1/meta", json={"set": {"epochs": 3, "note": "x", "ok": True}}, headers=hdr)
    assert r.status_code == 200 and r.json()["meta"] == {"task": "seg", "epochs": 3, "note": "x", "ok": True}
    r = client.post("/api/versions/plain/meta", json={"unset": ["note"], "set": {"epochs": "4"}})
    assert r.json()["meta"] == {"task": "seg", "epochs": 4, "ok": True}
    r = client.post("/api/versions/plain@1/metrics", json={"dataset": "clean", "values": {"acc": 0.97, "f1": "91%"}})
    assert r.status_code == 200 and r.json()["metrics"]["clean"] == {"acc": 0.97, "f1": 0.91}
    r = client.post("/api/versions/org/net@2/tags", json={"name": "prod"}, headers=hdr)
    assert r.json() == {"tag": "prod", "ref": "org/net@2", "model": "org/net", "previous": "org/net@1"}
    assert client.get("/api/tags").json()[0]["author"] == "bob"
    r = client.post("/api/versions/org/net/tags", json={"name": "prod", "delete": True})
    assert r.json() == {"tag": "prod", "model": "org/net", "was": "org/net@2"}
    r = client.post("/api/versions/plain@1/comments", json={"text": "ship it <b>"}, headers=hdr)
    assert r.status_code == 201
    doc = r.json()
    assert (doc["ref"], doc["author"], doc["text"]) == ("plain@1", "bob", "ship it <b>")
    assert client.get("/api/versions/plain@1").json()["comments"][0]["text"] == "ship it <b>"
    with Store.open(root) as s:
        assert s.tags() == []

    before = state(root)
    bad = [("/api/versions/plain@1/meta", {"set": {"size": 1}}, 400, "invalid_input"),          # built-in key
           ("/api/versions/plain@1/meta", {"set": {"ok": 1}, "unset": ["nope"]}, 404, "not_found"),
           ("/api/versions/plain@1/meta", {"set": {"a b": 1}}, 400, "invalid_input"),
           ("/api/versions/plain@1/meta", {"set": {"k": 1}, "unset": ["k"]}, 400, "invalid_input"),
           ("/api/versions/plain@1/meta", {}, 400, "invalid_input"),
           ("/api/versions/plain@9/meta", {"set": {"k": 1}}, 404, "not_found"),
           ("/api/versions/plain@1/metrics", {"dataset": "../x y", "values": {"acc": 1}}, 400, "invalid_input"),
           ("/api/versions/plain@1/metrics", {"dataset": "clean", "values": {"acc": "high"}}, 400, "invalid_input"),
           ("/api/versions/plain@1/metrics", {"dataset": "clean"}, 422, "invalid_input"),
           ("/api/versions/plain@1/tags", {"name": "latest"}, 400, "invalid_input"),
           ("/api/versions/plain@1/tags", {"name": "x;drop table tags"}, 400, "invalid_input"),
           ("/api/versions/plain@1/tags", {"name": "gone", "delete": True}, 404, "not_found"),
           ("/api/versions/plain@1/comments", {"text": "  "}, 400, "invalid_input"),
           ("/api/versions/plain@1/comments", {"text": "x" * 10_001}, 400, "invalid_input"),
           ("/api/versions/plain@1/comments", {"text": "a\x00b"}, 400, "invalid_input")]
    for url, body, status, kind in bad:
        assert_error(client.post(url, json=body), status, kind)
    assert_error(client.post("/api/versions/plain@1/comments", content=b"{not json",
                             headers={"content-type": "application/json"}), 422, "invalid_input")
    assert state(root) == before


def _upload(client, model, data: bytes, **params):
    headers = params.pop("headers", {})
    path = quote(model, safe="/").replace(".", "%2E")  # so that '..' reaches the server as written
    return client.post(f"/api/models/{path}/versions", params=params, content=data, headers=headers)


def test_upload_round_trip_and_download(client, root, tmp_path):
    src = tmp_path / "new.safetensors"
    save_file(_tensors(7, scale=3.0), str(src))
    r = _upload(client, "org/net", src.read_bytes(), message="from http", meta=["epoch=5", "owner=team-a"],
                metric=["clean:acc=0.93", "noisy:acc=71%"], parent="org/net@1", headers={"X-Modelstore-User": "cy"})
    assert r.status_code == 201, r.text
    v = r.json()
    assert (v["ref"], v["message"], v["author"], v["parents"]) == ("org/net@3", "from http", "cy", ["org/net@1"])
    assert v["meta"] == {"epoch": 5, "owner": "team-a"} and v["metrics"] == {"clean": {"acc": 0.93},
                                                                              "noisy": {"acc": 0.71}}
    assert os.listdir(root / "tmp") == []

    r = client.get("/api/versions/org/net@3/download")
    assert r.status_code == 200 and int(r.headers["content-length"]) == len(r.content)
    assert r.headers["content-disposition"] == 'attachment; filename="org--net-v3.safetensors"'
    got, want = st_load(r.content), _tensors(7, scale=3.0)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].tobytes() == want[name].tobytes()
    with Store.open(root) as s:
        s.checkout("org/net@3", tmp_path / "co.safetensors")
    assert (tmp_path / "co.safetensors").read_bytes() == r.content  # bit-exact with `modelstore checkout`

    # npz in, npz out (written to a temp file, removed after sending)
    buf = io.BytesIO()
    np.savez(buf, **_tensors(8))
    r = _upload(client, "org/npz-model", buf.getvalue(), format="npz")
    assert r.status_code == 201 and r.json()["format"] == "npz"
    r = client.get("/api/versions/org/npz-model/download", params={"format": "npz"})
    with np.load(io.BytesIO(r.content)) as z:
        assert all(z[k].tobytes() == a.tobytes() for k, a in _tensors(8).items())
    assert os.listdir(root / "tmp") == []
    assert_error(client.get("/api/versions/plain/download", params={"format": "onnx"}), 400, "invalid_input")


def test_download_head_answers_like_get_without_reading_chunks(client, root):
    url = "/api/versions/org/net@2/download"
    get, head = client.get(url), client.head(url)
    assert head.status_code == 200 and head.content == b""
    for h in ("content-length", "content-disposition", "content-type", "x-modelstore-ref", "x-modelstore-content-id"):
        assert head.headers[h] == get.headers[h], h
    assert int(head.headers["content-length"]) == len(get.content)
    # npz/pt: the same headers but no Content-Length (known only once converted), and nothing converted
    npz_get, npz_head = client.get(url, params={"format": "npz"}), client.head(url, params={"format": "npz"})
    assert npz_head.status_code == 200 and npz_head.content == b"" and "content-length" not in npz_head.headers
    assert npz_head.headers["content-disposition"] == npz_get.headers["content-disposition"] \
        == 'attachment; filename="org--net-v2.npz"'
    assert os.listdir(root / "tmp") == []
    assert client.head("/api/versions/nope@1/download").status_code == 404
    assert client.head(url, params={"format": "onnx"}).status_code == 400
    # no chunk is read: with the pack files gone, GET cannot send the weights but HEAD still answers
    (root / "packs").rename(root / "packs.away")
    try:
        with TestClient(create_app(root), raise_server_exceptions=False) as c:
            again = c.head(url)
            assert again.status_code == 200 and again.headers["content-length"] == get.headers["content-length"]
            assert len(c.get(url).content) < len(get.content)  # the stream breaks at the first chunk
    finally:
        (root / "packs.away").rename(root / "packs")
    with TestClient(create_app(root, read_tokens=("ro",), private=True)) as c:
        assert c.head(url).status_code == 401
        assert c.head(url, headers={"Authorization": "Bearer ro"}).status_code == 200


def test_upload_refusals_write_nothing(root, tmp_path):
    src = tmp_path / "x.safetensors"
    save_file(_tensors(9), str(src))
    data = src.read_bytes()
    with TestClient(create_app(root, max_upload_bytes=len(data) - 1)) as small, TestClient(create_app(root)) as c:
        before = state(root)
        assert_error(_upload(small, "m", data), 413, "too_large")                        # by Content-Length
        assert_error(small.post("/api/models/m/versions", content=iter([data[:1000], data[1000:]])),
                     413, "too_large")                                                     # chunked, while streaming
        # a whole, valid file, but fewer bytes than announced: refused for the count alone
        assert_error(_upload(c, "m", data, headers={"content-length": str(len(data) + 10)}), 400, "invalid_input")
        assert_error(_upload(c, "m", b""), 400, "invalid_input")
        assert_error(_upload(c, "m", b"not a model file at all"), 400, "invalid_input")
        assert_error(_upload(c, "m", data[:-8]), 400, "invalid_input")                   # a cut-off file
        for name in ("..", "a/../b", "a b", "-x", "a/b/c", "x" * 201, "m'; drop table versions;--", "é"):
            assert_error(_upload(c, name, data), 400, "invalid_input")
        assert_error(_upload(c, "m", data, meta=["size=1"]), 400, "invalid_input")
        assert_error(_upload(c, "m", data, meta=["no-equals"]), 400, "invalid_input")
        assert_error(_upload(c, "m", data, meta=["bad key=1"]), 400, "invalid_input")
        assert_error(_upload(c, "m", data, metric=["clean:acc=abc"]), 400, "invalid_input")
        assert_error(_upload(c, "m", data, format="exe"), 400, "invalid_input")
        assert_error(_upload(c, "m", data, parent="nope@1"), 404, "not_found")
        assert state(root) == before
        assert _upload(c, "m", data).status_code == 201  # the same body is fine within the limit


def test_auth(root, tmp_path):
    src = tmp_path / "x.safetensors"
    save_file(_tensors(5), str(src))
    data = src.read_bytes()
    before = state(root)
    with TestClient(create_app(root, token="rw-secret", read_tokens=("ro-1", "ro-2"))) as c:
        assert c.get("/api/models").status_code == 200  # reads open
        r = c.post("/api/versions/plain/comments", json={"text": "hi"})
        assert_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
        for hdr in ({"Authorization": "Bearer wrong"}, {"Authorization": "rw-secret"},
                    {"Authorization": "Basic cnctc2VjcmV0"}):
            assert_error(c.post("/api/versions/plain/comments", json={"text": "hi"}, headers=hdr), 401, "unauthorized")
        ro = {"Authorization": "Bearer ro-2"}
        assert_error(c.post("/api/versions/plain/comments", json={"text": "hi"}, headers=ro), 403, "forbidden")
        assert_error(c.post("/api/versions/plain/tags", json={"name": "t"}, headers=ro), 403, "forbidden")
        assert_error(c.post("/api/versions/plain/meta", json={"set": {"k": 1}}, headers=ro), 403, "forbidden")
        assert_error(c.post("/api/versions/plain/metrics", json={"dataset": "d", "values": {"a": 1}}, headers=ro),
                     403, "forbidden")
        assert_error(_upload(c, "m", data), 401, "unauthorized")
        assert_error(_upload(c, "m", data, headers=ro), 403, "forbidden")
        assert state(root) == before
        rw = {"Authorization": "Bearer rw-secret"}
        assert c.post("/api/versions/plain/comments", json={"text": "hi"}, headers=rw).status_code == 201
        assert _upload(c, "m", data, headers=rw).status_code == 201
    with TestClient(create_app(root, read_tokens=("ro",), private=True)) as c:
        for url in ("/api/models", "/api/query?q=task%3D%22cls%22", "/api/versions/plain", "/api/versions/plain/download",
                    "/api/keys", "/api/tags"):
            assert_error(c.get(url), 401, "unauthorized")
            assert c.get(url, headers={"Authorization": "Bearer ro"}).status_code == 200, url
        assert c.get("/api/health").status_code == 200
        assert_error(c.post("/api/versions/plain/comments", json={"text": "x"}, headers={"Authorization": "Bearer ro"}),
                     403, "forbidden")


def test_writes_are_checked_before_their_body(root):
    """Auth and the body cap run before a byte of the body is read (app.GuardMiddleware)."""
    before = state(root)
    with TestClient(create_app(root, token="rw-secret")) as c:
        bad = {"Content-Type": "application/json"}
        assert_error(c.post("/api/versions/plain/comments", content=b"{not json", headers=bad), 401, "unauthorized")
        assert_error(c.post("/api/versions/plain/comments", content=b"{not json",
                            headers={**bad, "Authorization": "Bearer ro"}), 401, "unauthorized")
        rw = {**bad, "Authorization": "Bearer rw-secret"}
        assert_error(c.post("/api/versions/plain/comments", content=b"{not json", headers=rw), 422, "invalid_input")
        big = b'{"text": "' + b"x" * (2 << 20) + b'"}'
        assert_error(c.post("/api/versions/plain/comments", content=big, headers=rw), 413, "too_large")
        assert_error(c.post("/api/versions/plain/comments", content=iter([big[:1000], big[1000:]]), headers=rw),
                     413, "too_large")                                                     # chunked, while streaming
        assert_error(c.post("/login", content=iter([b"token=" + b"x" * 20000])), 413, "too_large")
        assert_error(c.post("/login", content=b"token=x", headers={"Content-Length": "10000000000"}),
                     413, "too_large")
        assert state(root) == before
        for scheme in ("bearer", "BEARER", "Bearer"):
            r = c.post("/api/versions/plain/comments", json={"text": scheme},
                       headers={"Authorization": f"{scheme} rw-secret"})
            assert r.status_code == 201, r.text


def test_upload_any_reader_format_and_no_server_paths_in_errors(client, root, tmp_path):
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    for params in ({}, {"format": "onnx"}):  # sniffed, or named
        r = _upload(client, "onnx-up", data, **params)
        assert r.status_code == 201 and r.json()["format"] == "onnx", r.text
    src = tmp_path / "x.safetensors"
    save_file(_tensors(3), str(src))
    for body, params in ((src.read_bytes()[:-8], {}), (b"not a model", {}), (b"not a model", {"format": "gguf"})):
        r = _upload(client, "m", body, **params)
        assert_error(r, 400, "invalid_input")
        assert str(root) not in r.text and "upload-" not in r.text, r.text
    assert os.listdir(root / "tmp") == []


def test_query_returns_every_match_unless_limited(client):
    assert len(client.get("/api/query", params={"q": 'task = "cls"'}).json()) == 2
    assert len(client.get("/api/query", params={"q": 'task = "cls"', "limit": 1}).json()) == 1


# -- a real server ---------------------------------------------------------------------------

def test_modelstore_serve_subprocess(root, tmp_path):
    import httpx

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "MODELSTORE_SERVER_TOKEN": "tok"}
    proc = subprocess.Popen([sys.executable, "-m", "modelstore", "--store", str(root), "serve", "--port", str(port),
                             "--max-upload", "1MB"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        src = tmp_path / "x.safetensors"
        save_file(_tensors(3), str(src))
        with httpx.Client(base_url=base, timeout=30) as http:
            assert http.get("/api/models").json()[0]["model"] == "org/net"
            assert_error(http.post("/api/models/srv/versions", content=src.read_bytes()), 401, "unauthorized")
            with open(src, "rb") as f:  # streamed from the file
                r = http.post("/api/models/srv/versions", content=f, headers={"Authorization": "Bearer tok"})
            assert r.status_code == 201, r.text
            r = http.get("/api/versions/srv/download")
            got = st_load(r.content)
            head = http.head("/api/versions/srv/download")  # a real server sends no body, the same length
            assert head.status_code == 200 and head.content == b""
            assert head.headers["content-length"] == r.headers["content-length"] == str(len(r.content))
            assert all(got[k].tobytes() == a.tobytes() for k, a in _tensors(3).items())
            assert_error(http.post("/api/models/srv/versions", content=b"\0" * 1_000_001,
                                   headers={"Authorization": "Bearer tok"}), 413, "too_large")
        # concurrent clients: every request answered, none sees another's catalog connection
        paths = ["/api/query?q=task%20%3D%20%22cls%22%20order%20by%20acc%40clean%20desc", "/api/models",
                 "/api/models/org/net/versions?sort=lr", "/api/versions/org/net@1", "/api/versions/srv/download"]
        statuses: list = []

        def client_thread(i: int) -> None:
            with httpx.Client(base_url=base, timeout=30) as http:
                statuses.extend(http.get(paths[(i + k) % len(paths)]).status_code for k in range(30))

        threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert statuses == [200] * 240, statuses
        # a client announcing more bytes than it sends, then hanging up: nothing is committed
        before = state(root)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /api/models/srv/versions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\n"
                         b"Content-Length: %d\r\n\r\n" % (src.stat().st_size + 100) + src.read_bytes())
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(10)
            try:
                while sock.recv(65536):
                    pass
            except OSError:
                pass
        time.sleep(0.3)
        assert state(root) == before
        assert httpx.get(f"{base}/docs").status_code == 200
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert err.count(f"http://127.0.0.1:{port}") == 1, err
    assert "Traceback" not in err, err


def test_serve_refuses_private_without_token(root):
    from conftest import assert_one_line_error, run_cli

    proc = run_cli("serve", "--private", store=root, env={"MODELSTORE_SERVER_TOKEN": "", "MODELSTORE_SERVER_READ_TOKEN": ""})
    assert_one_line_error(proc, 1, "--private needs a token")


def test_check_port_refuses_a_busy_port():
    from modelstore.cli_serve import check_port
    from modelstore.errors import InvalidInputError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        with pytest.raises(InvalidInputError, match="already in use"):
            check_port("127.0.0.1", busy.getsockname()[1])
    check_port("127.0.0.1", free_port())
