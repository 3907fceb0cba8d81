"""The query language: parsing and its errors, units and typing, the dataset rule, hostile input,
and the property that the SQL path (under every plan) and the pure-Python evaluator agree."""

from __future__ import annotations

import re
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelstore import annotate
from modelstore import query as Q
from modelstore.catalog import Catalog
from modelstore.errors import InvalidInputError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ('task = "object-detection" and dataset = "imagenet" and accuracy > 90%\n'
           '                  and size < 100MB and cpu_ghz <= 1 order by accuracy desc limit 10')

TUNINGS = [
    Q.Tuning(),
    Q.Tuning(force="scan"),
    Q.Tuning(small=0, budget=1),  # stream with a tiny budget, then the fallbacks
    Q.Tuning(small=0, big=0),  # intersect / saturated driver
    Q.Tuning(small=1, big=2, budget=2),
    Q.Tuning(small=0, budget=10_000, hints=False),  # stream that succeeds, no index hints
]


def ids_sql(cat, q, tuning=None):
    return Q.query_ids(cat, q, tuning=tuning)[0]


def ids_py(cat, q):
    return Q.evaluate(q, Q.load_rows(cat))


def refs(cat, ids):
    return [v.ref for v in cat.versions_by_ids(ids)]


@pytest.fixture
def cat(tmp_path):
    c = Catalog(tmp_path / "catalog.sqlite")
    yield c
    c.close()


_seq = iter(range(1, 10**9))


def commit(cat, model, meta=None, parent=None, seed=0):
    """A version's catalog rows as a commit writes them (parent: the model's latest, or `parent`)."""
    if parent is not None:
        parents = [cat.resolve(parent).id]
    else:
        row = cat.db.execute("SELECT v.id FROM versions v JOIN models m ON m.id = v.model_id WHERE m.name = ? "
                             "ORDER BY v.number DESC LIMIT 1", (model,)).fetchone()
        parents = [row[0]] if row else []
    return cat.insert_version(model=model, content_id=f"{seed:08x}{next(_seq):024x}", message="", author="tester",
                              fmt="arrays", size=16, stored=16, params=4, n_tensors=1, dtype="F32", parents=parents,
                              meta=meta or {}, tensors=[("w", "F32", "[4]", 16)])


# -- the user's example, word for word ------------------------------------------------------------
def test_users_example(cat):
    a = commit(cat, "yolo-s", {"task": "object-detection", "dataset": "imagenet", "cpu_ghz": "1.0"}, seed=1)
    annotate.add_metrics(cat, a.ref, "imagenet-val", {"accuracy": "0.93"})
    b = commit(cat, "yolo-s", {"task": "object-detection", "dataset": "imagenet", "cpu_ghz": "1.0"}, seed=2)
    annotate.add_metrics(cat, b.ref, "imagenet-val", {"accuracy": "0.95"})
    c = commit(cat, "yolo-s", {"task": "object-detection", "dataset": "imagenet", "cpu_ghz": "2.4"}, seed=3)
    annotate.add_metrics(cat, c.ref, "imagenet-val", {"accuracy": "0.99"})  # needs a faster CPU
    d = commit(cat, "yolo-s", {"task": "object-detection", "dataset": "imagenet", "cpu_ghz": "1"}, seed=4)
    annotate.add_metrics(cat, d.ref, "imagenet-val", {"accuracy": "0.85"})  # not accurate enough
    e = commit(cat, "det-coco", {"task": "object-detection", "dataset": "coco", "cpu_ghz": "1"}, seed=5)
    annotate.add_metrics(cat, e.ref, "imagenet-val", {"accuracy": "0.97"})  # trained on coco
    f = commit(cat, "cls", {"task": "classification", "dataset": "imagenet", "cpu_ghz": "0.8"}, seed=6)
    annotate.add_metrics(cat, f.ref, "imagenet-val", {"accuracy": "0.96"})
    res = Q.run(cat, EXAMPLE)
    assert [v.ref for v in res.versions] == ["yolo-s@2", "yolo-s@1"]
    assert res.columns == ("task", "dataset", "accuracy", "size", "cpu_ghz")
    headers, rows = Q.table(res)
    assert headers == ["ref", "content id", "task", "dataset", "accuracy", "size", "cpu_ghz"]
    assert rows[0][0] == "yolo-s@2" and rows[0][4] == "0.95" and rows[0][6] == "1"
    doc = res.versions[0].to_query_json()
    assert set(doc) == {"ref", "model", "version", "content_id", "attributes", "metrics"}
    assert doc["metrics"] == {"imagenet-val": {"accuracy": 0.95}}
    assert doc["attributes"]["cpu_ghz"] == 1.0 and isinstance(doc["attributes"]["cpu_ghz"], float)
    assert doc["attributes"]["size"] == 16 and doc["attributes"]["parent"] == ["yolo-s@1"]
    for t in TUNINGS:
        assert ids_sql(cat, EXAMPLE, t) == [b.id, a.id]
    assert ids_py(cat, EXAMPLE) == [b.id, a.id]


