"""`modelstore import dir` and `modelstore import mlflow` through the real CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, assert_one_line_error, run_cli
from safetensors.numpy import save_file

from modelstore.errors import InvalidInputError, ModelstoreError, NotFoundError
from modelstore.importers.dir import import_dir, natural_key
from modelstore.importers.mlflow import import_mlflow
from modelstore.store import Store

torch = pytest.importorskip("torch")


class _Evil:
    """Unpickling this would create a file: proves the importers never unpickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


_RNG = np.random.default_rng(0)
_BASE = {"enc.weight": _RNG.standard_normal((64, 32), dtype=np.float32), "enc.bias": np.zeros(32, np.float32),
         "head.weight": _RNG.standard_normal((8, 32), dtype=np.float32)}


def _weights(i):
    """Epoch i of a toy run: every weight moved a little."""
    return {k: (v + np.float32(0.01 * i)).astype(np.float32) for k, v in _BASE.items()}


def _write(path, sd):
    if path.suffix == ".safetensors":
        save_file(sd, str(path))
    elif path.suffix == ".npz":
        np.savez(path, **sd)
    else:
        torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, path)


@pytest.fixture
def ckpt_dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    names = ["epoch10.safetensors", "epoch2.pt", "epoch1.safetensors", "epoch3.npz", "epoch20.pth"]
    by_epoch = {}
    for name in names:
        epoch = int(name[5:].split(".")[0])
        by_epoch[epoch] = _weights(epoch)
        _write(d / name, by_epoch[epoch])
    (d / "README.md").write_text("notes")
    (d / "trainer_state.json").write_text("{}")
    return d, by_epoch


def test_natural_order():
    names = ["epoch10.pt", "epoch2.pt", "Epoch1.pt", "checkpoint-1000", "checkpoint-500", "last.pt"]
    assert sorted(names, key=natural_key) == ["checkpoint-500", "checkpoint-1000", "Epoch1.pt", "epoch2.pt",
                                              "epoch10.pt", "last.pt"]


def test_import_dir_makes_one_version_per_file_with_lineage(tmp_path, ckpt_dir):
    d, by_epoch = ckpt_dir
    st = tmp_path / "s"
    run_cli("init", st, check=0)
    p = run_cli("import", "dir", d, "--model", "run1", "--meta", "task=cls", "--json", store=st, check=0)
    doc = json.loads(p.stdout)
    assert [v["meta"]["source"] for v in doc["versions"]] == [
        "epoch1.safetensors", "epoch2.pt", "epoch3.npz", "epoch10.safetensors", "epoch20.pth"]
    assert sorted(doc["ignored"]) == ["README.md", "trainer_state.json"] and doc["skipped"] == []
    assert 0 < doc["stored_bytes"] < doc["raw_bytes"] and doc["raw_bytes"] == 5 * (64 * 32 + 32 + 8 * 32) * 4
    with Store.open(st) as s:
        log = s.log("run1")
        assert [v.parents for v in log] == [[], ["run1@1"], ["run1@2"], ["run1@3"], ["run1@4"]]
        for v, epoch in zip(log, (1, 2, 3, 10, 20)):
            assert v.meta["task"] == "cls"
            back = s.load(v.ref)
            for k, arr in by_epoch[epoch].items():
                np.testing.assert_array_equal(back[k], arr)
    with Store.open(st) as s:  # the same folder into another model starts a new line
        again = import_dir(s, d, model="run2")
        assert again["versions"][0]["parents"] == [] and s.resolve("run2@5").parents == ["run2@4"]
        assert again["already_imported"] == 0 and len(s.log("run1")) == 5


