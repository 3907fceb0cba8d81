"""Remotes against a real server (uvicorn in a subprocess on 127.0.0.1): clone, push, pull,
fetch; only missing chunks travel; SIGKILL mid-push resumes; forged chunks and pushes
without a write token are refused with nothing stored; tags moved on both sides refused."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import pytest
from conftest import ROOT, assert_one_line_error, run_cli

from modelstore.packs import REC_HEADER
from modelstore.remote.wire import record_header
from modelstore.store import Store
from modelstore.testing.models import finetune, transformer

TOKEN, READ_TOKEN = "w-secret", "r-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(root, token=TOKEN, read_tokens=(READ_TOKEN,)):
    port = _free_port()
    code = ("import uvicorn; from modelstore.server import create_app; "
            f"uvicorn.run(create_app({str(root)!r}, token={token!r}, read_tokens={tuple(read_tokens)!r}), "
            f"host='127.0.0.1', port={port}, log_level='warning')")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/api/sync/state", timeout=1)
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


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