def test_dataset_rule_restricts_bare_metrics_to_the_dataset_family(cat):
    v = commit(cat, "m", {"dataset": "imagenet"}, seed=1)
    annotate.add_metrics(cat, v.ref, "coco-val", {"accuracy": 0.99})
    annotate.add_metrics(cat, v.ref, "imagenet-val", {"accuracy": 0.5})
    w = commit(cat, "m", {"dataset": "imagenet"}, seed=2)
    annotate.add_metrics(cat, w.ref, "imagenet_1k", {"accuracy": 0.95})
    x = commit(cat, "m", {"dataset": "imagenet"}, seed=3)
    annotate.add_metrics(cat, x.ref, "imagenetv2", {"accuracy": 0.95})  # not the family: no separator
    y = commit(cat, "m", {"dataset": "imagenet"}, seed=4)
    annotate.add_metrics(cat, y.ref, "imagenet/v2", {"accuracy": 0.91})
    for t in TUNINGS:
        # without a dataset term, a bare metric means "on any dataset"
        assert ids_sql(cat, "accuracy > 0.9", t) == [v.id, w.id, x.id, y.id]
        # with `dataset = "imagenet"`: datasets named imagenet or imagenet-*, imagenet_*, imagenet.*, imagenet/*
        assert ids_sql(cat, 'dataset = "imagenet" and accuracy > 0.9', t) == [w.id, y.id]
        assert ids_sql(cat, 'dataset in ["imagenet", "x"] and accuracy > 0.9', t) == [w.id, y.id]
        # under `or`/`not` a dataset term does not restrict
        assert ids_sql(cat, '(dataset = "imagenet" or dataset = "z") and accuracy > 0.9', t) == [v.id, w.id, x.id, y.id]
        # metric@dataset is always exact
        assert ids_sql(cat, 'dataset = "imagenet" and accuracy@coco-val > 0.9', t) == [v.id]
        # ordering by a bare metric uses the best value in the family (max for desc, min for asc)
        assert ids_sql(cat, 'dataset = "imagenet" order by accuracy desc', t) == [w.id, y.id, v.id, x.id]
        assert ids_sql(cat, 'order by accuracy desc', t) == [v.id, x.id, w.id, y.id]
        assert ids_sql(cat, 'order by accuracy asc limit 1', t) == [v.id]


def test_latest_metric_wins_and_attributes_are_typed(cat):
    v = commit(cat, "m", {"quantized": "true", "released": "2026-01-02T00:00:00Z", "lr": "3e-5", "name": "x1",
                            "epochs": "10"})
    annotate.add_metrics(cat, v.ref, "val", {"acc": 0.5})
    annotate.add_metrics(cat, v.ref, "val", {"acc": 0.7})
    assert ids_sql(cat, "acc > 0.6") == [v.id] and ids_sql(cat, "acc < 0.6") == []
    assert ids_sql(cat, "quantized = true") == [v.id] and ids_sql(cat, 'quantized = "true"') == []
    assert ids_sql(cat, "released >= 2026-01-02 and released < 2026-01-02T00:00:01Z") == [v.id]
    assert ids_sql(cat, "lr < 1e-4 and epochs = 10 and epochs > 9.5") == [v.id]
    assert ids_sql(cat, 'name = "x1" and name ~ "x?"') == [v.id]
    info = cat.version_by_id(v.id)
    assert info.meta == {"quantized": True, "released": "2026-01-02T00:00:00Z", "lr": 3e-5, "name": "x1", "epochs": 10}


