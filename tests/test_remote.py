"""Remotes against a real server (uvicorn in a subprocess on 127.0.0.1): clone, push, pull,
fetch; only missing chunks travel; SIGKILL mid-push resumes; forged chunks and pushes
without a write token are refused with nothing stored; tags moved on both sides refused."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import pytest
from conftest import ROOT, assert_one_line_error, free_port, run_cli

from modelstore.packs import REC_HEADER
from modelstore.remote.wire import record_header
from modelstore.store import Store
from modelstore.testing.models import finetune, transformer

TOKEN, READ_TOKEN = "w-secret", "r-secret"



def _start(root, port, token=TOKEN, read_tokens=(READ_TOKEN,), env=None):
    """A server process on 127.0.0.1:port, once it answers."""
    code = ("import uvicorn; from modelstore.server import create_app; "
            f"uvicorn.run(create_app({str(root)!r}, token={token!r}, read_tokens={tuple(read_tokens)!r}), "
            f"host='127.0.0.1', port={port}, log_level='warning')")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                            stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/api/sync/state", timeout=1)
            break
        except urllib.error.HTTPError:
            break
        except OSError:
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.1)
    return proc, url


@contextmanager
def serve(root, token=TOKEN, read_tokens=(READ_TOKEN,)):
    proc, url = _start(root, free_port(), token, read_tokens)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _wait_line(stream, text: str, timeout: float = 60) -> str:
    """Read lines from a subprocess pipe until one contains `text` (fails after `timeout`)."""
    import select

    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        if select.select([stream], [], [], 0.5)[0]:
            line = stream.readline().decode()
            assert line, f"stream ended before {text!r}: {seen}"
            seen.append(line)
            if text in line:
                return line
    raise AssertionError(f"no {text!r} within {timeout} s: {seen}")


def _post(url, path, body: bytes, token=TOKEN, ctype="application/octet-stream"):
    req = urllib.request.Request(url + path, data=body, method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _json(proc):
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return json.loads(proc.stdout)


def _same(store, ref, sd):
    got = store.load(ref)
    assert set(got) == set(sd)
    for k, v in sd.items():
        assert got[k].tobytes() == v.tobytes(), k


def _sync(op, root, *args, env=None, **kw):
    """Run modelstore.remote.sync.<op> in this process (same code path as the CLI, less start-up)."""
    from modelstore.remote import sync

    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        with Store.open(root) as s:
            return getattr(sync, op)(s, *args, **kw)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _index_count(root) -> int:
    with Store.open(root) as s:
        return s.index.count()


@pytest.fixture
def sd():
    return transformer(n_layers=12, d_model=128, vocab=512)


def test_push_clone_pull_bit_exact_and_only_changed_layers_travel(tmp_path, sd):
    a_dir, srv_dir, c_dir = tmp_path / "a", tmp_path / "srv", tmp_path / "c"
    Store.init(srv_dir).close()
    with Store.init(a_dir, chunk_target_bytes=64 << 10) as a:
        a.commit(sd, model="org/bert", message="base", meta={"lr": 0.1}, metrics=[("val", "acc", 0.5)])
        a.tag("org/bert@1", "production")
        a.comment("org/bert@1", "looks good", author="alice")
    with serve(srv_dir) as url:
        run_cli("remote", "add", "origin", url, "--token", TOKEN, store=a_dir, check=0)
        first = _json(run_cli("push", "origin", "org/bert", "--json", store=a_dir,
                              env={"MODELSTORE_USER": "alice"}))
        assert [v["remote_ref"] for v in first["versions_sent"]] == ["org/bert@1"]
        with Store.open(srv_dir) as s:
            _same(s, "org/bert@1", sd)
            info = s.resolve("org/bert@production")
            assert info.meta == {"lr": 0.1} and info.metrics == {"val": {"acc": 0.5}}
            assert [c["text"] for c in info.comments] == ["looks good"]
            assert s.tags("org/bert")[0]["author"] == "alice"  # the pushing user moved the tag

        # A fine-tune that changed 2 of 12 layers: only those layers' chunks travel.
        ft = finetune(sd, [3, 7])
        with Store.open(a_dir) as a:
            a.commit(ft, model="org/bert", message="ft")
            m1, m2 = a.manifest("org/bert@1"), a.manifest("org/bert@2")
            new = m2.chunk_ids() - m1.chunk_ids()
            changed = {c for t in m2.tensors if t.name.startswith(("layers.3.", "layers.7.")) for c in t.chunks}
            assert new == changed
            wire = sum(REC_HEADER.size + a.index.get(c).stored_len for c in new)
        second = _sync("push", a_dir, "origin", "org/bert")
        assert second["chunks_sent"] == len(new)
        assert second["bytes_sent"] == wire  # records travel as stored (XOR deltas against the base)
        assert second["chunks_skipped"] == len(m2.chunk_ids()) - len(new)
        assert second["bytes_sent"] < 0.25 * second["bytes_skipped"]
        again = _sync("push", a_dir, "origin", "org/bert")
        assert again["chunks_sent"] == 0 and again["versions_sent"] == [] and again["versions_merged"] == 2

        # clone: everything, bit-exact, origin recorded, annotations along.
        cl = _json(run_cli("clone", url, c_dir, "--json"))
        assert cl["chunks_received"] == len(m1.chunk_ids() | m2.chunk_ids())
        with Store.open(c_dir) as c:
            _same(c, "org/bert@1", sd)
            _same(c, "org/bert@2", ft)
            assert c.resolve("org/bert@production").number == 1
            assert c.resolve("org/bert@2").parents == ["org/bert@1"]
            assert c.config.remotes["origin"]["url"] == url
            assert c.fsck()["ok"]
            c.add_metrics("org/bert@2", "val", {"acc": 0.61}, author="bob")
            c.comment("org/bert@2", "better", author="bob")
            c.tag("org/bert@2", "production", author="bob")
        _sync("push", c_dir, "origin", env={"MODELSTORE_TOKEN": TOKEN})

        # pull into a: annotations merged, tag fast-forwarded, nothing duplicated on re-runs.
        for _ in range(2):
            got = _sync("pull", a_dir, "origin", "org/bert")
            assert got["chunks_received"] == 0
        with Store.open(a_dir) as a:
            v2 = a.resolve("org/bert@production")
            assert v2.number == 2 and v2.metrics == {"val": {"acc": 0.61}}
            assert [c["text"] for c in v2.comments] == ["better"]
            assert [c["text"] for c in a.resolve("org/bert@1").comments] == ["looks good"]

        # pull of one REF into a fresh store brings its ancestors (lineage stays whole).
        d_dir = tmp_path / "d"
        with Store.init(d_dir) as d:
            from modelstore.remote import remotes

            remotes.add(d.root, "origin", url)
        got = _sync("pull", d_dir, "origin", "org/bert@production")
        assert [v["remote_ref"] for v in got["versions_received"]] == ["org/bert@1", "org/bert@2"]
        with Store.open(d_dir) as d:
            _same(d, "org/bert@production", ft)
            assert d.fsck()["ok"]
        fetched = _sync("fetch", d_dir, "origin")
        assert fetched["versions_merged"] == 2 and fetched["remote_only"] == []


def test_sigkill_mid_push_then_resume_sends_only_the_rest(tmp_path, sd):
    a_dir, srv_dir = tmp_path / "a", tmp_path / "srv"
    Store.init(srv_dir).close()
    with Store.init(a_dir, chunk_target_bytes=32 << 10) as a:
        a.commit(sd, model="m")
        total = len(a.manifest("m").chunk_ids())
    env = {"MODELSTORE_TOKEN": TOKEN, "MODELSTORE_SYNC_BATCH_BYTES": str(256 << 10), "MODELSTORE_SYNC_WORKERS": "1"}
    with serve(srv_dir) as url:
        run_cli("remote", "add", "origin", url, store=a_dir, check=0)
        proc = subprocess.Popen([sys.executable, "-m", "modelstore", "--store", str(a_dir), "push", "origin"],
                                env={**os.environ, **env, "MODELSTORE_SYNC_PAUSE_AFTER": "3",
                                     "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        line = proc.stderr.readline().decode()
        assert "paused after 3 batches" in line, line
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        accepted = _index_count(srv_dir)
        assert 0 < accepted < total
        with Store.open(srv_dir) as s:  # nothing half-committed is visible
            assert s.models() == [] and s.fsck()["ok"]
        done = _json(run_cli("push", "origin", "--json", store=a_dir, env=env))  # resumes
        assert done["chunks_sent"] == total - accepted
        assert done["chunks_skipped"] == accepted
        with Store.open(srv_dir) as s:
            _same(s, "m@1", sd)
            assert s.fsck()["ok"]


def test_server_sigkilled_mid_batch_then_restarted_push_resumes(tmp_path, sd):
    """SIGKILL the server while a batch is received but not yet durable (3 acknowledged
    before it); restart it on the same store; the re-run sends only what was not acknowledged."""
    a_dir, srv_dir = tmp_path / "a", tmp_path / "srv"
    Store.init(srv_dir).close()
    with Store.init(a_dir, chunk_target_bytes=32 << 10) as a:
        a.commit(sd, model="m")
        total = len(a.manifest("m").chunk_ids())
    env = {"MODELSTORE_TOKEN": TOKEN, "MODELSTORE_SYNC_BATCH_BYTES": str(256 << 10), "MODELSTORE_SYNC_WORKERS": "1"}
    port = free_port()
    server, url = _start(srv_dir, port, env={"MODELSTORE_SYNC_SERVER_PAUSE_AFTER": "3"})
    try:
        run_cli("remote", "add", "origin", url, store=a_dir, check=0)
        client = subprocess.Popen([sys.executable, "-m", "modelstore", "--store", str(a_dir), "push", "origin"],
                                  env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE)
        _wait_line(server.stderr, "paused after 3 batches")
        server.send_signal(signal.SIGKILL)
        server.wait()
        err = client.communicate(timeout=60)[1].decode()
        assert client.returncode == 1 and "cannot reach" in err and "Traceback" not in err, err
    finally:
        server.kill()
        server.wait()
    with Store.open(srv_dir) as s:  # 3 batches durable; the 4th's appended bytes are not indexed
        accepted = s.index.count()
        assert 0 < accepted < total
        assert s.models() == [] and s.fsck()["ok"], s.fsck()["problems"]
    server, _ = _start(srv_dir, port)  # same URL, same store
    try:
        done = _json(run_cli("push", "origin", "--json", store=a_dir, env=env))
    finally:
        server.terminate()
        server.wait(10)
    assert done["chunks_sent"] == total - accepted and done["chunks_skipped"] == accepted
    assert [v["remote_ref"] for v in done["versions_sent"]] == ["m@1"]
    with Store.open(srv_dir) as s:
        _same(s, "m@1", sd)
        assert s.fsck()["ok"]


def test_gc_on_server_mid_push_drops_accepted_chunks_and_push_resends_them(tmp_path, sd):
    """Chunks accepted but not yet named by a version are garbage to a server-side gc; the
    version import re-checks them (409 missing_chunks) and the client sends them again."""
    from modelstore.catalog_sync import export_version
    from modelstore.remote import remotes, sync
    from modelstore.remote.client import RemoteError
    from modelstore.remote.transfer import Stats, push_chunks

    a_dir, srv_dir = tmp_path / "a", tmp_path / "srv"
    Store.init(srv_dir).close()
    with Store.init(a_dir) as a:
        info = a.commit(sd, model="m")
    with serve(srv_dir) as url, Store.open(a_dir) as a:
        remotes.add(a.root, "origin", url, TOKEN)
        client = sync.connect(a, "origin")
        m = a.manifest("m@1")
        body = {"version": export_version(a.catalog, info.id), "manifest": m.to_json().decode(), "tags": []}
        rounds = []

        def move():
            st = push_chunks(a, client, m)
            rounds.append(st.chunks)
            if len(rounds) == 1:  # a gc on the server between the chunks and the version
                with Store.open(srv_dir) as s:
                    assert s.gc()["chunks_removed"] == st.chunks
                with pytest.raises(RemoteError, match="not here") as exc:
                    client.post_json("/api/sync/versions", body)
                assert exc.value.kind == "missing_chunks" and exc.value.http_status == 409
            return st

        total = Stats()
        out = sync._with_chunks(move, lambda: client.post_json("/api/sync/versions", body), total)
        assert out["created"] and rounds == [len(m.chunk_ids())] * 2
        assert total.chunks == 2 * len(m.chunk_ids()) and total.chunks_skipped == 0
    with Store.open(srv_dir) as s:
        _same(s, "m@1", sd)
        assert s.fsck()["ok"]


def test_forged_chunk_refused_and_nothing_committed(tmp_path, sd):
    srv_dir = tmp_path / "srv"
    Store.init(srv_dir).close()
    with Store.init(tmp_path / "a") as a:
        info = a.commit(sd, model="m")
        m = a.manifest("m")
        from modelstore.catalog_sync import export_version

        doc = export_version(a.catalog, info.id)
    real = next(iter(m.chunk_ids()))
    with serve(srv_dir) as url:
        # raw bytes that do not hash to the claimed id
        forged = b"\x01" * 1024
        batch = record_header(real, 0, len(forged), len(forged)) + forged
        good = b"\x02" * 512
        from modelstore.hashing import digest

        batch = record_header(digest(good), 0, len(good), len(good)) + good + batch  # one good, one forged
        status, body = _post(url, "/api/sync/chunks", batch)
        assert status == 400 and json.loads(body)["error"]["kind"] == "integrity", body
        # a delta against a base the server lacks is refused too
        delta = record_header(digest(good), 3, len(good), 10, base=real) + b"\x00" * 10
        status, body = _post(url, "/api/sync/chunks", delta)
        assert status == 400, body
        # framing garbage
        status, body = _post(url, "/api/sync/chunks", b"not a record at all, not at all, no, never, nope" * 2)
        assert status == 400 and json.loads(body)["error"]["kind"] == "invalid_input"
        assert _index_count(srv_dir) == 0
        # the version cannot be committed without its chunks
        status, body = _post(url, "/api/sync/versions", json.dumps({"version": doc, "manifest": m.to_json().decode()})
                             .encode(), ctype="application/json")
        assert status == 409 and json.loads(body)["error"]["kind"] == "missing_chunks", body
        # a manifest that does not hash to the claimed content id
        bad = dict(doc, content_id="0" * 32)
        status, body = _post(url, "/api/sync/versions", json.dumps({"version": bad, "manifest": m.to_json().decode()})
                             .encode(), ctype="application/json")
        assert status == 400, body
    with Store.open(srv_dir) as s:
        assert s.models() == [] and s.index.count() == 0


def test_push_without_write_token_refused_nothing_stored(tmp_path, sd):
    a_dir, srv_dir = tmp_path / "a", tmp_path / "srv"
    Store.init(srv_dir).close()
    with Store.init(a_dir) as a:
        a.commit(sd, model="m")
    with serve(srv_dir) as url:
        run_cli("remote", "add", "origin", url, store=a_dir, check=0)
        env = {"MODELSTORE_TOKEN": ""}
        assert_one_line_error(run_cli("push", "origin", store=a_dir, env=env), 1, "token is required")
        from modelstore.remote.client import RemoteError

        with pytest.raises(RemoteError, match="may only read"):
            _sync("push", a_dir, "origin", env={"MODELSTORE_TOKEN": READ_TOKEN})
        with pytest.raises(RemoteError, match="token is required"):
            _sync("push", a_dir, "origin", env={"MODELSTORE_TOKEN": "wrong"})
        status, _ = _post(url, "/api/sync/chunks", b"", token="wrong")
        assert status == 401
        # the read token can pull
        b_dir = tmp_path / "b"
        with Store.init(b_dir) as b:
            from modelstore.remote import remotes

            remotes.add(b.root, "origin", url, READ_TOKEN)
        assert _sync("pull", b_dir, "origin", env={"MODELSTORE_TOKEN": ""})["versions_received"] == []
        with pytest.raises(RemoteError, match="no model"):
            _sync("pull", b_dir, "origin", "nosuchmodel", env={"MODELSTORE_TOKEN": ""})
        assert_one_line_error(run_cli("push", "nosuchremote", store=a_dir), 1, "no remote named")
    with Store.open(srv_dir) as s:
        assert s.models() == [] and s.index.count() == 0


def test_tag_moved_on_both_sides_refused_unless_force(tmp_path, sd):
    a_dir, b_dir, srv_dir = tmp_path / "a", tmp_path / "b", tmp_path / "srv"
    Store.init(srv_dir).close()
    with Store.init(a_dir) as a:
        for i in range(3):
            a.commit(finetune(sd, [i]), model="m", message=f"v{i + 1}")
        a.tag("m@1", "production")
    env = {"MODELSTORE_TOKEN": TOKEN}
    with serve(srv_dir) as url:
        with Store.open(a_dir) as a:
            from modelstore.remote import remotes, sync

            remotes.add(a.root, "origin", url)
        _sync("push", a_dir, "origin", env=env)
        sync.clone(url, b_dir)
        with Store.open(b_dir) as b:
            b.tag("m@3", "production")
        with Store.open(a_dir) as a:
            a.tag("m@2", "production")
        moved = _sync("push", b_dir, "origin", env=env)  # only b moved it since: fine
        assert moved["tags_moved"] == ["m@production"]
        proc = run_cli("push", "origin", store=a_dir, env=env)
        assert_one_line_error(proc, 1, "--force")
        assert "moved on both sides" in proc.stderr
        from modelstore.catalog_sync import TagConflictError

        with pytest.raises(TagConflictError, match="--force"):
            _sync("pull", a_dir, "origin")
        with Store.open(srv_dir) as s:
            assert s.resolve("m@production").number == 3
        _sync("push", a_dir, "origin", env=env, force=True)
        with Store.open(srv_dir) as s:
            assert s.resolve("m@production").number == 2
        # b did not move it again: its pull follows the server without --force
        _sync("pull", b_dir, "origin")
        with Store.open(b_dir) as b:
            assert b.resolve("m@production").number == 2


def _onnx_mlp(insert=False, act="Relu"):
    """fc1 -> relu -> [mid -> relu] -> fc2, made with onnx.helper (weights seeded)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    def w(name, shape, seed):
        return numpy_helper.from_array(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), name)

    nodes = [helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h1"], name="fc1", transB=1),
             helper.make_node(act, ["h1"], ["a1"], name="act1")]
    inits = [w("fc1.weight", (32, 16), 1), w("fc1.bias", (32,), 2), w("fc2.weight", (4, 32), 3), w("fc2.bias", (4,), 4)]
    last = "a1"
    if insert:
        nodes += [helper.make_node("Gemm", ["a1", "mid.weight", "mid.bias"], ["hm"], name="mid", transB=1),
                  helper.make_node("Relu", ["hm"], ["am"], name="act_mid")]
        inits += [w("mid.weight", (32, 32), 5), w("mid.bias", (32,), 6)]
        last = "am"
    nodes.append(helper.make_node("Gemm", [last, "fc2.weight", "fc2.bias"], ["y"], name="fc2", transB=1))
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _graph_diff_added(store):
    d = store.diff("mlp@1", "mlp@2", graph=True)
    return sorted(n["name"] for n in d.graph["added"])


