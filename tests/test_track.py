"""modelstore.track: one version per epoch of a real training loop, parents chained, metrics per dataset."""

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from modelstore.errors import InvalidInputError
from modelstore.store import Store
from modelstore.track import split_metrics, track

torch = pytest.importorskip("torch")


def _tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.BatchNorm1d(16),
                               torch.nn.Linear(16, 2))


def test_training_loop_commits_one_version_per_epoch(tmp_path):
    Store.init(tmp_path / "s").close()
    net = _tiny_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
    states = []
    with track(tmp_path / "s", model="tiny", task="cls", lr=0.1) as run:
        for epoch in range(3):
            for _ in range(4):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(net(x), y)
                loss.backward()
                opt.step()
            acc = (net(x).argmax(1) == y).float().mean()  # a 0-d tensor, as loops produce
            info = run.commit(net.state_dict(), metrics={"train": {"loss": loss}, "toy-val": {"accuracy": acc}},
                              step=epoch, message=f"epoch {epoch}")
            states.append({k: v.detach().clone().numpy() for k, v in net.state_dict().items()})
            assert info.ref == f"tiny@{epoch + 1}"
    assert run.store is None  # closed the store it opened
    with Store.open(tmp_path / "s") as s:
        log = s.log("tiny")
        assert [v.number for v in log] == [1, 2, 3]
        assert log[0].parents == [] and log[1].parents == ["tiny@1"] and log[2].parents == ["tiny@2"]
        v3 = s.resolve("tiny@3")
        assert set(v3.metrics) == {"train", "toy-val"}
        assert v3.metrics["train"]["loss"] == pytest.approx(float(loss.detach()))
        assert v3.meta["step"] == 2 and v3.meta["task"] == "cls" and v3.meta["lr"] == 0.1
        for i, ref in enumerate(("tiny@1", "tiny@2", "tiny@3")):
            back = s.load(ref)
            assert set(back) == set(states[i])  # incl. BatchNorm buffers (num_batches_tracked)
            for k, v in states[i].items():
                np.testing.assert_array_equal(back[k], v)
        assert s.query("model = \"tiny\" and accuracy@toy-val >= 0")  # metrics are queryable


def test_bf16_numpy_path_and_explicit_parent(tmp_path, store):
    base = store.commit({"w": np.ones((4, 4), np.float32)}, model="base")
    sd = {"w": torch.randn(32, 16).to(torch.bfloat16), "b": torch.zeros(16, requires_grad=True)}
    with track(store, model="ft", parent=base.ref) as run:
        v1 = run.commit(sd, metrics=[("glue", "f1", 0.5)])
        ckpt = tmp_path / "c.npz"
        np.savez(ckpt, w=np.arange(6, dtype=np.float32))
        v2 = run.commit(str(ckpt))
        v3 = run.commit({"model_state_dict": {"w": torch.ones(3)}, "epoch": 3})  # a training checkpoint dict
    with pytest.raises(InvalidInputError, match="closed"):
        run.commit({"w": np.zeros(3, np.float32)})
    assert store.catalog is not None  # a store passed in stays open
    assert v1.parents == ["base@1"] and v2.parents == ["ft@1"] and v3.parents == ["ft@2"]
    assert list(store.load(v3.ref)) == ["w"]
    back = store.load(v1.ref)
    assert back["w"].dtype.name == "bfloat16"
    assert back["w"].view(np.uint16).tobytes() == sd["w"].view(torch.int16).numpy().tobytes()
    assert v1.metrics == {"glue": {"f1": 0.5}}


def test_unchanged_epoch_stores_nothing_new(store):
    sd = {"w": np.random.default_rng(0).standard_normal((512, 256), dtype=np.float32)}
    with track(store, model="m") as run:
        first = run.commit(sd)
        again = run.commit(sd)
    assert first.stored > 0 and again.stored == 0
    assert again.content_id == first.content_id


def test_bad_input_is_one_clear_error(store):
    with track(store, model="m") as run:
        with pytest.raises(InvalidInputError, match="state_dict"):
            run.commit([1, 2, 3])
        with pytest.raises(InvalidInputError):
            run.commit({"w": np.zeros(3, np.float32)}, metrics={"val": {"loss": float("nan")}})
        with pytest.raises(InvalidInputError, match="dataset"):
            run.commit({"w": np.zeros(3, np.float32)}, metrics={"val": 0.3})
    assert store.log() == []  # nothing half-committed
    with pytest.raises(InvalidInputError):
        track(store, model="bad name!")
    with pytest.raises(InvalidInputError):
        track(store, model="m", size=3)  # a built-in attribute


def test_split_metrics_rule():
    got = split_metrics({"val_loss": 0.5, "loss": 1.0, "eval_accuracy": np.float32(0.75), "imagenet-val/top1": 0.7,
                         "learning_rate": 1e-3, "nan": float("nan"), "note": "text", "epoch": 3,
                         "test-f1": torch.tensor(0.25)}, "train", skip=("epoch",))
    assert got == {"val": {"loss": 0.5}, "train": {"loss": 1.0, "learning_rate": 1e-3},
                   "eval": {"accuracy": 0.75}, "imagenet-val": {"top1": pytest.approx(0.7)}, "test": {"f1": 0.25}}


def test_modelstore_track_is_the_function():
    """`modelstore.track(...)` stays the function though modelstore/track.py is also a module."""
    import modelstore

    if "track" not in getattr(modelstore, "__all__", ()):
        pytest.skip("modelstore/__init__.py does not export track yet")
    code = ("import modelstore.track, modelstore.integrations._common, modelstore\n"
            "from modelstore.track import Tracker\n"
            "assert callable(modelstore.track) and modelstore.track.__module__ == 'modelstore.track', modelstore.track\n"
            "assert Tracker.__module__ == 'modelstore.track'\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       timeout=60, check=False)
    assert p.returncode == 0, p.stderr