@pytest.mark.parametrize("literal,value", [
    ("90%", 0.9), ("93%", 0.93), ("100MB", 100e6), ("1.5GiB", 1.5 * 2**30), ("7B", 7e9), ("350M", 350e6),
    ("3K", 3000.0), ("1GHz", 1.0), ("1000MHz", 1.0), ("20ms", 20.0), ("0.02s", 20.0), ("10KiB", 10240.0),
    ("-1", -1.0), ("1e3", 1000.0), (".5", 0.5),
])
def test_units(literal, value):
    lit = Q.parse(f"x = {literal}").where.lit
    assert lit.type == "num" and lit.value == value


def test_units_apply_in_queries(cat):
    v = commit(cat, "m", {"cpu_ghz": "1.0", "latency_ms": "12.5"})
    annotate.add_metrics(cat, v.ref, "val", {"accuracy": "93%"})
    assert ids_sql(cat, "cpu_ghz <= 1GHz and cpu_ghz >= 1000MHz and latency_ms < 0.0125s") == []
    assert ids_sql(cat, "cpu_ghz <= 1GHz and cpu_ghz >= 1000MHz and latency_ms <= 0.0125s") == [v.id]
    assert ids_sql(cat, "accuracy = 93% and accuracy@val = 0.93 and size < 1KB and params = 4") == [v.id]


# -- errors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,column,fragment", [
    ("task = object-detection", 8, "double quotes"),
    ("accuracy > 90% and and size < 1", 20, "unexpected 'and'"),
    ("size < 100XB", 8, "unknown unit 'XB'"),
    ("size < 100 MB", 12, "unexpected"),
    ("size = \"big\"", 8, "size is a number"),
    ("x = 1 order accuracy", 13, "unexpected"),
    ("(x = 1", 7, "end of query"),
    ("x in [1, 2", 11, "end of query"),
    ("x = 1 limit -3", 13, "unexpected"),
    ("x ~ 5", 5, "quoted pattern"),
    ("x = 2026-02-30", 5, "not a valid date"),
    ("x = \"a\\qb\"", 7, "unknown escape"),
    ("x = 1; DROP TABLE versions", 6, "unexpected character ';'"),
    ("order by parent", 10, "cannot order by parent"),
    ("accuracy@val = \"high\"", 16, "metric values are numbers"),
])
def test_syntax_errors_point_at_the_column(text, column, fragment):
    with pytest.raises(InvalidInputError) as exc:
        Q.parse(text)
    msg = str(exc.value)
    assert msg.startswith(f"query error at column {column}:"), msg
    assert fragment in msg, msg
    assert "\n" not in msg


def test_multiline_errors_name_the_line():
    with pytest.raises(InvalidInputError, match=r"^query error at line 2, column 5: unexpected 'or'"):
        Q.parse('x = 1\nand or y = 2')


def test_deep_nesting_and_long_queries_are_refused_cleanly(cat):
    commit(cat, "m", {"x": "1"})
    with pytest.raises(InvalidInputError, match="nests too deeply"):
        Q.parse("not " * 200 + "x = 1")
    with pytest.raises(InvalidInputError, match="characters long"):
        Q.parse("x = 1 and " * 3000 + "x = 1")
    deep = "(" * 10 + "x = 1" + ")" * 10
    assert ids_sql(cat, deep) == [1]
    parens = "(" * 5000 + "x = 1" + ")" * 5000  # 10 kB of parentheses: no recursion anywhere
    assert ids_sql(cat, parens) == [1]
    # ~10 kB: a long flat chain runs (balanced SQL) or is refused with a clear error, never crashes
    long_q = " and ".join(f"x != {i}" for i in range(2, 900))
    assert len(long_q) > 9000
    assert ids_sql(cat, long_q) == [1] == ids_py(cat, long_q)
    long_or = " or ".join(f'x = "{i}"' for i in range(900)) + " or x = 1"
    assert ids_sql(cat, long_or) == [1]