def test_import_dir_rerun_imports_only_new_or_changed(tmp_path, ckpt_dir):
    d, _ = ckpt_dir
    hf = d / "checkpoint-7"
    hf.mkdir()
    save_file(_weights(7), str(hf / "model.safetensors"))
    st = tmp_path / "s"
    run_cli("init", st, check=0)
    first = json.loads(run_cli("import", "dir", d, "--model", "run1", "--json", store=st, check=0).stdout)
    assert len(first["versions"]) == 6 and first["already_imported"] == 0
    by_source = {v["meta"]["source"]: v for v in first["versions"]}

    again = json.loads(run_cli("import", "dir", d, "--model", "run1", "--json", store=st, check=0).stdout)
    assert again["versions"] == [] and again["already_imported"] == 6
    assert {a["path"]: (a["ref"], a["content_id"]) for a in again["already_imported_files"]} == {
        name: (v["ref"], v["content_id"]) for name, v in by_source.items()}
    p = run_cli("import", "dir", d, "--model", "run1", store=st, check=0)  # human summary says so
    assert p.stdout.strip() == "nothing new to import into run1: 6 checkpoints already imported"
    assert "checkpoint-7 (run1@1), epoch1.safetensors (run1@2)" in p.stderr

    # a new file, a rewritten file, and identical weights under a new name are imported
    _write(d / "epoch30.safetensors", _weights(30))
    _write(d / "epoch3.npz", _weights(33))
    (d / "last.safetensors").write_bytes((d / "epoch1.safetensors").read_bytes())
    doc = json.loads(run_cli("import", "dir", d, "--model", "run1", "--json", store=st, check=0).stdout)
    assert [v["meta"]["source"] for v in doc["versions"]] == ["epoch3.npz", "epoch30.safetensors", "last.safetensors"]
    assert doc["versions"][0]["parents"] == ["run1@6"] and doc["already_imported"] == 5
    assert doc["versions"][2]["content_id"] == by_source["epoch1.safetensors"]["content_id"]
    assert doc["versions"][0]["content_id"] != by_source["epoch3.npz"]["content_id"]
    # the human summary of a partial re-run
    _write(d / "epoch40.safetensors", _weights(40))
    p = run_cli("import", "dir", d, "--model", "run1", store=st, check=0)
    assert p.stdout.splitlines()[-1].startswith("imported 1 versions of run1") and "; 8 already imported" in p.stdout
    (d / "epoch40.safetensors").unlink()
    with Store.open(st) as s:
        assert len(s.log("run1")) == 10
        np.testing.assert_array_equal(s.load("run1@7")["enc.bias"], _weights(33)["enc.bias"])
        assert import_dir(s, d, model="run1")["versions"] == []  # and now it is all imported
        # the content id computed without storing is the one a commit gives
        from modelstore.importers.dir import content_id
        for name in ("epoch2.pt", "epoch20.pth", "checkpoint-7"):
            assert content_id(s, d / name) == by_source[name]["content_id"]


def test_import_dir_rerun_with_bad_file(tmp_path, ckpt_dir, store):
    d, _ = ckpt_dir
    assert len(import_dir(store, d, model="m")["versions"]) == 5
    (d / "epoch2.pt").write_bytes(b"not a torch file")  # damaged after import: not silently skipped
    with pytest.raises(ModelstoreError, match="epoch2.pt"):
        import_dir(store, d, model="m")
    doc = import_dir(store, d, model="m", skip_bad=True)
    assert doc["versions"] == [] and doc["already_imported"] == 4
    assert [k["path"] for k in doc["skipped"]] == ["epoch2.pt"]


def test_bad_file_imports_nothing_or_is_skipped(tmp_path, ckpt_dir):
    d, _ = ckpt_dir
    marker = tmp_path / "pwned"
    torch.save({"w": _Evil(str(marker))}, d / "epoch4.pt")  # a pickle that is not a state dict
    (d / "epoch5.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    st = tmp_path / "s"
    run_cli("init", st, check=0)
    p = run_cli("import", "dir", d, "--model", "m", store=st)
    assert_one_line_error(p, 1, contains="epoch4.pt")
    assert "nothing imported" in p.stderr
    assert not marker.exists()  # refused, never unpickled
    with Store.open(st) as s:
        assert s.log() == []
        doc = import_dir(s, d, model="m", skip_bad=True)
        assert len(doc["versions"]) == 5 and [k["path"] for k in doc["skipped"]] == ["epoch4.pt", "epoch5.safetensors"]
        assert "refusing to unpickle" in doc["skipped"][0]["error"]
        assert [v.parents for v in s.log("m")][1:] == [["m@1"], ["m@2"], ["m@3"], ["m@4"]]
    assert not marker.exists()


def test_failure_midway_rolls_back(tmp_path, ckpt_dir, store):
    d, _ = ckpt_dir

    def stop_at_fourth(name, i, n):
        if i == 3:
            raise InvalidInputError("disk full (simulated)")

    with pytest.raises(InvalidInputError, match="nothing imported"):
        import_dir(store, d, model="m", progress=stop_at_fourth)
    assert store.log() == []


def test_import_dir_errors(tmp_path, store):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_cli("import", "dir", empty, "--model", "m", store=store.root), 1,
                          contains="no readable checkpoint")
    with pytest.raises(NotFoundError, match="no such"):
        import_dir(store, tmp_path / "nope", model="m")
    with pytest.raises(InvalidInputError, match="model name"):
        import_dir(store, empty, model="bad name")


