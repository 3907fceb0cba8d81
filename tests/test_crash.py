"""SIGKILL `modelstore commit` at random moments: the store must stay consistent."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import save_file

from modelstore.store import Store
from modelstore.testing.models import sized_transformer

from conftest import ROOT


@pytest.mark.slow
def test_sigkill_commit_never_corrupts(tmp_path):
    store_dir = tmp_path / "store"
    Store.init(store_dir, chunk_target_bytes=256 << 10).close()
    sd = sized_transformer(24 << 20, n_layers=4)
    ckpts = []
    for i in range(3):  # a few different checkpoints so commits keep writing new chunks
        p = tmp_path / f"ck{i}.safetensors"
        save_file({k: (v + np.float32(i)) for k, v in sd.items()}, str(p))
        ckpts.append(p)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rnd = random.Random(42)
    killed = 0
    for attempt in range(24):
        ck = ckpts[attempt % 3]
        proc = subprocess.Popen([sys.executable, "-m", "modelstore", "--store", str(store_dir), "commit", str(ck),
                                 "--model", f"m{attempt % 3}", "-m", f"try {attempt}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        time.sleep(rnd.uniform(0.05, 1.2))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
        with Store.open(store_dir) as s:
            rep = s.fsck(verify_data=attempt % 4 == 0)
            assert rep["ok"], rep["problems"]
            for v in s.log():  # every visible version is whole
                m = s.manifest(v.ref)
                assert len(m.tensors) == len(sd)
    assert killed >= 10, "the kill window missed the commits; make the checkpoint bigger"
    with Store.open(store_dir) as s:
        for i, ck in enumerate(ckpts):  # re-running every commit succeeds and is bit-exact
            info = s.commit(ck, model=f"final{i}")
            got = s.load(info.ref)
            for k, v in sd.items():
                assert got[k].tobytes() == (v + np.float32(i)).tobytes()
        s.gc()
        rep = s.fsck()
        assert rep["ok"] and rep["unreferenced_chunks"] == 0