@pytest.mark.parametrize("text", [
    "x = \"'; DROP TABLE versions; --\"",
    "x = '\" OR 1=1 --'",
    "`x; DELETE FROM attrs` = 1",
    "x ~ \"*' OR '1'='1\"",
    "x = \"ünïcødé ✓ 😀\"",
    "x in [\"select\", \"from\", \"where\", \"union\"]",
    "has(`); DROP TABLE metrics; --`)",
    "x@a/b-c.d = 1 order by `select` desc",
])
def test_hostile_strings_are_only_ever_values(cat, text):
    v = commit(cat, "m", {"x": "ünïcødé ✓ 😀"})
    annotate.add_metrics(cat, v.ref, "val", {"acc": 1})
    before = cat.db.execute("SELECT (SELECT count(*) FROM versions), (SELECT count(*) FROM attrs), "
                            "(SELECT count(*) FROM metrics)").fetchone()
    for t in TUNINGS:
        assert ids_sql(cat, text, t) == ids_py(cat, text)
    after = cat.db.execute("SELECT (SELECT count(*) FROM versions), (SELECT count(*) FROM attrs), "
                           "(SELECT count(*) FROM metrics)").fetchone()
    assert before == after


def test_user_text_never_reaches_the_sql_text(cat):
    commit(cat, "m", {"x": "1"})
    marker = "zq_marker_7731"
    for text in [f'x = "{marker}"', f'`{marker}` = 1', f'model ~ "{marker}*"', f"accuracy@{marker} > 1",
                 f'dataset = "{marker}" and accuracy > 1 order by `{marker}` desc limit 3']:
        for t in TUNINGS:
            plan = Q.explain(cat, text, tuning=t)
            assert marker not in plan["sql"], (text, plan)


@settings(max_examples=300, deadline=None)
@given(pattern=st.text("ab*?[]^-", max_size=8), text=st.text("ab[]^-", max_size=8))
def test_python_glob_is_sqlite_glob(pattern, text):
    db = sqlite3.connect(":memory:")
    assert Q.glob_match(pattern, text) == bool(db.execute("SELECT ? GLOB ?", (text, Q.sql_glob(pattern))).fetchone()[0])


def test_hostile_glob_patterns_stay_fast(cat):
    commit(cat, "m", {"p": "a" * 10_000})
    q = 'p ~ "' + "*a" * 40 + '*b"'
    t = time.perf_counter()
    assert ids_sql(cat, q) == [] == ids_py(cat, q)
    assert time.perf_counter() - t < 5


def test_a_query_inside_an_open_transaction(cat):
    v = commit(cat, "m", {"x": "1"})
    with cat.transaction():
        assert [i.id for i in Q.run(cat, "x = 1").versions] == [v.id]


def test_glob_only_star_and_question_mark_are_wildcards(cat):
    a = commit(cat, "m", {"p": "[x]y"}, seed=1)
    b = commit(cat, "m", {"p": "xy"}, seed=2)
    c = commit(cat, "m", {"p": "a*b"}, seed=3)
    for t in TUNINGS:
        assert ids_sql(cat, 'p ~ "[x]*"', t) == [a.id]
        assert ids_sql(cat, 'p ~ "?y"', t) == [b.id]
        assert ids_sql(cat, 'p ~ "*"', t) == [a.id, b.id, c.id]
        assert ids_sql(cat, 'p ~ "a*"', t) == [c.id]


