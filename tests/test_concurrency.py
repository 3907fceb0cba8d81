"""Two processes committing into one store at once both succeed, nothing lost."""

import os
import subprocess
import sys

import numpy as np
from safetensors.numpy import save_file

from modelstore.store import Store
from modelstore.testing.models import transformer

from conftest import ROOT


def test_two_processes_commit_concurrently(tmp_path):
    store_dir = tmp_path / "store"
    Store.init(store_dir, chunk_target_bytes=64 << 10).close()
    files = []
    for i in range(4):
        sd = transformer(n_layers=4, d_model=128, vocab=2000, seed=i)
        p = tmp_path / f"m{i}.safetensors"
        save_file(sd, str(p))
        files.append((p, sd))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = (
        "import sys\nfrom modelstore.store import Store\n"
        "s = Store.open(sys.argv[1])\n"
        "for p in sys.argv[3:]:\n"
        "    s.commit(p, model=sys.argv[2])\n"
        "    s.commit(p, model='shared')\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(store_dir), f"proc{j}",
                          *(str(files[i][0]) for i in range(4) if i % 2 == j)], env=env, stderr=subprocess.PIPE)
        for j in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    with Store.open(store_dir) as s:
        shared = s.log("shared")
        assert [v.number for v in shared] == [1, 2, 3, 4]
        assert len(s.log("proc0")) == 2 and len(s.log("proc1")) == 2
        rep = s.fsck()
        assert rep["ok"], rep["problems"]
        for _path, sd in files:
            matches = [v for v in s.log() if s.load(v.ref, ["embed.weight"])["embed.weight"].tobytes()
                       == sd["embed.weight"].tobytes()]
            assert len(matches) == 2  # its own model's version and the shared one
            for v in matches:
                got = s.load(v.ref)
                assert all(got[k].tobytes() == w.tobytes() for k, w in sd.items())


def test_a_pack_without_its_header_is_never_taken_over(tmp_path):
    """A pack just created by another writer (no file header yet) is not reused: appending
    to it from offset 0 would race the creator, who would later write over those records."""
    from modelstore.packs import FILE_HEADER, PackReader, PackWriter, pack_path

    packs = tmp_path / "packs"
    packs.mkdir()
    pack_path(packs, 0).touch()  # another writer's pack, between create and header
    w = PackWriter(packs)
    loc = w.append(b"\x01" * 16, 0, 5, b"hello")
    w.finish()
    assert loc.pack != 0 and loc.offset == len(FILE_HEADER)
    assert pack_path(packs, 0).stat().st_size == 0
    r = PackReader(packs)
    assert bytes(r.read(b"\x01" * 16, loc, 5)[3]) == b"hello"
    r.close()


def test_pack_writers_reuse_their_threads(tmp_path, monkeypatch):
    """Sequential writers (one per commit) run on the same idle thread, not a new one each."""
    import threading

    from modelstore.packs import PackWriter

    ran_on = []  # the Thread objects (not idents: the OS reuses those) that ran each writer
    original = PackWriter._run

    def spy(self):
        ran_on.append(threading.current_thread())
        return original(self)

    monkeypatch.setattr(PackWriter, "_run", spy)
    packs = tmp_path / "packs"
    packs.mkdir()
    for i in range(5):
        w = PackWriter(packs)
        w.append(bytes([i + 1]) * 16, 0, 3, b"abc")
        w.finish()
    assert len(ran_on) == 5 and len(set(ran_on)) == 1