def test_graph_blobs_travel_with_push_clone_pull(tmp_path):
    onnx = pytest.importorskip("onnx")
    from modelstore import graph_store
    from modelstore.remote import sync

    pa, pb = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(_onnx_mlp(), str(pa))
    onnx.save(_onnx_mlp(insert=True), str(pb))
    a_dir, srv_dir, c_dir = tmp_path / "a", tmp_path / "srv", tmp_path / "c"
    Store.init(srv_dir).close()
    with Store.init(a_dir) as a:
        v1 = a.commit(pa, model="mlp")
        if "graph" not in v1.meta:
            pytest.skip("the ONNX reader does not store graphs")
        gid1 = v1.meta["graph"]
        gid2 = a.commit(pb, model="mlp").meta["graph"]
        assert _graph_diff_added(a) == ["act_mid", "mid"]
    env = {"MODELSTORE_TOKEN": TOKEN}
    with serve(srv_dir) as url:
        with Store.open(a_dir) as a:
            from modelstore.remote import remotes

            remotes.add(a.root, "origin", url)
        assert len(_sync("push", a_dir, "origin", env=env)["versions_sent"]) == 2
        with Store.open(srv_dir) as s:
            assert s.fsck()["ok"], s.fsck()["problems"]
            assert _graph_diff_added(s) == ["act_mid", "mid"]
            assert graph_store.onnx_proto_of_version(s, s.resolve("mlp@1")) is not None
        sync.clone(url, c_dir)
        with Store.open(c_dir) as c:
            assert c.fsck()["ok"], c.fsck()["problems"]
            assert _graph_diff_added(c) == ["act_mid", "mid"]
            assert {c.resolve("mlp@1").meta["graph"], c.resolve("mlp@2").meta["graph"]} == {gid1, gid2}
            c.comment("mlp@2", "graph ok", author="bob")
        _sync("push", c_dir, "origin", env=env)

        # A store that lost a blob (a version pushed before graphs travelled) gets it back on
        # pull; a server that lost one gets it back on push.
        with Store.open(a_dir) as a:
            graph_store.blob_path(a, gid2).unlink()
            assert not a.fsck()["ok"]
        got = _sync("pull", a_dir, "origin")
        assert got["versions_merged"] == 2 and got["chunks_received"] == 0
        with Store.open(a_dir) as a:
            assert a.fsck()["ok"] and _graph_diff_added(a) == ["act_mid", "mid"]
            assert [x["text"] for x in a.resolve("mlp@2").comments] == ["graph ok"]
        with Store.open(srv_dir) as s:
            graph_store.blob_path(s, gid1).unlink()
        _sync("push", a_dir, "origin", env=env)
        with Store.open(srv_dir) as s:
            assert s.fsck()["ok"], s.fsck()["problems"]

        # A forged graph blob is refused with nothing stored; a new version whose graph was
        # not sent is refused (409) and stays invisible.
        import base64
        import zlib

        from modelstore.catalog_sync import export_version
        from modelstore.remote import graph_blobs
        from modelstore.remote.client import Client
        from modelstore.remote.transfer import push_chunks

        pc = tmp_path / "c.onnx"
        onnx.save(_onnx_mlp(act="Tanh"), str(pc))
        with Store.open(a_dir) as a:
            v3 = a.commit(pc, model="other")
            gid3 = v3.meta["graph"]
            push_body = {"version": export_version(a.catalog, v3.id), "manifest": a.manifest("other@1").to_json().decode()}
            push_chunks(a, Client(url, TOKEN), a.manifest("other@1"))
            real = graph_blobs.export(a, gid3)
        forged = [{**real[0], "graph": base64.b64encode(zlib.compress(b'{"nodes": []}')).decode()}]
        for graphs, status_kind in ((forged, (400, "integrity")), (None, (409, "missing_graph"))):
            status, body = _post(url, "/api/sync/versions", json.dumps({**push_body, "graphs": graphs}).encode(),
                                 ctype="application/json")
            assert (status, json.loads(body)["error"]["kind"]) == status_kind, body
            with Store.open(srv_dir) as s:
                assert "other" not in [m for m, _ in s.models()] and not graph_store.blob_path(s, gid3).exists()
        status, body = _post(url, "/api/sync/versions", json.dumps({**push_body, "graphs": real}).encode(),
                             ctype="application/json")
        assert status == 201, body
    with Store.open(srv_dir) as s:
        assert s.fsck()["ok"] and s.resolve("other@1").meta["graph"] == gid3