def test_builtins(cat):
    a = commit(cat, "yolo-s", seed=1)
    b = commit(cat, "yolo-s", seed=2)
    c = commit(cat, "bert", parent=a.ref, seed=3)
    annotate.tag(cat, b.ref, "production")
    for t in TUNINGS:
        assert ids_sql(cat, 'model = "yolo-s" and version = 2', t) == [b.id]
        assert ids_sql(cat, 'parent = "yolo-s@1"', t) == [b.id, c.id]
        assert ids_sql(cat, 'tag = "production"', t) == [b.id]
        assert ids_sql(cat, "has(parent) and not has(tag)", t) == [c.id]
        assert ids_sql(cat, 'dtype = "F32" and tensors = 1 and format = "arrays" and size = 16', t) == [a.id, b.id, c.id]
        assert ids_sql(cat, 'created > 2000-01-01 and created <= "2999-01-01" order by created desc limit 2', t) \
            == [c.id, b.id]
        assert ids_sql(cat, "order by model desc limit 1", t) == [b.id]
        assert ids_sql(cat, f'content_id ~ "{a.content_id[:10]}*"', t) == [a.id]


def test_created_compares_as_time(cat):
    a = cat.register_many([{"model": "m", "content_id": "a" * 32, "created": "2026-01-01T00:00:00Z"},
                           {"model": "m", "content_id": "b" * 32, "created": "2026-01-01T00:00:01+00:00"},
                           {"model": "m", "content_id": "c" * 32, "created": "2026-01-01T02:00:02.9+02:00"}])
    assert a == 3
    assert [v.created for v in cat.log("m")] == ["2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z", "2026-01-01T00:00:02Z"]
    cases = {
        "created > 2026-01-01T00:00:00.5Z": [2, 3], "created > 2026-01-01T00:00:00.7Z": [2, 3], "created >= 2026-01-01T00:00:00.5Z": [2, 3],
        "created < 2026-01-01T00:00:00.5Z": [1], "created <= 2026-01-01T00:00:01Z": [1, 2],
        "created = 2026-01-01T00:00:00.5Z": [], "created != 2026-01-01T00:00:00.5Z": [1, 2, 3],
        "created = 2026-01-01T01:00:01+01:00": [2], 'created < "2026-01-01T00:00:02Z"': [1, 2],
        "created > 2026-01-01": [2, 3], "order by created desc limit 2": [3, 2],
    }
    for text, want in cases.items():
        for t in TUNINGS:
            assert ids_sql(cat, text, t) == want, (text, t)
        assert ids_py(cat, text) == want, text


def test_order_groups_numbers_before_strings_before_missing(cat):
    a = commit(cat, "m", {"k": "b"}, seed=1)
    b = commit(cat, "m", {"k": "2"}, seed=2)
    c = commit(cat, "m", {}, seed=3)
    d = commit(cat, "m", {"k": "a"}, seed=4)
    e = commit(cat, "m", {"k": "10"}, seed=5)
    for t in TUNINGS:
        assert ids_sql(cat, "order by k", t) == [b.id, e.id, d.id, a.id, c.id]
        assert ids_sql(cat, "order by k desc", t) == [e.id, b.id, a.id, d.id, c.id]
        assert ids_sql(cat, "order by k desc limit 2", t) == [e.id, b.id]


# -- the planner at a scale where plans matter ------------------------------------------------------------
def _bulk(cat, n, seed=0):
    rng = np.random.default_rng(seed)
    tasks = ["object-detection", "classification", "segmentation", "asr"]
    dsets = ["imagenet", "coco", "voc", "librispeech"]

    def records():
        for i in range(n):
            ds = dsets[rng.integers(len(dsets))]
            yield {"model": f"m{i % 50}", "content_id": f"{i:032x}", "size": int(rng.integers(1, 300)) * 10**6,
                   "params": int(rng.integers(1, 100)) * 10**6,
                   "meta": {"task": tasks[rng.integers(len(tasks))], "dataset": ds,
                            "cpu_ghz": float(rng.choice([0.5, 1.0, 2.0, 3.0]))},
                   "metrics": [(f"{ds}-val", "accuracy", float(np.round(rng.random(), 4))),
                               ("coco-val", "mAP", float(np.round(rng.random(), 4)))]}
    cat.register_many(records(), batch=2000)


