"""Annotating versions after commit: metadata (typed, with history), metrics per dataset (with
history), tags, comments, lineage; bad input writes nothing; two processes lose nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from modelstore import annotate
from modelstore import query as Q
from modelstore.catalog import Catalog
from modelstore.errors import InvalidInputError, NotFoundError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cat(tmp_path):
    c = Catalog(tmp_path / "catalog.sqlite")
    yield c
    c.close()


def version(cat, model, meta=None, parents=None, metrics=None, n=[0]):
    n[0] += 1
    if parents is None:
        row = cat.db.execute("SELECT v.id FROM versions v JOIN models m ON m.id = v.model_id WHERE m.name = ? "
                             "ORDER BY v.number DESC LIMIT 1", (model,)).fetchone()
        parents = [row[0]] if row else []
    return cat.insert_version(model=model, content_id=f"{n[0]:032x}", message=f"v{n[0]}", author="alice", fmt="arrays",
                              size=100, stored=100, params=25, n_tensors=1, dtype="F32", parents=parents,
                              meta=meta or {}, tensors=[("w", "F32", "[25]", 100)], metrics=metrics)


def counts(cat) -> tuple:
    return cat.db.execute(
        "SELECT (SELECT count(*) FROM versions), (SELECT count(*) FROM attrs), (SELECT count(*) FROM attr_history), "
        "(SELECT count(*) FROM metrics), (SELECT count(*) FROM metric_history), (SELECT count(*) FROM tags), "
        "(SELECT count(*) FROM comments)").fetchone()


# -- metadata ---------------------------------------------------------------------------------
def test_set_meta_is_typed_keeps_history_and_the_content_id(cat):
    v = version(cat, "yolo-s", {"license": "mit", "cpu_ghz": "1.0"})
    after = annotate.set_meta(cat, "yolo-s@1", {"license": "apache-2.0", "quantized": "true", "released":
                                                "2026-01-02", "epochs": 10, "lr": 0.001}, author="bob")
    assert after.content_id == v.content_id and after.number == 1
    assert after.meta == {"cpu_ghz": 1.0, "epochs": 10, "license": "apache-2.0", "lr": 0.001, "quantized": True,
                          "released": "2026-01-02T00:00:00Z"}
    annotate.set_meta(cat, "yolo-s@1", {"license": "bsd"}, author="carol")
    hist = annotate.meta_history(cat, "yolo-s@1", "license")
    assert [(h["value"], h["author"]) for h in hist] == [("mit", "alice"), ("apache-2.0", "bob"), ("bsd", "carol")]
    assert hist[0]["replaced_by"] == "bob" and hist[-1]["replaced_at"] is None
    assert Q.query_ids(cat, 'license = "bsd" and quantized = true and released < 2026-01-03')[0] == [v.id]


def test_unset_meta(cat):
    version(cat, "m", {"a": "1", "b": "x"})
    info = annotate.unset_meta(cat, "m", ["a"], author="bob")
    assert info.meta == {"b": "x"}
    assert [h["value"] for h in annotate.meta_history(cat, "m", "a")] == [1]
    with pytest.raises(NotFoundError, match="no metadata key 'zzz'"):
        annotate.unset_meta(cat, "m", ["b", "zzz"])
    assert cat.resolve("m").meta == {"b": "x"}  # nothing removed


@pytest.mark.parametrize("values,match", [
    ({"size": "1"}, "built-in"), ({"1abc": "x"}, "invalid metadata key"), ({"a b": "x"}, "invalid metadata key"),
    ({"ok": "x" * 10_001}, "longer than"), ({"ok": "a\x00b"}, "NUL"), ({}, "no KEY"), ({"ok": float("nan")}, "finite"),
])
def test_bad_metadata_writes_nothing(cat, values, match):
    version(cat, "m", {"keep": "1"})
    before = counts(cat)
    with pytest.raises(InvalidInputError, match=match):
        annotate.set_meta(cat, "m@1", {"good": "1", **values} if values else {})
    assert counts(cat) == before


# -- metrics ----------------------------------------------------------------------------------
def test_metrics_per_dataset_with_history(cat):
    v = version(cat, "yolo-s", metrics=[("imagenet-val", "accuracy", "0.93")])
    assert v.metrics == {"imagenet-val": {"accuracy": 0.93}}
    annotate.add_metrics(cat, "yolo-s@1", "coco-val", ["mAP=0.41", "latency_ms=12.5"], author="bob")
    info = annotate.add_metrics(cat, "yolo-s@1", "coco-val", {"mAP": "43%"}, author="carol")  # re-evaluation
    assert info.metrics == {"coco-val": {"latency_ms": 12.5, "mAP": 0.43}, "imagenet-val": {"accuracy": 0.93}}
    hist = annotate.metric_history(cat, "yolo-s@1", "coco-val", "mAP")
    assert [(h["value"], h["author"], h["latest"]) for h in hist] == [(0.41, "bob", False), (0.43, "carol", True)]
    assert len(annotate.metric_history(cat, "yolo-s@1")) == 4
    # queries see the latest value only
    assert Q.query_ids(cat, "mAP@coco-val > 0.42")[0] == [v.id]
    assert Q.query_ids(cat, "mAP@coco-val < 0.42")[0] == []


@pytest.mark.parametrize("values,match", [
    (["mAP=high"], "not a number"), (["mAP=0.4", "x=nan"], "not a number"), (["mAP=inf"], "not a number"),
    (["mAP"], "NAME=VALUE"), (["1x=3"], "invalid metric name"), ([], "no NAME=VALUE"), ({"mAP": True}, "not a number"),
])
def test_a_bad_metric_writes_nothing(cat, values, match):
    version(cat, "m")
    annotate.add_metrics(cat, "m", "val", ["mAP=0.1"])
    before = counts(cat)
    with pytest.raises(InvalidInputError, match=match):
        annotate.add_metrics(cat, "m", "val", values)
    assert counts(cat) == before


def test_bad_dataset_and_commit_time_metrics(cat):
    with pytest.raises(InvalidInputError, match="invalid dataset"):
        annotate.add_metrics(cat, version(cat, "m").ref, "bad name", ["a=1"])
    before = counts(cat)
    with pytest.raises(InvalidInputError, match="not a number"):
        version(cat, "m", metrics=[("val", "acc", "0.5"), ("val", "mAP", "n/a")])
    assert counts(cat) == before  # no version row either


def test_parse_metric_option():
    assert annotate.parse_metric_option("imagenet-val:accuracy=0.93") == ("imagenet-val", "accuracy", 0.93)
    assert annotate.parse_metric_option("hf/glue.sst2:acc=93.5%") == ("hf/glue.sst2", "acc", 0.935)
    for bad in ["accuracy=0.9", "imagenet-val:accuracy", "imagenet-val:accuracy=x", ":a=1", "d:=1"]:
        with pytest.raises(InvalidInputError):
            annotate.parse_metric_option(bad)


# -- tags -------------------------------------------------------------------------------------
def test_tags_move_delete_and_resolve(cat):
    v1, v2 = version(cat, "yolo-s"), version(cat, "yolo-s")
    other = version(cat, "bert")
    assert annotate.tag(cat, "yolo-s@1", "production")["previous"] is None
    assert cat.resolve("yolo-s@production").id == v1.id
    moved = annotate.tag(cat, "yolo-s@2", "production")
    assert moved == {"tag": "production", "ref": "yolo-s@2", "model": "yolo-s", "previous": "yolo-s@1"}
    assert cat.resolve("yolo-s@production").id == v2.id
    annotate.tag(cat, "bert", "production")  # tags are per model
    assert cat.resolve("bert@production").id == other.id
    assert [t["ref"] for t in annotate.tags(cat)] == ["bert@1", "yolo-s@2"]
    assert cat.resolve("yolo-s@2").tags == ["production"]
    assert Q.query_ids(cat, 'tag = "production" and model = "yolo-s"')[0] == [v2.id]
    assert annotate.untag(cat, "yolo-s", "production") == {"tag": "production", "model": "yolo-s", "was": "yolo-s@2"}
    with pytest.raises(NotFoundError):
        cat.resolve("yolo-s@production")
    with pytest.raises(NotFoundError, match="has no tag"):
        annotate.untag(cat, "yolo-s@1", "production")
    assert cat.resolve("bert@production").id == other.id


@pytest.mark.parametrize("name", ["1st", "a b", "latest", "", "x" * 101, "a@b", "-x", "ünï"])
def test_bad_tag_names(cat, name):
    version(cat, "m")
    with pytest.raises(InvalidInputError):
        annotate.tag(cat, "m", name)
    assert counts(cat)[5] == 0


# -- comments ---------------------------------------------------------------------------------
def test_comments(cat):
    version(cat, "yolo-s")
    c = annotate.comment(cat, "yolo-s@1", "mAP dropped on small objects, see layer 12", author="bob")
    annotate.comment(cat, "yolo-s@1", "fixed in @2 ✓", author="carol")
    assert c["ref"] == "yolo-s@1" and c["author"] == "bob" and c["created"].endswith("Z")
    info = cat.resolve("yolo-s")
    assert [(x["author"], x["text"]) for x in info.comments] == [
        ("bob", "mAP dropped on small objects, see layer 12"), ("carol", "fixed in @2 ✓")]
    assert info.to_dict()["comments"][0]["text"].startswith("mAP dropped")
    for bad in ["", "   ", "x" * 10_001, "a\x00b"]:
        with pytest.raises(InvalidInputError):
            annotate.comment(cat, "yolo-s@1", bad)
    assert len(annotate.comments(cat, "yolo-s@1")) == 2


# -- lineage ----------------------------------------------------------------------------------
def test_lineage_ancestors_and_descendants_across_models(cat):
    a1 = version(cat, "base")
    a2 = version(cat, "base")  # parent: base@1
    f1 = version(cat, "ft", parents=[a2.id])  # fine-tuned from base@2
    f2 = version(cat, "ft")  # parent: ft@1
    m = version(cat, "merge", parents=[f2.id, a1.id])
    lin = annotate.lineage(cat, "ft@1")
    assert [(x["ref"], x["depth"]) for x in lin["ancestors"]] == [("base@2", 1), ("base@1", 2)]
    assert [(x["ref"], x["depth"]) for x in lin["descendants"]] == [("ft@2", 1), ("merge@1", 2)]
    lin = annotate.lineage(cat, "base@1", max_depth=1)
    assert [x["ref"] for x in lin["descendants"]] == ["base@2", "merge@1"]
    assert annotate.lineage(cat, "merge")["ancestors"][0]["ref"] == "base@1"  # breadth-first, by id
    assert {x["ref"] for x in annotate.lineage(cat, "merge")["ancestors"]} == {"ft@2", "ft@1", "base@2", "base@1"}
    assert f1.parents == ["base@2"] and cat.resolve("merge").parents == ["base@1", "ft@2"]
    # a cycle (impossible through the API) cannot make the walk loop
    cat.db.execute("INSERT INTO lineage(child, parent) VALUES(?, ?)", (a1.id, m.id))
    lin = annotate.lineage(cat, "ft@1")
    everyone_else = {"base@1", "base@2", "ft@2", "merge@1"}
    assert {x["ref"] for x in lin["ancestors"]} == everyone_else == {x["ref"] for x in lin["descendants"]}


# -- unknown refs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("call", [
    lambda c: annotate.set_meta(c, "nope@1", {"a": "1"}),
    lambda c: annotate.add_metrics(c, "m@7", "val", ["a=1"]),
    lambda c: annotate.tag(c, "m@nosuchtag", "prod"),
    lambda c: annotate.comment(c, "deadbeefdeadbeef", "hi"),
    lambda c: annotate.lineage(c, "nope"),
    lambda c: annotate.untag(c, "nope", "prod"),
])
def test_unknown_refs_are_one_clear_error_and_write_nothing(cat, call):
    version(cat, "m")
    before = counts(cat)
    with pytest.raises(NotFoundError) as exc:
        call(cat)
    assert "\n" not in str(exc.value) and str(exc.value)
    assert counts(cat) == before


# -- concurrency --------------------------------------------------------------------------------------
WORKER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from modelstore import annotate
    from modelstore.catalog import Catalog
    path, k, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    cat = Catalog(path)
    for i in range(n):
        annotate.add_metrics(cat, "m@1", f"val-{k}", {f"acc{i}": i / n, "shared": i}, author=k)
        annotate.tag(cat, "m@1" if i % 2 else "m@2", f"t{k}{i}", author=k)
        annotate.comment(cat, "m@2", f"{k} {i}", author=k)
        annotate.set_meta(cat, "m@2", {f"key_{k}": i}, author=k)
    cat.close()
""")


