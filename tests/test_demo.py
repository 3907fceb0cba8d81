"""`modelstore demo`: the store it builds (real training, metrics, lineage, tags, comments) and the CLI tour."""

import numpy as np
import pytest

from conftest import assert_one_line_error, run_cli
from modelstore.demo import CLEAN, FINETUNE, NOISY, TRIALS, build, planned
from modelstore.demo_train import evaluate, load_digits
from modelstore.store import Store

EPOCHS = 8


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One demo store for the module (building takes a few seconds); yields (store, versions, said)."""
    said = []
    s = Store.init(tmp_path_factory.mktemp("demo") / "store")
    versions = build(s, say=said.append)
    yield s, versions, said
    s.close()


def by_model(versions):
    out = {}
    for v in versions:
        out.setdefault(v.model, []).append(v)
    return out


def test_families_models_and_one_version_per_epoch(demo):
    s, versions, _ = demo
    plan = planned(EPOCHS)
    assert dict(s.models()) == plan
    assert {t.family for t in TRIALS} == {"linear", "mlp", "cnn"}
    assert sum(t.family == "mlp" for t in TRIALS) >= 2  # trials of different widths/depths
    assert [v.ref for v in versions] == [f"{m}@{n}" for m, count in plan.items() for n in range(1, count + 1)]
    for model, vs in by_model(versions).items():
        assert [v.meta["epoch"] for v in vs] == list(range(1, plan[model] + 1))
        for v in vs:
            assert v.format == "safetensors" and v.dtype == "F32"
            assert v.meta["task"] == "image-classification" and v.meta["dataset"] == "digits"
            assert v.meta["framework"] == "numpy" and isinstance(v.meta["cpu_ghz"], float)
            assert isinstance(v.meta["lr"], float) and v.meta["optimizer"] in ("adam", "sgd")
            assert v.params > 0 and v.author in ("alice", "bob", "carol")
        # each epoch's parent is the previous epoch
        assert [v.parents for v in vs[1:]] == [[p.ref] for p in vs[:-1]]
    assert all(not v.parents for v in versions if v.model != FINETUNE.model and v.number == 1)


def test_metrics_on_both_datasets_are_measured_and_improve(demo):
    s, versions, _ = demo
    for v in versions:
        assert set(v.metrics) == {CLEAN, NOISY}
        for ds in (CLEAN, NOISY):
            assert set(v.metrics[ds]) == {"accuracy", "loss", "f1"}
            assert 0.0 <= v.metrics[ds]["accuracy"] <= 1.0 and v.metrics[ds]["loss"] > 0
    for t in TRIALS:  # real training: clearly better after the last epoch than after the first
        vs = by_model(versions)[t.model]
        first, last = vs[0].metrics[CLEAN], vs[-1].metrics[CLEAN]
        assert last["accuracy"] > first["accuracy"] + 0.05 and last["loss"] < first["loss"]
        assert last["accuracy"] > 0.85
        assert vs[-1].metrics[NOISY]["accuracy"] < last["accuracy"]  # the noisy set is harder
    # the recorded numbers are what the stored weights score on the held-out data
    data = load_digits(seed=0)
    for ref in ("digits-mlp-256x128@8", "digits-cnn-8x16@3", f"{FINETUNE.model}@2"):
        v = s.resolve(ref)
        trial = next(t for t in TRIALS if t.model in (v.model, FINETUNE.source if v.model == FINETUNE.model else None))
        params = s.load(ref)
        for ds, x in ((CLEAN, data.x_val), (NOISY, data.x_val_noisy)):
            got = evaluate(trial.arch(), params, x, data.y_val)
            assert got["accuracy"] == pytest.approx(v.metrics[ds]["accuracy"], abs=2e-6)
            assert got["loss"] == pytest.approx(v.metrics[ds]["loss"], rel=1e-3)


def test_finetune_is_another_model_with_lineage_and_shared_frozen_layers(demo):
    s, versions, _ = demo
    ft = by_model(versions)[FINETUNE.model]
    source = s.resolve(ft[0].parents[0])
    assert source.model == FINETUNE.source and ft[0].meta["finetuned_from"] == source.ref
    ancestors = {a["ref"] for a in s.lineage(ft[-1].ref)["ancestors"]}
    assert source.ref in ancestors and f"{FINETUNE.source}@1" in ancestors
    assert ft[-1].ref in {d["ref"] for d in s.lineage(source.ref)["descendants"]}
    a, b = s.load(source.ref), s.load(ft[-1].ref)
    assert np.array_equal(a["layers.0.weight"], b["layers.0.weight"])  # frozen: stored once
    assert not np.array_equal(a["head.weight"], b["head.weight"])
    assert all(v.stored < v.size / 2 for v in ft)  # dedup against the source's frozen layers
    best_ft = max(v.metrics[NOISY]["accuracy"] for v in ft)
    assert best_ft > source.metrics[NOISY]["accuracy"] + 0.03  # fine-tuning on noise helps on noise


def test_tags_and_comments(demo):
    s, _, _ = demo
    tags = {(t["model"], t["tag"]): t["ref"] for t in s.tags()}
    for model in planned(EPOCHS):
        assert (model, "best") in tags
    best = s.resolve("digits-mlp-256x128@best")
    assert best.metrics[CLEAN]["accuracy"] == max(v.metrics[CLEAN]["accuracy"] for v in s.log("digits-mlp-256x128"))
    prod = s.resolve(f"{FINETUNE.model}@production")
    assert tags[(FINETUNE.model, "production")] == prod.ref and "production" in prod.tags
    assert ("digits-logreg", "baseline") in tags
    commented = [v for v in s.log() if v.comments]
    assert len(commented) >= 2 and prod in commented
    assert any(f"{prod.metrics[NOISY]['accuracy']:.1%}" in c["text"] for c in prod.comments)


def test_queries_in_the_issue_style(demo):
    s, _, _ = demo
    hits = s.query('task = "image-classification" and accuracy > 0.8')
    assert hits and {v.model for v in hits} == set(planned(EPOCHS))
    small = s.query('task = "image-classification" and dataset = "digits" and accuracy > 90% '
                    'and cpu_ghz <= 1GHz order by accuracy desc limit 5')
    assert 0 < len(small) <= 5 and all(v.meta["cpu_ghz"] <= 1.0 for v in small)
    accs = [max(v.metrics[CLEAN]["accuracy"], v.metrics[NOISY]["accuracy"]) for v in small]
    assert accs == sorted(accs, reverse=True) and accs[-1] > 0.9
    robust = s.query(f'accuracy@{NOISY} > 0.65 and has(finetuned_from)')
    assert robust and {v.model for v in robust} == {FINETUNE.model}


def test_building_again_adds_nothing(demo):
    s, versions, _ = demo
    said = []
    again = build(s, say=said.append)
    assert [v.ref for v in again] == [v.ref for v in versions]
    assert len(s.log()) == len(versions)
    assert sum(len(v.comments) for v in s.log()) == 3
    assert "already built" in said[0]


def test_a_deleted_version_is_rebuilt_bit_identically(tmp_path):
    s = Store.init(tmp_path / "store")
    with s:
        build(s, say=lambda _: None, epochs=2)
        gone = s.delete("digits-cnn-8x16@2")
        n = len(s.log())
        build(s, say=lambda _: None, epochs=2)
        redo = s.log("digits-cnn-8x16")[-1]
        assert len(s.log()) == n + 1 and redo.meta["epoch"] == 2
        assert redo.content_id == gone.content_id  # seeded training replays exactly
        assert s.fsck()["ok"]


def test_cli_demo_builds_tours_and_points_to_serve(tmp_path):
    proc = run_cli("demo", cwd=tmp_path, env={"MODELSTORE_DIR": ""}, check=0)  # default: ./.modelstore
    out = proc.stdout
    for text in ("digits-mlp-robust", "bit-exact", "chunks re-hashed: ok", "cpu_ghz <= 1GHz",
                 "4 tensors identical", "run `modelstore serve`", "http://127.0.0.1:8000"):
        assert text in out, (text, out)
    store = tmp_path / ".modelstore"
    again = run_cli("demo", store=store, check=0)
    assert "already built" in again.stdout and "bit-exact" in again.stdout
    assert f"modelstore --store {store} serve" in again.stdout
    with Store.open(store) as s:
        assert len(s.log()) == sum(planned(EPOCHS).values())


def test_cli_demo_without_scikit_learn_is_one_clear_error(tmp_path):
    fake = tmp_path / "fake"
    (fake / "sklearn").mkdir(parents=True)
    (fake / "sklearn" / "__init__.py").write_text("raise ImportError('no scikit-learn here')\n")
    proc = run_cli("demo", store=tmp_path / "s", env={"PYTHONPATH": str(fake)})
    assert_one_line_error(proc, contains="pip install scikit-learn")