def test_plans_on_a_larger_catalog_agree_with_the_evaluator(tmp_path):
    cat = Catalog(tmp_path / "c.sqlite")
    _bulk(cat, 6000)
    rows = Q.load_rows(cat)
    queries = [EXAMPLE, 'task = "asr" and dataset = "librispeech" and cpu_ghz <= 1',
               "mAP@coco-val > 0.99 order by mAP@coco-val desc limit 5", 'model = "m7" order by accuracy desc limit 3',
               "size < 50MB and params > 90M", "order by size desc limit 7", "limit 5", 'not task = "asr" limit 4',
               'dataset = "coco" and accuracy > 0.5 order by params limit 20']
    for text in queries:
        want = Q.evaluate(text, rows)
        for t in TUNINGS:
            got, plan = Q.query_ids(cat, text, tuning=t)
            assert got == want, (text, t, plan)
    assert Q.explain(cat, EXAMPLE.replace("limit 10", "limit 2"), tuning=Q.Tuning(small=50))["plan"].startswith("stream")
    assert Q.explain(cat, 'model = "m7" and task = "asr"')["plan"].startswith("driver")
    assert Q.explain(cat, 'task = "asr" and dataset = "librispeech"', tuning=Q.Tuning(small=10, big=10))["plan"] \
        .startswith("intersect")
    cat.close()


def test_probe_and_driver_sql_use_the_intended_indexes(tmp_path):
    cat = Catalog(tmp_path / "c.sqlite")
    _bulk(cat, 500)
    cat.db.execute("ANALYZE")  # even with statistics that might tempt SQLite's planner elsewhere

    def detail(sql, params):
        return " | ".join(r[3] for r in cat.db.execute("EXPLAIN QUERY PLAN " + sql, params))

    # the stream walks an index in order: no sort, no table scan
    c = Q.Compiler(cat, Q.parse(EXAMPLE))
    s = c.stream()
    d = detail(s.text, s.params)
    assert "COVERING INDEX metrics_nv" in d and "TEMP B-TREE" not in d and "SCAN" not in d, d
    # a driver plan: the driver through its index, every other term a primary-key probe
    plan = Q.explain(cat, EXAMPLE, tuning=Q.Tuning(small=10**9))
    d = detail(plan["sql"], plan["params"])
    assert plan["plan"].startswith("driver")
    assert "SCAN attrs" not in d and "SCAN metrics" not in d and "SCAN v " not in d, d
    assert re.search(r"SEARCH (a|mt) USING PRIMARY KEY", d), d
    # equality runs are merged, not sorted
    inter = Q.explain(cat, 'task = "asr" and dataset = "voc"', tuning=Q.Tuning(small=0, big=0))
    d = detail(inter["sql"], inter["params"])
    assert inter["plan"].startswith("intersect") and "MERGE (INTERSECT)" in d and "INTERSECT USING TEMP" not in d, d
    cat.close()


# -- the property: SQL and the pure-Python evaluator agree -------------------------------------------------
KEYS_BARE = ["task", "dataset", "cpu_ghz", "x", "flag", "when", "accuracy", "mAP", "missing", "`task`", "`order`"]
KEYS_METRIC = ["accuracy@imagenet-val", "mAP@coco-val", "accuracy@imagenet", "x@coco"]
KEYS_NUM = ["size", "params", "version", "stored", "tensors"]
KEYS_STR = ["model", "dtype", "parent", "tag", "author"]
STRS = ['"imagenet"', '"coco"', '"object-detection"', '"a*b"', '"[x]"', '""', '"é"', '"imagenet-val"', "'a'",
        '"yolo-s@1"', '"a@1"', '"prod"', '"b@2"', '"Z"']