def test_two_processes_annotating_at_once_lose_nothing(tmp_path):
    path = tmp_path / "catalog.sqlite"
    cat = Catalog(path)
    version(cat, "m")
    version(cat, "m")
    n = 200
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(path), k, str(n)], env=env, stderr=subprocess.PIPE)
             for k in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()
    v1, v2 = cat.resolve("m@1"), cat.resolve("m@2")
    assert sorted(v1.metrics) == ["val-a", "val-b"]
    assert all(len(v1.metrics[d]) == n + 1 for d in v1.metrics)  # acc0..acc199 + shared
    assert all(v1.metrics[d]["shared"] == n - 1 for d in v1.metrics)
    assert len(annotate.metric_history(cat, "m@1")) == 2 * (n + 1) + 2 * (n - 1)  # every value ever recorded
    assert len(annotate.tags(cat, "m")) == 2 * n
    assert len(v2.comments) == 2 * n
    assert {c["text"] for c in v2.comments} == {f"{k} {i}" for k in "ab" for i in range(n)}
    assert v2.meta == {"key_a": n - 1, "key_b": n - 1}
    assert len(annotate.meta_history(cat, "m@2")) == 2 * n
    cat.close()


# -- end to end through the Store ------------------------------------------------------------------
def test_through_the_store_weights_untouched(tmp_path):
    from modelstore.store import Store

    with Store.init(tmp_path / "s") as s:
        w = {"w": np.arange(8, dtype=np.float32)}
        v = s.commit(w, model="yolo-s", meta={"task": "object-detection", "dataset": "imagenet", "cpu_ghz": "1.0"})
        annotate.add_metrics(s.catalog, v.ref, "imagenet-val", {"accuracy": "0.93"})
        annotate.set_meta(s.catalog, v.ref, {"license": "apache-2.0"})
        annotate.tag(s.catalog, v.ref, "production")
        annotate.comment(s.catalog, "yolo-s@production", "looks good")
        got = Q.run(s.catalog, 'task = "object-detection" and dataset = "imagenet" and accuracy > 90% and '
                               'size < 100MB and cpu_ghz <= 1 order by accuracy desc limit 10').versions
        assert [x.ref for x in got] == ["yolo-s@1"] and got[0].content_id == v.content_id
        assert got[0].meta["cpu_ghz"] == 1.0 and got[0].tags == ["production"] and got[0].comments[0]["text"] == \
            "looks good"
        np.testing.assert_array_equal(s.load("yolo-s@production")["w"], w["w"])
