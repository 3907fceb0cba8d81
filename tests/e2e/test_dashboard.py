"""The dashboard in a real headless Chromium against a real server process: every page opens
without script errors and draws its charts, the query box completes keys and runs, a diff
opens from its form, a comment posted through the form appears (and persists), a --private
server is usable after signing in, and a screenshot of each page is saved
(MODELSTORE_SCREENSHOTS, else a pytest temp dir)."""

from __future__ import annotations

import pytest
from e2e.conftest import HOSTILE

PAGES = [
    ("models", "/", "Models", 0),
    ("model", "/models/mlp-wide", "mlp-wide", 2),                       # accuracy and loss curves
    ("model-org", "/models/acme/mlp-ft", "acme/mlp-ft", 1),
    ("version", "/versions/mlp-wide@4", "mlp-wide@4", 0),
    ("version-hostile", "/versions/acme/mlp-ft@1", "acme/mlp-ft@1", 0),
    ("query", "/query?q=accuracy%40digits-clean%20%3E%200.8%20order%20by%20accuracy%40digits-clean%20desc", "Query", 1),
    ("compare", "/compare?v=mlp-wide@4&v=mlp-deep@4&v=acme/mlp-ft@1", "Compare", 2),
    ("diff", "/diff?a=mlp-deep@4&b=acme/mlp-ft@1", "Diff", 1),
    ("version-graph", "/versions/onnx-mlp@2", "onnx-mlp@2", 0),           # hardware figures, op list
    ("diff-graph", "/diff?a=onnx-mlp@1&b=onnx-mlp@2", "Diff", 1),         # node changes beside tensors
]


def open_page(page, server, path):
    resp = page.goto(server["url"] + path, wait_until="load")
    page.wait_for_load_state("networkidle")
    return resp


def screenshot(page, path):
    """A full-page screenshot from the top (the navigation bar is sticky)."""
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(path), full_page=True)


@pytest.mark.parametrize("name,path,heading,plots", PAGES, ids=[p[0] for p in PAGES])
def test_every_page(page, server, shots, name, path, heading, plots):
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    resp = open_page(page, server, path)
    assert resp.status == 200, resp.text()[:1000]
    assert heading in page.locator("h1").first.inner_text()
    assert page.locator("header.nav a", has_text="Query").count() == 1
    if plots:
        page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {plots}",
                               timeout=15_000)
    screenshot(page, shots / f"{name}.png")
    assert page.js_errors == [], page.js_errors
    assert dialogs == []                                  # hostile text never ran as script


def test_hostile_text_shows_as_text(page, server):
    open_page(page, server, "/versions/acme/mlp-ft@1")
    assert HOSTILE in page.locator("#meta-table").inner_text()
    assert HOSTILE in page.locator("#comment-list").inner_text()
    assert page.locator("script:text('xss')").count() == 0


def test_query_box_autocomplete_and_scatter(page, server, shots):
    open_page(page, server, "/query")
    box = page.locator("#q")
    box.click()
    box.type("accur")
    suggest = page.locator("#key-suggest")
    suggest.wait_for(state="visible")
    assert "accuracy" in suggest.inner_text()
    box.press("Tab")
    assert box.input_value() == "accuracy"
    box.type("@digits-n")
    suggest.wait_for(state="visible")
    assert "accuracy@digits-noisy" in suggest.inner_text()
    box.press("Tab")
    box.type(" > 0.6 order by size")
    assert box.input_value() == "accuracy@digits-noisy > 0.6 order by size"
    box.press("Enter")
    page.wait_for_url("**/query?q=*")
    page.wait_for_load_state("networkidle")
    rows = page.locator("#results-table tbody tr")
    assert rows.count() == int(page.locator("#result-count").inner_text()) > 0
    page.wait_for_selector("#scatter .main-svg")
    page.select_option("#scatter-x", "loss@digits-clean")
    page.select_option("#scatter-y", "accuracy@digits-clean")
    info = page.locator("#pareto-info").inner_text()
    assert "on the Pareto front" in info
    front = page.locator("#scatter").get_attribute("data-front").split()
    assert front and all("@" in r for r in front)
    # lower loss and higher accuracy is better: the newest epochs dominate
    assert "mlp-wide@4" in front
    screenshot(page, shots / "query-scatter.png")
    assert page.js_errors == []


def test_malformed_query_shows_error(page, server):
    resp = open_page(page, server, "/query?q=accuracy%20%3E%20and")
    assert resp.status == 400
    assert "query error" in page.locator("#query-error").inner_text()


def test_diff_from_form_and_sort(page, server, shots):
    open_page(page, server, "/diff")
    page.fill("input[name=a]", "mlp-wide@1")
    page.fill("input[name=b]", "mlp-wide@4")
    page.click("#diff-form button[type=submit]")
    page.wait_for_url("**/diff?a=*")
    page.wait_for_selector("#heatmap .main-svg")
    assert "modified" in page.locator("#diff-summary").inner_text()
    table = page.locator("#tensor-diff-table")
    table.locator("th", has_text="rel Δ").click()   # first click: largest first
    values = [float(v) for v in table.locator("tbody tr td:nth-child(5)").all_inner_texts()]
    assert values == sorted(values, reverse=True) and len(values) == 6
    screenshot(page, shots / "diff-form.png")
    assert page.js_errors == []