def test_record_segments_send_pack_bytes_equal_to_the_re_encoded_records(tmp_path, sd):
    """Records that travel as stored go as pack-file ranges (sendfile); their bytes equal the
    records read and framed one by one, for plain records, deltas whose base the receiver
    holds, and deltas re-encoded plain because it lacks the base."""
    from modelstore.remote.wire import FileRange, read_records, record_segments

    with Store.init(tmp_path / "a", chunk_target_bytes=64 << 10) as a:
        a.commit(sd, model="m")
        a.commit(finetune(sd, [1]), model="m")
        m = a.manifest("m@2")
        ids = list(dict.fromkeys(c for t in m.tensors for c in t.chunks))
        dtype_of = {c: t.dtype for t in m.tensors for c in t.chunks}
        for has_bases in (True, False):
            def receiver_has(base, has=has_bases):
                return has

            segments, length = record_segments(a, ids, receiver_has, dtype_of)
            got = b"".join(s.path.read_bytes()[s.offset:s.offset + s.count] if isinstance(s, FileRange)
                           else bytes(s) for s in segments)
            in_pack_order = sorted(ids, key=lambda c: (a.index.get(c).pack, a.index.get(c).offset))
            parts, _ = read_records(a, in_pack_order, receiver_has, dtype_of)
            assert got == b"".join(bytes(p) for p in parts) and len(got) == length
            ranges = sum(isinstance(s, FileRange) for s in segments)
            assert ranges < (len(ids) / 4 if has_bases else len(ids)), ranges  # adjacent records merge


