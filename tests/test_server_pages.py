"""The dashboard pages in-process (fastapi TestClient) over a store built here: every page
renders what the store holds, bad input gives an HTML error page with the right status,
and hostile text is escaped."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
from e2e.conftest import HOSTILE, add_graph_models, build_store
from fastapi.testclient import TestClient

from modelstore.server import create_app
from modelstore.store import Store


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pages") / "store"
    with Store.init(root) as s:
        build_store(s)
        add_graph_models(s, root.parent / "onnx")
        # a long catalog-only history (no weights needed by the model page): paging and sorting
        s.catalog.register_many([
            {"model": "many", "content_id": f"{i:032x}", "message": f"step {i}", "size": 1000 + i,
             "created": f"2026-02-01T00:{i // 60:02d}:{i % 60:02d}Z", "meta": {"lr": (i * 37 % 101) / 1000},
             "metrics": [("val", "accuracy", (i * 53 % 250) / 250)]} for i in range(250)])
    return root


@pytest.fixture(scope="module")
def client(root):
    with TestClient(create_app(root)) as c:
        yield c


def refs_in_table(html: str, table_id: str) -> list[str]:
    body = html.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0]
    return re.findall(r'class="pick" value="([^"]+)"', body)


def blob(html: str, element_id: str):
    m = re.search(rf'<script type="application/json" id="{element_id}">(.*?)</script>', html, re.DOTALL)
    assert m, element_id
    return json.loads(m.group(1))


# -- every page -------------------------------------------------------------------------------
def test_models_list(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    for name in ("mlp-wide", "mlp-deep", "acme/mlp-ft", "many"):
        assert f'href="/models/{name}"' in html
    assert 'href="/versions/mlp-wide@4"' in html          # latest version
    assert "production→@4" in html and "baseline→@2" in html  # tags
    assert html.count('class="nav"') == 1 and 'href="/query"' in html


def test_model_page_table_charts_lineage(client):
    html = client.get("/models/mlp-wide").text
    assert refs_in_table(html, "versions-table") == [f"mlp-wide@{n}" for n in (4, 3, 2, 1)]  # newest first
    for col in ("accuracy", "digits-clean", "digits-noisy", "cpu_ghz", "epoch"):
        assert col in html
    charts = blob(html, "metric-charts")
    acc = next(c for c in charts if c["name"] == "accuracy")
    assert sorted(t["name"] for t in acc["traces"]) == ["digits-clean", "digits-noisy"]
    clean = next(t for t in acc["traces"] if t["name"] == "digits-clean")
    assert clean["x"] == [1, 2, 3, 4] and clean["y"] == pytest.approx([0.83, 0.86, 0.89, 0.92])
    assert '<svg class="lineage"' in html and 'href="/versions/mlp-wide@3"' in html


def test_model_page_sorts_by_metric_and_attribute(client):
    html = client.get("/models/mlp-deep", params={"sort": "loss@digits-clean", "desc": 0}).text
    assert refs_in_table(html, "versions-table") == [f"mlp-deep@{n}" for n in (4, 3, 2, 1)]  # loss 1/epoch
    html = client.get("/models/mlp-deep", params={"sort": "accuracy@digits-noisy", "desc": 1}).text
    assert refs_in_table(html, "versions-table")[0] == "mlp-deep@4"
    html = client.get("/models/mlp-deep", params={"sort": "epoch", "desc": 0}).text
    assert refs_in_table(html, "versions-table") == [f"mlp-deep@{n}" for n in (1, 2, 3, 4)]


def test_model_page_paginates_in_sorted_order(client):
    seen = []
    for page in (1, 2, 3):
        html = client.get("/models/many", params={"sort": "accuracy@val", "desc": 1, "page": page}).text
        assert f"page {page} of 3" in html
        seen += refs_in_table(html, "versions-table")
    assert len(seen) == 250 and len(set(seen)) == 250
    acc = {i + 1: (i * 53 % 250) / 250 for i in range(250)}
    values = [acc[int(r.split("@")[1])] for r in seen]
    assert values == sorted(values, reverse=True)
    html = client.get("/models/many", params={"sort": "lr", "desc": 0}).text
    assert len(refs_in_table(html, "versions-table")) == 100


def test_cross_model_lineage(client):
    html = client.get("/models/acme/mlp-ft").text
    assert 'href="/models/mlp-deep"' in html and 'href="/versions/mlp-deep@4"' in html
    assert 'class="edge cross"' in html


def test_version_page(client):
    r = client.get("/versions/mlp-wide@production")
    assert r.status_code == 200
    html = r.text
    assert "mlp-wide@4" in html and "Best clean accuracy so far." in html and "alice" in html
    assert 'href="/api/versions/mlp-wide@4/download?format=safetensors"' in html
    assert "layers.1.fc.weight" in html and "(48, 48)" in html          # tensors
    assert "digits-noisy" in html and "0.92" in html                     # metrics
    assert 'href="/versions/mlp-wide@3"' in html                         # lineage / parents
    assert 'data-ref="mlp-wide@4"' in html and 'data-needs-token="0"' in html
    cid = client.get("/versions/mlp-wide@4").text.split('class="cid">', 1)[1][:32]
    assert "mlp-wide@4" in client.get(f"/versions/{cid[:10]}").text     # content-id prefix


def test_query_page(client):
    html = client.get("/query").text
    assert 'id="q"' in html and 'class="example"' in html
    keys = blob(html, "query-keys")
    assert "accuracy" in keys["metrics"] and "digits-noisy" in keys["datasets"] and "cpu_ghz" in keys["attributes"]
    r = client.get("/query", params={"q": 'task = "digits" and accuracy@digits-clean > 0.9 order by accuracy desc'})
    assert r.status_code == 200
    assert refs_in_table(r.text, "results-table") == ["mlp-wide@4"]
    r = client.get("/query", params={"q": "accuracy@digits-clean > 0 order by size"})
    data = blob(r.text, "scatter-data")
    assert len(data["points"]) == 9 and "accuracy@digits-noisy" in data["points"][0]["v"]
    assert "size" in data["lower"] and "accuracy@digits-clean" not in data["lower"]


def test_query_error_is_shown_with_400(client):
    r = client.get("/query", params={"q": "accuracy > and"})
    assert r.status_code == 400
    assert 'id="query-error"' in r.text and "query error" in r.text
    r = client.get("/query", params={"q": "size < 100XB"})
    assert r.status_code == 400 and "unknown unit" in r.text


def test_compare_page(client):
    r = client.get("/compare", params=[("v", "mlp-wide@4"), ("v", "mlp-deep@4"), ("v", "acme/mlp-ft")])
    assert r.status_code == 200
    html = r.text
    table = html.split('id="compare-table"', 1)[1].split("</table>", 1)[0]
    assert table.count('class="same"') >= 1 and table.count('class="differs"') >= 5
    assert 'id="only-diff"' in html
    charts = blob(html, "bar-charts")
    acc = next(c for c in charts if c["name"] == "accuracy")
    assert [t["name"] for t in acc["traces"]] == ["mlp-wide@4", "mlp-deep@4", "acme/mlp-ft@1"]
    assert acc["traces"][0]["x"] == ["digits-clean", "digits-noisy"]
    assert client.get("/compare").status_code == 200   # the form


def test_diff_page(client):
    r = client.get("/diff", params={"a": "mlp-deep@4", "b": "acme/mlp-ft"})
    assert r.status_code == 200
    html = r.text
    assert "reshaped" in html and "head.weight (10, 32) → (5, 32)" in html
    assert "layers.4.fc.weight" in html and "added" in html
    heat = blob(html, "heat-data")
    assert "layers.0" in heat["y"] and "fc.weight" in heat["x"]
    assert 'id="tensor-diff-table"' in html and 'id="layer-table"' in html
    assert client.get("/diff").status_code == 200     # the form


# -- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("url,status", [
    ("/versions/nope", 404), ("/versions/mlp-wide@99", 404), ("/models/nope", 404),
    ("/models/mlp-wide?sort=bogus", 400), ("/models/mlp-wide?page=0", 400),
    ("/compare?v=mlp-wide@1", 400), ("/compare?" + "&".join(["v=mlp-wide@1"] * 6), 400),
    ("/compare?v=mlp-wide@1&v=nope@1", 404), ("/diff?a=mlp-wide@1", 400), ("/diff?a=mlp-wide@1&b=zzz", 404),
    ("/diff?a=/etc/passwd&b=/etc/hostname", 404),  # refs only: never a file on the server
    ("/static/nope.js", 404), ("/static/..%2Fpages.py", 404),
])
def test_errors(client, url, status):
    r = client.get(url)
    assert r.status_code == status, (url, r.text[:300])
    if not url.startswith("/static"):
        assert r.headers["content-type"].startswith("text/html") and 'class="error"' in r.text


@pytest.mark.parametrize("spelling,desc", [("true", True), ("false", False), ("1", True), ("0", False),
                                            ("yes", True), ("no", False), ("True", True), ("NO", False)])
def test_model_page_accepts_boolean_spellings(client, spelling, desc):
    r = client.get("/models/mlp-deep", params={"sort": "epoch", "desc": spelling})
    assert r.status_code == 200, r.text[:300]
    order = (4, 3, 2, 1) if desc else (1, 2, 3, 4)
    assert refs_in_table(r.text, "versions-table") == [f"mlp-deep@{n}" for n in order]


@pytest.mark.parametrize("url,names", [
    ("/models/mlp-wide?desc=maybe", ["desc=&#39;maybe&#39;", "true/false"]),
    ("/models/mlp-wide?page=two", ["page=&#39;two&#39;", "whole number"]),
    ("/models/mlp-wide?desc=2&page=x", ["desc=&#39;2&#39;", "page=&#39;x&#39;"]),
    ("/?page=last", ["page=&#39;last&#39;"]),
    ("/models/mlp-wide?desc=<script>x</script>", ["desc=", "&lt;script&gt;"]),
])
def test_bad_page_parameters_are_an_html_400(client, url, names):
    r = client.get(url)
    assert r.status_code == 400, (url, r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("text/html") and 'class="error"' in r.text
    assert "invalid_input" in r.text and "<script>x" not in r.text
    for n in names:
        assert n in r.text, (n, r.text.split('class="error"', 1)[1][:300])


def test_api_keeps_the_json_envelope_for_bad_parameters(client):
    r = client.get("/api/models/mlp-wide/versions", params={"limit": "lots"})
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/json")
    assert set(r.json()) == {"error"} and r.json()["error"]["kind"] == "invalid_input"


# -- escaping, static files, access ------------------------------------------------------------
def test_hostile_text_is_escaped(client):
    html = client.get("/versions/acme/mlp-ft").text
    assert HOSTILE not in html and "<b>fine-tune</b>" not in html
    assert "&lt;script&gt;alert(&#39;xss&#39;)&lt;/script&gt;" in html  # the comment and the meta value
    assert "&lt;b&gt;fine-tune&lt;/b&gt;" in html
    for url in ("/compare?v=mlp-deep@4&v=acme/mlp-ft@1", "/query?q=has(note)", "/models/acme/mlp-ft", "/"):
        text = client.get(url).text
        assert HOSTILE not in text and "<b>fine-tune" not in text, url
    r = client.get("/query", params={"q": HOSTILE})   # echoed query text and error
    assert r.status_code == 400 and "<script>alert" not in r.text


def test_static_files(client):
    r = client.get("/static/plotly.min.js")
    assert r.status_code == 200 and len(r.content) > 1_000_000
    assert "max-age=31536000" in r.headers["cache-control"] and "javascript" in r.headers["content-type"]
    css = client.get("/static/style.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    for name in ("charts.js", "table.js", "query.js", "comments.js", "pick.js"):
        assert client.get(f"/static/{name}").status_code == 200
    assert "cdn" not in client.get("/models/mlp-wide").text.lower()


def test_token_and_private(root):
    with TestClient(create_app(root, token="sekret")) as c:
        assert 'data-needs-token="1"' in c.get("/versions/mlp-wide@1").text
        assert 'id="nav-login"' in c.get("/").text          # a token exists: offer to sign in
        assert "Anyone can browse this server" in c.get("/login").text
    with TestClient(create_app(root)) as c:
        assert 'id="nav-login"' not in c.get("/").text      # an open server has nothing to sign in to
        assert "This server is open" in c.get("/login").text
    with TestClient(create_app(root, token="sekret", private=True)) as c:
        assert c.get("/api/models").status_code == 401
        assert c.get("/", headers={"Authorization": "Bearer sekret"}).status_code == 200


# -- graphs and hardware figures ---------------------------------------------------------------
needs_onnx = pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="onnx is not installed")


@needs_onnx
def test_diff_page_graph_section(client):
    html = client.get("/diff", params={"a": "onnx-mlp@1", "b": "onnx-mlp@2"}).text
    counts = html.split('id="graph-counts"', 1)[1].split("</p>", 1)[0]
    assert "2 added" in counts and "1 changed" in counts and "0 removed" in counts and "0 rewired" in counts
    table = html.split('id="graph-changes"', 1)[1].split("</table>", 1)[0]
    rows = [re.sub(r"<[^>]+>", "|", r) for r in table.split("<tr>")[2:]]
    cells = [[c for c in r.split("|") if c.strip()] for r in rows]
    assert [c[:3] for c in cells] == [["added", "mid", "Gemm"], ["added", "act_mid", "Relu"],
                                       ["changed", "act1", "Relu → Tanh"]]
    assert "a1, mid.weight, mid.bias → hm" in table
    figs = html.split('id="graph-figures"', 1)[1].split("</table>", 1)[0]
    # fc1 16->32, fc2 32->4 (+ mid 32->32): params 676 -> 1732, flops 720 -> 1808 (hand count)
    for label, a, b in (("parameters", "676", "1.7K"), ("flops / inference", "720", "1.8K"),
                        ("min CPU clock", "720 Hz", "1.81 kHz"), ("weight bytes", "2.7 kB", "6.9 kB"),
                        ("memory to infer", "3.0 kB", "7.2 kB")):
        row = figs.split(f"<th>{label}</th>", 1)[1].split("</tr>", 1)[0]
        assert f">{a}</td>" in row and f">{b}</td>" in row, (label, row)
    assert 'title="1,808"' in figs                                   # the exact figure on hover
    assert 'id="tensor-diff-table"' in html                          # beside the tensor diff


@needs_onnx
def test_diff_page_without_both_graphs(client):
    html = client.get("/diff", params={"a": "onnx-mlp@2", "b": "onnx-mlp@3"}).text
    assert 'id="graph-diff"' not in html and 'id="graph-missing"' in html
    html = client.get("/diff", params={"a": "mlp-wide@1", "b": "mlp-wide@2"}).text
    assert 'id="graph-diff"' not in html and 'id="graph-missing"' not in html
    html = client.get("/diff", params={"a": "onnx-mlp@1", "b": "onnx-mlp@1"}).text
    assert "0 added" in html and "Same graph" in html


@needs_onnx
def test_version_page_figures_and_ops(client):
    html = client.get("/versions/onnx-mlp@2").text
    figs = html.split('id="hw-figures"', 1)[1].split("</section>", 1)[0]
    labels = re.findall(r'<div class="l">([^<]+)</div>', figs)
    assert labels == ["parameters", "weight bytes", "flops / inference", "memory to infer", "min CPU clock"]
    assert ">1.8K</div>" in figs and ">1.81 kHz</div>" in figs and 'title="1,808"' in figs
    assert "one inference in 1 s at 1 op/cycle" in html
    ops = html.split('id="graph-ops"', 1)[1].split("</section>", 1)[0]
    assert re.findall(r'<span class="op">([^<]+)', ops) == ["Gemm ", "Relu", "Softmax", "Tanh"]
    assert "<b>×3</b>" in ops and "6 nodes" in ops
    assert re.findall(r'<td>(\w+)</td>', ops.split('id="graph-nodes"', 1)[1]) == \
        ["Gemm", "Tanh", "Gemm", "Relu", "Gemm", "Softmax"]
    assert "x (N, 16) F32" in ops and "y (N, 4) F32" in ops
    plain = client.get("/versions/onnx-mlp@3").text                   # same weights, no graph
    assert 'id="hw-figures"' not in plain and 'id="graph-ops"' not in plain


@needs_onnx
def test_version_page_with_a_missing_graph_blob(tmp_path):
    from modelstore import graph_store

    root = tmp_path / "store"
    with Store.init(root) as s:
        add_graph_models(s, tmp_path / "onnx")
        gid = s.resolve("onnx-mlp@1").meta["graph"]
    (root / graph_store.DIRNAME / f"{gid}{graph_store.SUFFIX}").unlink()
    with TestClient(create_app(root)) as c:
        r = c.get("/versions/onnx-mlp@1")
        assert r.status_code == 200                                   # the version still shows
        assert "not_found" in r.text.split('id="graph-ops"', 1)[1] and "fsck" in r.text


# -- private mode: sign in with a cookie -------------------------------------------------------
@pytest.fixture
def private(root):
    with TestClient(create_app(root, token="w-token", read_tokens=("r-token",), private=True)) as c:
        yield c


def test_private_pages_redirect_to_login(private):
    r = private.get("/models/mlp-wide?sort=epoch&desc=0", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=%2Fmodels%2Fmlp-wide%3Fsort%3Depoch%26desc%3D0"
    r = private.get(r.headers["location"])
    assert r.status_code == 200 and 'id="login-form"' in r.text
    assert 'name="next" value="/models/mlp-wide?sort=epoch&amp;desc=0"' in r.text
    api = private.get("/api/models")                      # the API keeps its 401 envelope
    assert api.status_code == 401 and api.json()["error"]["kind"] == "unauthorized"
    assert private.get("/static/style.css").status_code == 200    # assets hold no data
    assert private.get("/static/login.js").status_code == 200


def test_login_sets_a_read_only_cookie(private):
    r = private.post("/login", data={"token": "r-token", "next": "/models/mlp-wide"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/models/mlp-wide"
    cookie = r.headers["set-cookie"]
    assert "modelstore_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "r-token" not in cookie                                   # an HMAC, never the token
    html = private.get("/models/mlp-wide").text                      # the client now sends the cookie
    assert "mlp-wide@4" in html and 'id="nav-logout"' in html
    assert private.get("/api/versions/mlp-wide@1").status_code == 200  # reads through the API too
    # writes still need the header: the cookie alone is refused
    w = private.post("/api/versions/mlp-wide@1/comments", json={"text": "via cookie"})
    assert w.status_code == 401 and w.json()["error"]["kind"] == "unauthorized"
    value = private.cookies.get("modelstore_session")
    w = private.post("/api/versions/mlp-wide@1/comments", json={"text": "x"}, headers={"Authorization": f"Bearer {value}"})
    assert w.status_code == 401                                      # nor can it be sent as a token
    # logout clears it
    r = private.get("/logout")
    assert r.status_code == 200 and 'id="signed-out"' in r.text and 'id="nav-logout"' not in r.text
    assert 'modelstore_session=""' in r.headers["set-cookie"] or "Max-Age=0" in r.headers["set-cookie"]
    assert private.get("/", follow_redirects=False).status_code == 303


def test_login_json_for_the_script(private):
    r = private.post("/login", data={"token": "w-token", "next": "/versions/mlp-wide@1"},
                     headers={"Accept": "application/json"})
    assert r.status_code == 200 and r.json() == {"access": "write", "next": "/versions/mlp-wide@1"}
    assert "modelstore_session=" in r.headers["set-cookie"]
    r = private.post("/login", data={"token": "r-token"}, headers={"Accept": "application/json"})
    assert r.json() == {"access": "read", "next": "/"}
    r = private.post("/login", data={"token": "nope"}, headers={"Accept": "application/json"})
    assert r.status_code == 401 and r.json()["error"]["kind"] == "unauthorized"


def test_login_refuses_bad_tokens_and_foreign_sites(private):
    r = private.post("/login", data={"token": "wrong", "next": "/"})
    assert r.status_code == 401 and "not valid" in r.text and 'id="login-form"' in r.text
    assert "set-cookie" not in r.headers
    assert private.post("/login", data={"token": ""}).status_code == 401
    r = private.post("/login", data={"token": "w-token"}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and "set-cookie" not in r.headers
    assert private.post("/login", content=b"token=" + b"x" * 20000,
                        headers={"Content-Type": "application/x-www-form-urlencoded"}).status_code == 413
    forged = {"modelstore_session": "0" * 64}
    private.cookies.update(forged)
    assert private.get("/", follow_redirects=False).status_code == 303


@pytest.mark.parametrize("target,expect", [
    ("/versions/mlp-wide@1", "/versions/mlp-wide@1"), ("https://evil.example/", "/"), ("//evil.example/x", "/"),
    ("/\\evil.example", "/"), ("/login?next=/", "/"), ("javascript:alert(1)", "/"), ("", "/"),
])
def test_login_never_redirects_off_site(private, target, expect):
    r = private.post("/login", data={"token": "r-token", "next": target}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == expect


@needs_onnx
def test_node_changes_name_attributes_shapes_and_wiring():
    """Every kind of graph change gets a row saying what changed (real graphs, graph_diff)."""
    from e2e.conftest import onnx_mlp

    from modelstore import graph as graphs
    from modelstore import graph_diff
    from modelstore.server import pages_graph as pg

    a = graphs.from_onnx(onnx_mlp())
    b = onnx_mlp(hidden=24)                                     # fc1/fc2 weights reshaped
    b.graph.node[3].attribute[0].i = 1                          # softmax axis -1 -> 1
    rows = pg.node_changes(graph_diff.graph_diff(a, graphs.from_onnx(b)))
    by_name = {r["name"]: r for r in rows}
    assert by_name["softmax"]["detail"] == "axis: -1 → 1" and by_name["softmax"]["op"] == "Softmax"
    assert by_name["fc1"]["detail"] == "input 1 shape: (32, 16) → (24, 16); input 2 shape: (32) → (24)"
    assert {r["change"] for r in rows} == {"changed"} and "act1" not in by_name
    assert [pg.human_hz(x) for x in (2.5, 0.0012, 7.2e-07, 3e-12, None)] == ["2.5 GHz", "1.2 MHz", "720 Hz",
                                                                             "0.003 Hz", "–"]
