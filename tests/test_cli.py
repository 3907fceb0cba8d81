"""The CLI end to end (real subprocesses): happy paths, JSON contracts, bad input."""

import json
import os
import struct
import time

import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import assert_one_line_error, run_cli


@pytest.fixture
def cli_store(tmp_path):
    store = tmp_path / "store"
    run_cli("init", store, check=0)
    return store


@pytest.fixture
def ckpt(tmp_path):
    p = tmp_path / "ck.safetensors"
    rng = np.random.default_rng(0)
    save_file({"w": rng.standard_normal((300, 40)).astype(np.float32), "b": np.zeros(40, np.float32)}, str(p))
    return p


def snapshot(store):
    files = {}
    for root, _dirs, names in os.walk(store):
        for n in names:
            p = os.path.join(root, n)
            if n in ("lock.mdb", "lock") or n.endswith(("-shm", "-wal")):
                continue
            with open(p, "rb") as f:
                files[p] = f.read()
    return files


def test_version_is_fast():
    run_cli("--version", check=0)  # warm the bytecode cache
    t = time.perf_counter()
    proc = run_cli("--version", check=0)
    assert proc.stdout.startswith("modelstore ")
    assert time.perf_counter() - t < 1.0  # generous: the target (0.25 s) is checked in benchmarks


def test_tour(cli_store, ckpt, tmp_path):
    proc = run_cli("commit", ckpt, "--model", "bert-sst2", "-m", "epoch 3", "--meta", "lr=3e-5", store=cli_store, check=0)
    assert "bert-sst2@1" in proc.stdout
    log = json.loads(run_cli("log", "bert-sst2", "--json", store=cli_store, check=0).stdout)
    assert log[0]["ref"] == "bert-sst2@1" and log[0]["meta"] == {"lr": 3e-05} and log[0]["message"] == "epoch 3"
    show = json.loads(run_cli("show", "bert-sst2@1", "--json", store=cli_store, check=0).stdout)
    assert {t["name"] for t in show["tensors"]} == {"w", "b"}
    out = tmp_path / "out.safetensors"
    run_cli("checkout", "bert-sst2@1", "-o", out, store=cli_store, check=0)
    from safetensors.numpy import load_file

    a, b = load_file(str(ckpt)), load_file(str(out))
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    st = json.loads(run_cli("stats", "--json", store=cli_store, check=0).stdout)
    assert st["versions"] == 1 and st["stored_bytes"] < st["logical_bytes"]
    fs = json.loads(run_cli("fsck", "--json", store=cli_store, check=0).stdout)
    assert fs["ok"]
    run_cli("gc", store=cli_store, check=0)
    # content-id prefix REF and file REF for show
    prefix = log[0]["content_id"][:10]
    assert json.loads(run_cli("show", prefix, "--json", store=cli_store, check=0).stdout)["ref"] == "bert-sst2@1"
    assert json.loads(run_cli("show", ckpt, "--json", check=0).stdout)["format"] == "safetensors"


def test_store_discovery_walks_up(tmp_path, ckpt):
    run_cli("init", cwd=tmp_path, check=0)
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    run_cli("commit", ckpt, "--model", "m", cwd=sub, check=0)
    assert json.loads(run_cli("log", "--json", cwd=sub, check=0).stdout)[0]["ref"] == "m@1"
    env_store = tmp_path / "envstore"
    run_cli("init", env_store, check=0)
    proc = run_cli("log", "--json", cwd=sub, env={"MODELSTORE_DIR": str(env_store)}, check=0)
    assert json.loads(proc.stdout) == []


def write_raw_safetensors(path, header: bytes, data: bytes = b"", claimed_len=None):
    n = len(header) if claimed_len is None else claimed_len
    path.write_bytes(struct.pack("<Q", n) + header + data)
    return path


BAD_FILES = {
    "truncated": lambda p: p.write_bytes(b"\x10\x00\x00"),
    "corrupt-header": lambda p: write_raw_safetensors(p, b"{not json at all}"),
    "claims-more": lambda p: write_raw_safetensors(p, b'{"w":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]}}', b"\0" * 16),
    "huge-header": lambda p: write_raw_safetensors(p, b"{}", claimed_len=1 << 40),
    "bad-dtype": lambda p: write_raw_safetensors(p, b'{"w":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}}', b"\0" * 8),
    "duplicate": lambda p: write_raw_safetensors(
        p, b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', b"\0" * 8),
    "random": lambda p: p.write_bytes(os.urandom(4096)),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_leave_store_unchanged(cli_store, ckpt, tmp_path, case):
    run_cli("commit", ckpt, "--model", "m", store=cli_store, check=0)
    before = snapshot(cli_store)
    bad = tmp_path / f"{case}.safetensors"
    BAD_FILES[case](bad)
    proc = run_cli("commit", bad, "--model", "m", store=cli_store)
    assert_one_line_error(proc)
    assert snapshot(cli_store) == before


@pytest.mark.parametrize("name,why", [("../x", "invalid model name"), ("", "empty"), ("a" * 10_000, "characters long"),
                                      ("a b", "invalid"), ("x/../../y", "invalid")])
def test_hostile_model_names(cli_store, ckpt, name, why):
    before = snapshot(cli_store)
    proc = run_cli("commit", ckpt, "--model", name, store=cli_store)
    assert_one_line_error(proc, contains=why)
    assert snapshot(cli_store) == before


def test_missing_file_and_ref(cli_store, tmp_path):
    assert_one_line_error(run_cli("commit", tmp_path / "nope.safetensors", "--model", "m", store=cli_store), contains="no such")
    assert_one_line_error(run_cli("show", "ghost@3", store=cli_store), contains="ghost@3")
    assert_one_line_error(run_cli("checkout", "ghost", "-o", tmp_path / "x.safetensors", store=cli_store))
    assert_one_line_error(run_cli("log", "ghost", store=cli_store), contains="ghost")
    assert_one_line_error(run_cli("log", cwd=tmp_path, env={"MODELSTORE_DIR": ""}), contains="modelstore init")


def test_bad_meta_and_usage(cli_store, ckpt):
    assert_one_line_error(run_cli("commit", ckpt, "--model", "m", "--meta", "novalue", store=cli_store), contains="KEY=VALUE")
    assert run_cli("commit", store=cli_store).returncode == 2  # usage error: Typer's


def test_malicious_pickle_refused(cli_store, tmp_path):
    pytest.importorskip("torch")
    import pickle

    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import torch

    bad = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(3), "x": Evil()}, bad, pickle_module=pickle)
    before = snapshot(cli_store)
    proc = run_cli("commit", bad, "--model", "m", store=cli_store)
    assert_one_line_error(proc)
    assert not marker.exists()
    assert snapshot(cli_store) == before


def test_corrupt_config_is_a_format_error(cli_store):
    (cli_store / "config.json").write_text('{"format_version": 99, "hash": "xxh3-128"}')
    assert_one_line_error(run_cli("log", store=cli_store), code=3, contains="format version 99")