def test_same_weights_committed_twice_stay_two_versions_through_push_and_pull(tmp_path):
    """Identity across stores is (model, uid), not (model, content id): a re-commit of the same
    weights keeps its own message, metrics, meta and tag; re-runs add nothing; annotations
    made on the other side merge into the right one of the two."""
    sd = transformer(n_layers=2, d_model=64, vocab=128)
    a_dir, b_dir, srv_dir = tmp_path / "a", tmp_path / "b", tmp_path / "srv"
    Store.init(srv_dir).close()
    with Store.init(a_dir) as a:
        a.commit(sd, model="m", message="first")
        a.commit(sd, model="m", message="re-evaluated", meta={"note": "again"}, metrics=[("val", "acc", 0.7)])
        a.commit(finetune(sd, [0]), model="m", message="third")
        a.tag("m@2", "best")
        want = [(v.ref, v.message, v.content_id, v.parents) for v in a.log("m")]
    assert want[0][2] == want[1][2]
    env = {"MODELSTORE_TOKEN": TOKEN}
    with serve(srv_dir) as url:
        from modelstore.remote import remotes, sync

        remotes.add(a_dir, "origin", url)
        first = _sync("push", a_dir, "origin", env=env)
        assert [v["remote_ref"] for v in first["versions_sent"]] == ["m@1", "m@2", "m@3"]
        again = _sync("push", a_dir, "origin", env=env)
        assert again["versions_sent"] == [] and again["versions_merged"] == 3
        sync.clone(url, b_dir)
        for root in (srv_dir, b_dir):
            with Store.open(root) as s:
                assert [(v.ref, v.message, v.content_id, v.parents) for v in s.log("m")] == want
                v2 = s.resolve("m@2")
                assert v2.metrics == {"val": {"acc": 0.7}} and v2.meta.get("note") == "again"
                assert s.resolve("m@1").metrics == {} and "note" not in s.resolve("m@1").meta
                assert s.resolve("m@best").number == 2
        # an annotation of the server's m@1 comes back to a's m@1, not to m@2
        with Store.open(srv_dir) as s:
            s.add_metrics("m@1", "val", {"acc": 0.5})
        pulled = _sync("pull", a_dir, "origin")
        assert pulled["versions_received"] == [] and pulled["versions_merged"] == 3
        with Store.open(a_dir) as a:
            assert len(a.log("m")) == 3
            assert a.resolve("m@1").metrics == {"val": {"acc": 0.5}}
            assert a.resolve("m@2").metrics == {"val": {"acc": 0.7}}
        assert _sync("pull", b_dir, "origin")["versions_received"] == []
        with Store.open(b_dir) as b:
            assert len(b.log("m")) == 3
