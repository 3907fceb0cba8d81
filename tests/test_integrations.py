"""Framework callbacks: each commits one version per epoch in a short real training loop.

Lightning, transformers and Keras (KERAS_BACKEND=torch) are optional extras; each test is
skipped when its framework is not installed.
"""

import os
import subprocess
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported anywhere

import numpy as np
import pytest
from conftest import ROOT

torch = pytest.importorskip("torch")
EPOCHS = 3


def _check_line(store, model, n=EPOCHS):
    log = store.log(model)
    assert [v.number for v in log] == list(range(1, n + 1))
    assert [v.parents for v in log] == [[]] + [[f"{model}@{i}"] for i in range(1, n)]
    return log


def test_lightning_callback_commits_each_checkpoint(tmp_path, store):
    L = pytest.importorskip("lightning.pytorch")
    from modelstore.integrations.lightning import ModelstoreCallback

    class Net(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(8, 2)

        def training_step(self, batch, _):
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self.layer(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_loss", torch.nn.functional.cross_entropy(self.layer(x), y))
            self.log("val/acc", (self.layer(x).argmax(1) == y).float().mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.5)

    torch.manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randint(0, 2, (64,)))
    loader = torch.utils.data.DataLoader(ds, batch_size=16)
    cb = ModelstoreCallback(store, model="pl-net", run="test")
    trainer = L.Trainer(max_epochs=EPOCHS, callbacks=[cb], default_root_dir=tmp_path, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)
    net = Net()
    trainer.fit(net, loader, loader)
    log = _check_line(store, "pl-net")
    assert len(cb.versions) == EPOCHS
    last = log[-1]
    assert last.meta["epoch"] == EPOCHS - 1 and last.meta["step"] == EPOCHS * 4 and last.meta["run"] == "test"
    assert set(last.metrics) == {"train", "val"} and set(last.metrics["val"]) == {"loss", "acc"}
    assert last.metrics["val"]["loss"] == pytest.approx(float(trainer.callback_metrics["val_loss"]))
    back = store.load(last.ref)  # the weights at the last save are the trained ones
    np.testing.assert_array_equal(back["layer.weight"], net.layer.weight.detach().numpy())
    ckpt = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)
    assert any(s.get("last_ref") == last.ref for s in ckpt["callbacks"].values())  # resume continues the line
    # the .ckpt Lightning wrote imports (weights-only) to the very same content
    from modelstore.importers.dir import import_dir

    doc = import_dir(store, os.path.dirname(trainer.checkpoint_callback.best_model_path), model="pl-import")
    assert [v["content_id"] for v in doc["versions"]] == [last.content_id]


def test_huggingface_callback_commits_each_save(tmp_path, store):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from modelstore.integrations.huggingface import ModelstoreCallback

    cfg = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16, num_labels=2)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg)  # built here: no hub download
    rows = [{"input_ids": torch.randint(0, 64, (8,)), "labels": torch.tensor(i % 2)} for i in range(32)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), num_train_epochs=EPOCHS, per_device_train_batch_size=8,
        per_device_eval_batch_size=8, save_strategy="epoch", eval_strategy="epoch", logging_strategy="epoch",
        report_to=[], use_cpu=True, disable_tqdm=True, learning_rate=1e-3)
    cb = ModelstoreCallback(store, model="hf-bert")
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows[:16], callbacks=[cb])
    trainer.train()
    log = _check_line(store, "hf-bert")
    last = log[-1]
    assert last.meta["step"] == EPOCHS * 4 and last.meta["epoch"] == pytest.approx(EPOCHS)
    assert "loss" in last.metrics["eval"] and "loss" in last.metrics["train"]
    evals = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
    assert [v.metrics["eval"]["loss"] for v in log] == pytest.approx(evals)
    back = store.load(last.ref)
    sd = model.state_dict()
    assert set(back) == set(sd)
    np.testing.assert_array_equal(back["classifier.weight"], sd["classifier.weight"].numpy())
    # the Trainer's checkpoint-N folders import as the same versions, in step order
    from modelstore.importers.dir import import_dir

    doc = import_dir(store, tmp_path / "hf", model="hf-import")
    assert [v["meta"]["source"] for v in doc["versions"]] == ["checkpoint-4", "checkpoint-8", "checkpoint-12"]
    assert [v["content_id"] for v in doc["versions"]] == [v.content_id for v in log]


def test_keras_callback_commits_each_epoch(store):
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("keras was imported with another backend")
    from modelstore.integrations.keras_cb import ModelstoreCallback, keras_weights

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    x = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    cb = ModelstoreCallback(store, model="keras-mlp")
    hist = model.fit(x, y, epochs=EPOCHS, batch_size=16, validation_split=0.25, verbose=0, callbacks=[cb])
    log = _check_line(store, "keras-mlp")
    assert [v.metrics["val"]["loss"] for v in log] == pytest.approx(hist.history["val_loss"])
    assert [v.metrics["train"]["accuracy"] for v in log] == pytest.approx(hist.history["accuracy"])
    assert [v.meta["step"] for v in log] == [1, 2, 3]
    want = keras_weights(model)
    back = store.load(log[-1].ref)
    assert set(back) == set(want) and len(want) == 4
    for k, v in want.items():
        np.testing.assert_array_equal(back[k], np.asarray(v))


def _py(code):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          check=False)


def test_importing_modelstore_needs_no_framework():
    p = _py("import sys, modelstore, modelstore.integrations, modelstore.track\n"
            "print(sorted(m for m in ('lightning', 'pytorch_lightning', 'transformers', 'keras', 'mlflow') "
            "if m in sys.modules))")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


@pytest.mark.parametrize("mod,blocked,extra", [
    ("lightning", ("lightning", "pytorch_lightning"), "modelstore[lightning]"),
    ("huggingface", ("transformers",), "modelstore[huggingface]"),
    ("keras_cb", ("keras",), "modelstore[keras]"),
])
def test_missing_framework_names_the_extra(mod, blocked, extra):
    block = "".join(f"sys.modules[{b!r}] = None\n" for b in blocked)  # makes `import b` fail
    p = _py(f"import sys\n{block}from modelstore.integrations.{mod} import ModelstoreCallback\n"
            "try:\n    ModelstoreCallback(None, model='m')\n"
            "except ImportError as e:\n    print(type(e).__name__, e)\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("MissingExtraError") and extra in p.stdout, p.stdout