NUMS = ["0", "1", "0.5", "90%", "93%", "1GHz", "1000MHz", "100MB", "5", "-1", "12.5", "1e2", "1K", "2"]
TIMES = ["2026-01-01", "2026-01-02T00:00:00Z", "2025-06-01T12:30:00+02:00", "2026-01-01T00:00:00.5Z",
         '"2026-01-02"']
BOOLS = ["true", "false", "TRUE"]
PATTERNS = ['"*"', '"imagenet*"', '"?oco"', '"*-val"', '"[x]*"', '"a*b"', '"y*"', '"*@1"']
OPS = ["=", "!=", "<", "<=", ">", ">="]


def _any_lit():
    return st.one_of(st.sampled_from(STRS), st.sampled_from(NUMS), st.sampled_from(TIMES[:4]), st.sampled_from(BOOLS))


def _leaf():
    bare = st.one_of(
        st.tuples(st.sampled_from(KEYS_BARE), st.sampled_from(OPS), _any_lit()).map(" ".join),
        st.tuples(st.sampled_from(KEYS_BARE), st.just("~"), st.sampled_from(PATTERNS)).map(" ".join),
        st.tuples(st.sampled_from(KEYS_BARE), st.sampled_from(["in", "not in"]),
                  st.lists(_any_lit(), max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]")).map(" ".join),
        st.sampled_from(KEYS_BARE + KEYS_METRIC + KEYS_NUM + KEYS_STR + ["created"]).map(lambda k: f"has({k})"),
        st.tuples(st.just("dataset"), st.just("="), st.sampled_from(['"imagenet"', '"coco"'])).map(" ".join),
    )
    metric = st.tuples(st.sampled_from(KEYS_METRIC), st.sampled_from(OPS), st.sampled_from(NUMS)).map(" ".join)
    num = st.one_of(
        st.tuples(st.sampled_from(KEYS_NUM), st.sampled_from(OPS), st.sampled_from(NUMS)).map(" ".join),
        st.tuples(st.sampled_from(KEYS_NUM), st.just("in"),
                  st.lists(st.sampled_from(NUMS), max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]")).map(" ".join))
    text = st.one_of(
        st.tuples(st.sampled_from(KEYS_STR), st.sampled_from(OPS), st.sampled_from(STRS)).map(" ".join),
        st.tuples(st.sampled_from(KEYS_STR), st.just("~"), st.sampled_from(PATTERNS)).map(" ".join))
    created = st.tuples(st.just("created"), st.sampled_from(OPS), st.sampled_from(TIMES)).map(" ".join)
    return st.one_of(bare, bare, metric, num, text, created)


def _expr():
    return st.recursive(
        _leaf(),
        lambda inner: st.one_of(
            inner.map(lambda e: f"not {e}"),
            st.tuples(inner, st.sampled_from([" and ", " or "]), inner).map(lambda t: f"({t[0]}{t[1]}{t[2]})"),
            st.lists(inner, min_size=2, max_size=4).map(" and ".join),
        ),
        max_leaves=8,
    )


@st.composite
def queries(draw):
    parts = []
    where = draw(st.one_of(st.just(""), _expr(), st.tuples(_leaf(), _expr()).map(" and ".join)))
    family = draw(st.sampled_from(["", "", 'dataset = "imagenet"', 'dataset in ["imagenet", "coco"]',
                                   "dataset = 'coco'"]))
    if family:  # the dataset rule: a top-level dataset term restricts bare metric names
        where = f"{family} and ({where})" if where else family
    parts.append(where)
    if draw(st.booleans()):
        key = draw(st.sampled_from(KEYS_BARE + KEYS_METRIC + KEYS_NUM + ["model", "created", "dtype"]))
        parts.append(f"order by {key}" + draw(st.sampled_from(["", " asc", " desc"])))
    if draw(st.booleans()):
        parts.append(f"limit {draw(st.integers(0, 6))}")
    return " ".join(p for p in parts if p)


_VALUES = st.one_of(
    st.sampled_from(["imagenet", "coco", "object-detection", "a*b", "[x]", "", "é", "imagenet-val", "a", "prod",
                     "Z", "yolo", "1", "2.5", "true", "2026-01-02", "2026-01-01T00:00:00Z"]),
    st.sampled_from([0, 1, 2, 5, -1, 100]),
    st.sampled_from([0.5, 1.0, 12.5, 0.93, 0.9, -0.0]),
    st.floats(min_value=-10, max_value=10, allow_nan=False, width=32),
    st.booleans(),
)


@st.composite
def catalogs(draw):
    n = draw(st.integers(1, 14))
    recs = []
    for i in range(n):
        meta = draw(st.dictionaries(st.sampled_from(["task", "dataset", "cpu_ghz", "x", "flag", "when", "accuracy",
                                                     "order"]), _VALUES, max_size=5))
        metrics = draw(st.lists(st.tuples(
            st.sampled_from(["imagenet-val", "imagenet", "imagenet_1k", "coco-val", "imagenetx", "coco", "imagenet/v2"]),
            st.sampled_from(["accuracy", "mAP", "x"]),
            st.one_of(st.sampled_from([0.0, 0.5, 0.9, 0.93, 1.0, -1.0, 12.5, 100.0]),
                      st.floats(-2, 2, allow_nan=False, width=32))), max_size=4))
        recs.append({
            "model": draw(st.sampled_from(["a", "b", "yolo-s"])), "content_id": f"{i:032x}",
            "size": draw(st.sampled_from([0, 1, 5, 100, 10**6, 10**8, 2 * 10**8])),
            "params": draw(st.sampled_from([0, 2, 1000, 10**9])), "stored": draw(st.integers(0, 3)),
            "n_tensors": draw(st.integers(0, 3)), "dtype": draw(st.sampled_from(["F32", "BF16", "prod"])),
            "created": draw(st.sampled_from(["2025-06-01T10:30:00Z", "2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z",
                                             "2026-01-02T00:00:00Z"])),
            "meta": meta, "metrics": metrics,
            "parents": draw(st.lists(st.integers(1, i), max_size=2, unique=True)) if i else [],
        })
    tags = draw(st.lists(st.tuples(st.integers(1, n), st.sampled_from(["prod", "Z", "y1"])), max_size=3))
    return recs, tags


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=catalogs(), qs=st.lists(queries(), min_size=4, max_size=10))
def test_sql_and_python_evaluator_agree(data, qs):
    recs, tags = data
    with tempfile.TemporaryDirectory() as tmp:
        cat = Catalog(Path(tmp) / "c.sqlite")
        try:
            cat.db.execute("PRAGMA synchronous=OFF")
            cat.register_many(recs)
            for vid, name in tags:
                annotate.tag(cat, cat.version_by_id(vid).ref, name, author="t")
            rows = Q.load_rows(cat)
            for text in qs:
                try:
                    q = Q.parse(text)
                except InvalidInputError as exc:
                    assert "query error" in str(exc)
                    continue
                want = Q.evaluate(q, rows)
                for t in TUNINGS:
                    got, plan = Q.query_ids(cat, q, tuning=t)
                    assert got == want, (text, t, plan)
        finally:
            cat.close()


def test_docs_grammar_is_the_code_grammar():
    doc = (ROOT / "docs" / "QUERY.md").read_text()
    block = doc.split("```lark\n", 1)[1].split("```", 1)[0]
    assert block.strip() == Q.GRAMMAR.strip()
    for unit in Q.UNITS:
        if unit and unit[0].isupper() or unit in ("%", "ms", "s", "us", "min", "h"):
            assert f"`{unit}`" in doc, unit


def test_sqlite_rejects_nothing_we_compile(cat):
    # every query the property test can produce compiles to SQL SQLite accepts (no OperationalError)
    commit(cat, "m", {"x": "1"})
    for text in ["has(`order`)", "x in []", "not x in [1, 2]", "`order` ~ \"*\" order by `order` desc limit 0"]:
        try:
            Q.query_ids(cat, text)
        except sqlite3.OperationalError as exc:  # pragma: no cover
            pytest.fail(f"{text}: {exc}")