# -- mlflow ---------------------------------------------------------------------------------------
def _mlflow_store(tmp_path, marker):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("exp", artifact_location=(tmp_path / "artifacts").as_uri())
    client.create_registered_model("clf")
    client.create_registered_model("other")
    expected = []
    files = tmp_path / "files"
    files.mkdir()
    for i, kind in enumerate(["safetensors", "npz", "pickle", "safetensors"]):
        run = client.create_run(exp)
        rid = run.info.run_id
        client.log_param(rid, "lr", 0.1 / (i + 1))
        client.log_param(rid, "size", "large")  # a built-in attribute name
        client.log_metric(rid, "val_loss", 1.0, step=0)
        client.log_metric(rid, "val_loss", 0.5 / (i + 1), step=1)  # the latest value is imported
        client.log_metric(rid, "accuracy", 0.6 + 0.1 * i)
        client.log_metric(rid, "imagenet-val/top1", 0.5 + 0.1 * i)
        sd = _weights(i)
        if kind == "pickle":
            torch.save({"w": _Evil(str(marker))}, files / "model.pt")
            client.log_artifact(rid, str(files / "model.pt"), artifact_path="model")
            expected.append(None)
        else:
            f = files / f"weights{i}.{kind}"
            _write(f, sd)
            client.log_artifact(rid, str(f), artifact_path="model")
            (files / "MLmodel").write_text("flavors: {}")
            client.log_artifact(rid, str(files / "MLmodel"), artifact_path="model")
            expected.append(sd)
        client.set_terminated(rid)
        client.create_model_version("clf", source=f"{run.info.artifact_uri}/model", run_id=rid,
                                    description=f"attempt {i}")
    run = client.create_run(exp)
    save_file({"x": np.ones(4, np.float32)}, str(files / "o.safetensors"))
    client.log_artifact(run.info.run_id, str(files / "o.safetensors"), artifact_path="w")
    client.create_model_version("other", source=f"{run.info.artifact_uri}/w", run_id=run.info.run_id)
    return uri, expected


def test_import_mlflow(tmp_path):
    marker = tmp_path / "pwned"
    uri, expected = _mlflow_store(tmp_path, marker)
    st = tmp_path / "s"
    run_cli("init", st, check=0)
    p = run_cli("import", "mlflow", "--tracking-uri", uri, "--model", "clf", "--json", store=st, check=0)
    doc = json.loads(p.stdout)
    assert not marker.exists()
    assert [v["meta"]["mlflow.version"] for v in doc["versions"]] == [1, 2, 4]
    reasons = [s for s in doc["skipped"] if s["version"] == 3]
    assert any("refusing to unpickle" in s["reason"] for s in reasons), doc["skipped"]
    with Store.open(st) as s:
        log = s.log("clf")
        assert [v.parents for v in log] == [[], ["clf@1"], ["clf@2"]]
        v = log[2]
        assert v.meta["lr"] == pytest.approx(0.1 / 4) and v.meta["param.size"] == "large"
        assert v.meta["mlflow.run_id"] and v.message == "attempt 3"
        assert v.metrics == {"val": {"loss": pytest.approx(0.5 / 4)}, "mlflow": {"accuracy": pytest.approx(0.9)},
                             "imagenet-val": {"top1": pytest.approx(0.8)}}
        for info, sd in zip(log, [expected[0], expected[1], expected[3]]):
            back = s.load(info.ref)
            for k, arr in sd.items():
                np.testing.assert_array_equal(back[k], arr)
        assert s.query("lr < 0.04")[0].ref == "clf@3"
        # all models; the already imported versions are not imported twice
        doc = import_mlflow(s, uri)
        assert [v["ref"] for v in doc["versions"]] == ["other@1"] and doc["already_imported"] == 3
        with pytest.raises(NotFoundError, match="nope"):
            import_mlflow(s, uri, model="nope")


def test_import_mlflow_without_mlflow_names_the_extra(tmp_path):
    st = tmp_path / "s"
    Store.init(st).close()
    code = ("import sys\nsys.modules['mlflow'] = None\nsys.modules['mlflow.tracking'] = None\n"
            "from modelstore.cli import main\nsys.argv = ['modelstore', '--store', sys.argv[1], 'import', 'mlflow', "
            "'--tracking-uri', 'sqlite:///x.db']\nmain()\n")
    p = subprocess.run([sys.executable, "-c", code, str(st)], capture_output=True, text=True, timeout=120, check=False,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path)
    assert_one_line_error(p, 1, contains="modelstore[mlflow]")
