"""Stores written by earlier format versions stay readable (tests/data/store-v*)."""

import shutil
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"
sys.path.insert(0, str(DATA))

from make_golden import golden_tensors  # noqa: E402


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("store-v*")))
def test_golden_store_reads_bit_exact(tmp_path, name):
    from modelstore.store import Store

    copy = tmp_path / name
    shutil.copytree(DATA / name, copy)  # a reader may create lock files; keep the original pristine
    with Store.open(copy) as s:
        versions = s.log("golden")
        assert [v.number for v in versions] == [1, 2, 3]
        for step, v in enumerate(versions):
            assert v.message == f"step {step}" and v.author == "golden"
            got = s.load(v.ref)
            expected = golden_tensors(step)
            assert set(got) == set(expected)
            for k, arr in expected.items():
                assert got[k].dtype == arr.dtype and got[k].shape == arr.shape, k
                assert got[k].tobytes() == arr.tobytes(), (v.ref, k)
        assert s.fsck()["ok"]


def test_golden_store_exists():
    assert (DATA / "store-v1" / "config.json").exists()


def test_first_commit_into_an_older_store_records_the_extension(tmp_path):
    """A store written before xor-planes plane methods 4 and 5 gets the "xor-planes-2"
    extension in config.json with its first new commit (readers without it then refuse
    the store up front), keeps every other key, and stays readable."""
    import json

    from modelstore.store import Store

    copy = tmp_path / "old"
    shutil.copytree(DATA / "store-v1", copy)
    before = json.loads((copy / "config.json").read_text())
    assert before["extensions"] == {}
    with Store.open(copy) as s:
        s.load("golden@3")  # reading changes nothing
        assert json.loads((copy / "config.json").read_text()) == before
        s.commit(golden_tensors(3), model="golden")
    after = json.loads((copy / "config.json").read_text())
    assert after == {**before, "extensions": {"xor-planes-2": 1}}
    with Store.open(copy) as s:
        assert [v.number for v in s.log("golden")] == [1, 2, 3, 4] and s.fsck()["ok"]