def test_post_comment(page, server, shots):
    open_page(page, server, "/versions/mlp-deep@2")
    before = page.locator("#comment-list li").count()
    token_field = page.locator(".token-field")
    assert token_field.is_visible()                     # the server has a token: asked once
    page.fill("#comment-text", "Looks good <i>to me</i>")
    page.fill("#comment-token", "wrong-token")
    page.click("#comment-form button[type=submit]")
    page.wait_for_selector("#comment-status.bad")
    assert page.locator("#comment-list li").count() == before
    page.fill("#comment-token", server["token"])
    page.click("#comment-form button[type=submit]")
    page.wait_for_selector("#comment-status.ok")
    assert page.locator("#comment-list li").count() == before + 1
    assert "Looks good <i>to me</i>" in page.locator("#comment-list li").last.inner_text()
    page.reload()
    page.wait_for_load_state("networkidle")
    assert "Looks good <i>to me</i>" in page.locator("#comment-list").inner_text()   # stored
    assert not page.locator(".token-field").is_visible()  # the token is remembered
    page.fill("#comment-text", "second comment")
    page.click("#comment-form button[type=submit]")
    page.wait_for_selector("#comment-status.ok")
    assert page.locator("#comment-list li").count() == before + 2
    screenshot(page, shots / "version-comment.png")
    assert [e for e in page.js_errors if "401" not in e] == []


def test_compare_only_differences(page, server):
    open_page(page, server, "/compare?v=mlp-wide@3&v=mlp-wide@4")
    rows = page.locator("#compare-table tbody tr:not(.group)")
    visible = sum(1 for i in range(rows.count()) if rows.nth(i).is_visible())
    page.check("#only-diff")
    after = sum(1 for i in range(rows.count()) if rows.nth(i).is_visible())
    assert 0 < after < visible
    assert page.locator("#compare-table tr.same", has_text="task").first.is_hidden()


def test_model_page_sort_and_select(page, server):
    open_page(page, server, "/models/mlp-deep")
    page.click("#versions-table th a:has-text('loss')")
    page.wait_for_url("**sort=loss*")
    first = page.locator("#versions-table tbody tr").first.locator("td").nth(1).inner_text()
    assert first == "@1"                               # desc: the largest loss (epoch 1) first
    page.check("input.pick[value='mlp-deep@1']")
    page.check("input.pick[value='mlp-deep@2']")
    page.click("#compare-selected")
    page.wait_for_url("**/compare?v=*")
    assert page.locator("#compare-table").is_visible()


def test_unknown_ref_is_a_404_page(page, server):
    resp = open_page(page, server, "/versions/no-such-model@1")
    assert resp.status == 404
    assert "Not found" in page.locator("h1").inner_text()


def test_graph_diff_and_figures(page, server):
    open_page(page, server, "/diff?a=onnx-mlp@1&b=onnx-mlp@2")
    rows = page.locator("#graph-changes tbody tr").all_inner_texts()
    assert [r.split("\t")[:3] for r in rows] == [["added", "mid", "Gemm"], ["added", "act_mid", "Relu"],
                                                  ["changed", "act1", "Relu → Tanh"]]
    figures = page.locator("#graph-figures").inner_text()
    assert "flops / inference" in figures and "720" in figures and "1.8K" in figures
    open_page(page, server, "/versions/onnx-mlp@2")
    assert "1.81 kHz" in page.locator("#hw-figures").inner_text()
    assert page.locator("#graph-nodes tbody tr").count() == 6
    assert page.js_errors == []


def test_private_server_login(browser, private_server, shots):
    """serve --private --token T: / sends the browser to the sign-in page; after signing in the
    models list shows, a comment posts (the write token kept for the form), and sign-out ends it."""
    url, token = private_server["url"], private_server["token"]
    ctx = browser.new_context(viewport={"width": 1360, "height": 900})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        pg.goto(url + "/versions/mlp-wide@2", wait_until="load")
        assert "/login?next=" in pg.url and pg.locator("h1").inner_text() == "Sign in"
        pg.fill("#login-token", "not-the-token")
        pg.click("#login-form button[type=submit]")
        pg.wait_for_selector("#login-error:not([hidden])")
        assert "not valid" in pg.locator("#login-error").inner_text()
        screenshot(pg, shots / "login.png")
        pg.fill("#login-token", token)
        pg.click("#login-form button[type=submit]")
        pg.wait_for_url("**/versions/mlp-wide@2")                    # back where the browser wanted to go
        pg.goto(url + "/", wait_until="load")
        assert pg.locator("h1").inner_text().startswith("Models")
        assert pg.locator('a[href="/models/mlp-wide"]').count() == 1
        cookie = next(c for c in ctx.cookies() if c["name"] == "modelstore_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["value"] != token
        pg.goto(url + "/versions/mlp-wide@2", wait_until="load")
        assert not pg.locator(".token-field").is_visible()          # the write token is already stored
        before = pg.locator("#comment-list li").count()
        pg.fill("#comment-text", "posted from a private dashboard")
        pg.click("#comment-form button[type=submit]")
        pg.wait_for_selector("#comment-status.ok")
        assert pg.locator("#comment-list li").count() == before + 1
        screenshot(pg, shots / "private-version.png")
        pg.click("#nav-logout")
        pg.wait_for_selector("#signed-out")
        assert pg.evaluate("localStorage.getItem('modelstore.token')") is None
        assert not [c for c in ctx.cookies() if c["name"] == "modelstore_session"]
        pg.goto(url + "/", wait_until="load")
        assert "/login" in pg.url
        assert errors == []
    finally:
        ctx.close()
