"""The web dashboard: server-rendered pages (Jinja2, autoescaped) over the Store facade.

Pages read the store directly (deps.store), never through the HTTP API; small vanilla scripts
in static/ draw the charts (plotly.js from the plotly package, served here, never a CDN), sort
tables, complete query keys and post comments. A bad REF or query is an HTML error page with
the status of its kind (404, 400), not a crash. On a --private server a browser signs in at
/login (pages_login); static files need no sign-in (they hold no data).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import jinja2
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from modelstore import __version__, graph_store
from modelstore.errors import InvalidInputError, ModelstoreError, NotFoundError
from modelstore.server import pages_catalog as pc
from modelstore.server import pages_graph as pg
from modelstore.server import pages_login
from modelstore.server import pages_views as pv
from modelstore.server.deps import store

HERE = Path(__file__).parent
STATIC = HERE / "static"
PAGE_SIZE = 100            # rows per page of the versions table / models list
QUERY_ROWS = 500           # query results loaded (table + scatter)
TENSOR_ROWS = 2000         # tensors listed on a version page
LINEAGE_NODES = 30         # newest versions of a model drawn in its lineage graph
MAX_COMPARE = 5

assets = APIRouter(include_in_schema=False)  # css, js, plotly: open even on a --private server
pages = APIRouter(include_in_schema=False, dependencies=[Depends(pages_login.page_reader)])
STORE = Depends(store)
REFS = Query(default=[])

env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                         trim_blocks=True, lstrip_blocks=True)
env.filters.update(fmt=pv.fmt, bytes=pv.human_bytes, count=pv.human_count, sortval=pv.sort_value, hz=pg.human_hz,
                   when=lambda s: (s or "–").replace("T", " ")[:19] + ("Z" if s and len(s) > 19 else ""))
env.globals.update(app_version=__version__)


def _static_version() -> str:
    """Cache-busting token for our css/js: changes whenever a static file changes."""
    return format(int(max((p.stat().st_mtime for p in STATIC.iterdir()), default=0)), "x")


def _plotly_path() -> Path | None:
    try:
        import plotly
    except ImportError:
        return None
    p = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    return p if p.is_file() else None


def _plotly_version() -> str:
    try:
        import plotly

        return plotly.__version__
    except ImportError:
        return "missing"


env.globals.update(static_v=_static_version(), plotly_v=_plotly_version())


def render(request: Request, template: str, status: int = 200, **ctx) -> HTMLResponse:
    cfg = request.app.state.config
    ctx.setdefault("signed_in", pages_login.signed_in(request))
    html = env.get_template(template).render(request_path=request.url.path,
                                             has_login=bool(cfg.private or cfg.token or cfg.read_tokens), **ctx)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


def error_page(request: Request, status: int, kind: str, message: str) -> HTMLResponse:
    """The dashboard's HTML error page (never FastAPI's JSON) with `status`."""
    title = "Not found" if status == 404 else "Cannot show this page"
    return render(request, "error.html", status=status, title=title, kind=kind, message=message)


def bad_params_page(request: Request, errors: list[dict]) -> HTMLResponse:
    """A page's query parameters that do not parse (app.py's RequestValidationError handler for
    every path outside /api): the error page with status 400 naming them."""
    return error_page(request, 400, InvalidInputError.kind, pv.param_errors_text(errors))


def html_errors(fn):
    """Render a ModelstoreError raised by a page as the error page (status of its kind)."""
    @functools.wraps(fn)
    def wrapper(request: Request, *args, **kwargs):
        try:
            return fn(request, *args, **kwargs)
        except ModelstoreError as exc:
            return error_page(request, exc.http_status, exc.kind, str(exc))
    return wrapper


# -- static files -----------------------------------------------------------------------------
_LONG_CACHE = {"Cache-Control": "public, max-age=31536000, immutable"}


@assets.get("/static/plotly.min.js")
def plotly_js():
    path = _plotly_path()
    if path is None:
        raise NotFoundError("plotly is not installed on the server (pip install plotly)")
    return FileResponse(path, media_type="text/javascript", headers=_LONG_CACHE)


_STATIC_FILES = {p.name: p for p in STATIC.iterdir() if p.is_file()} if STATIC.is_dir() else {}
_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}


@assets.get("/static/{name}")
def static_file(name: str):
    path = _STATIC_FILES.get(name)  # only files that ship in static/: no path from the request
    if path is None:
        raise NotFoundError(f"no static file {name[:80]!r}")
    return FileResponse(path, media_type=_TYPES.get(path.suffix, "application/octet-stream"), headers=_LONG_CACHE)


@assets.get("/favicon.ico")
def favicon():
    return Response(status_code=204)


# -- pages ------------------------------------------------------------------------------------
def _page_number(page: int, total: int) -> tuple[int, int]:
    pages = max(1, math.ceil(total / PAGE_SIZE))
    if page < 1:
        raise InvalidInputError("page numbers start at 1")
    return min(page, pages), pages


@pages.get("/", response_class=HTMLResponse)
@html_errors
def models_page(request: Request, page: int = 1, s=STORE):
    total, rows = pc.model_summaries(s.catalog, PAGE_SIZE, 0)
    page, pages = _page_number(page, total)
    if page > 1:
        total, rows = pc.model_summaries(s.catalog, PAGE_SIZE, (page - 1) * PAGE_SIZE)
    latest = {i.id: i for i in s.catalog.versions_by_ids([r["latest_id"] for r in rows if r["latest_id"]])}
    for r in rows:
        r["latest"] = latest.get(r["latest_id"])
    return render(request, "models.html", title="Models", rows=rows, total=total, page=page, pages=pages)


@pages.get("/models/{model:path}", response_class=HTMLResponse)
@html_errors
def model_page(request: Request, model: str, sort: str = "version", desc: bool = True, page: int = 1,
               s=STORE):
    """`desc` takes the usual spellings: true/false, 1/0, yes/no, on/off (any case)."""
    from modelstore.query import query_ids

    if not any(name == model for name, _ in s.models()):
        raise NotFoundError(f"no model named {model[:120]!r}")
    series = pc.metric_series(s.catalog, model)
    columns = pv.model_columns(pc.model_keys(s.catalog, model), [(n, d) for n in series for d in series[n]])
    col = next((c for c in columns if c["key"] == sort), None)
    if col is None:
        raise InvalidInputError(f"cannot sort by {sort[:80]!r}: not a column of this table")
    ids, _ = query_ids(s.catalog, f'model = "{model}"' + pv.order_clause(col, desc))
    page, pages = _page_number(page, len(ids))
    infos = s.catalog.versions_by_ids(ids[(page - 1) * PAGE_SIZE: page * PAGE_SIZE])
    rows = [{"info": i, "cells": [pv.model_cell(i, c) for c in columns[1:]]} for i in infos]  # [0]: version link
    nodes, edges, shown = pc.lineage_around(s.catalog, model, LINEAGE_NODES)
    graph = pv.lineage_layout([{**n, "key": n["id"]} for n in nodes], edges, focus_model=model)
    return render(request, "model.html", title=model, model=model, columns=columns, rows=rows, sort=sort,
                  desc=desc, page=page, pages=pages, total=len(ids), tags=s.tags(model),
                  charts=pv.metric_charts(series), graph=graph,
                  graph_shown=shown)


@pages.get("/versions/{ref:path}", response_class=HTMLResponse)
@html_errors
def version_page(request: Request, ref: str, s=STORE):
    info = s.resolve(ref)
    doc = s.show(info.ref)
    lin = s.lineage(info.ref, max_depth=4)
    graph = pv.version_lineage(lin, info)
    tensors = doc["tensors"]
    metrics = [{"dataset": ds, "name": n, "value": v} for ds, per in sorted(info.metrics.items())
               for n, v in sorted(per.items())]
    cfg = request.app.state.config
    ops, ops_error = None, None
    try:
        g = graph_store.of_version(s, info)
        ops = pg.op_summary(g) if g is not None else None
    except ModelstoreError as exc:  # a missing or corrupt graph blob: say so, still show the version
        ops_error = f"{exc.kind}: {exc}"
    return render(request, "version.html", title=info.ref, info=info, doc=doc, metrics=metrics,
                  tensors=tensors[:TENSOR_ROWS], n_tensors=len(tensors), lineage=lin, graph=graph,
                  needs_token=cfg.token is not None, ref_arg=info.ref, figures=pg.version_figures(info),
                  cpu_note=pg.cpu_assumption(info.meta), ops=ops, ops_error=ops_error)


def _examples(keys: dict, models: list[str]) -> list[str]:
    ex = []
    if keys["metrics"] and keys["datasets"]:
        m, d = keys["metrics"][0], keys["datasets"][0]
        ex.append(f"{m}@{d} > 0.5 order by {m}@{d} desc limit 20")
        ex.append(f"order by {m} desc limit 10")
    if models:
        ex.append(f'model = "{models[0]}" order by version desc')
    ex += ["size < 100MB order by size", "has(tag)", "order by created desc limit 20"]
    if keys["attributes"]:
        ex.append(f"has({keys['attributes'][0]})")
    return ex


@pages.get("/query", response_class=HTMLResponse)
@html_errors
def query_page(request: Request, q: str = "", s=STORE):
    from modelstore.query import cell, format_cell, query_ids
    from modelstore.query_parse import parse

    keys = pc.all_keys(s.catalog)
    ctx = {"title": "Query", "q": q, "keys": keys, "error": None, "rows": [], "total": 0, "columns": [],
           "points": [], "numeric_keys": [], "examples": _examples(keys, [m for m, _ in s.models()]),
           "default_x": "size", "default_y": "params", "lower": []}
    if not q.strip():
        return render(request, "query.html", **ctx)
    try:
        parsed = parse(q)
        ids, _ = query_ids(s.catalog, parsed)
    except InvalidInputError as exc:
        return render(request, "query.html", status=400, **{**ctx, "error": str(exc)})
    infos = s.catalog.versions_by_ids(ids[:QUERY_ROWS])
    qkeys = [k for k in parsed.keys if not (k.builtin and k.name in ("model", "version"))]
    rows = [{"info": i, "cells": [format_cell(cell(i, k, parsed.family)) for k in qkeys]} for i in infos]
    points = [{"ref": i.ref, "v": pv.numeric_values(i)} for i in infos]
    numeric = sorted({k for p in points for k in p["v"]}, key=lambda k: ("@" not in k, k))
    metric_keys = [k for k in numeric if "@" in k]
    wanted = [k for k in numeric if any(k == qk.text or k.split("@")[0] == qk.name for qk in qkeys)]
    default_y = next((k for k in wanted if "@" in k), metric_keys[0] if metric_keys else "params")
    ctx.update(rows=rows, total=len(ids), columns=[k.text for k in qkeys], points=points, numeric_keys=numeric,
               default_y=default_y, lower=[k for k in numeric if pv.lower_is_better(k)])
    return render(request, "query.html", **ctx)


@pages.get("/compare", response_class=HTMLResponse)
@html_errors
def compare_page(request: Request, v: list[str] = REFS, s=STORE):
    refs = [r.strip() for r in v if r.strip()]
    if not refs:
        return render(request, "compare.html", title="Compare", infos=[], grid=None, refs=[])
    if not 2 <= len(refs) <= MAX_COMPARE:
        raise InvalidInputError(f"compare 2 to {MAX_COMPARE} versions (got {len(refs)})")
    infos = [s.resolve(r) for r in refs]
    return render(request, "compare.html", title="Compare", infos=infos, grid=pv.compare_grid(infos), refs=refs)


@pages.get("/diff", response_class=HTMLResponse)
@html_errors
def diff_page(request: Request, a: str = "", b: str = "", s=STORE):
    from modelstore.diff_render import structure_notes

    if not a and not b:
        return render(request, "diff.html", title="Diff", doc=None, a="", b="")
    if not a or not b:
        raise InvalidInputError("a diff needs two versions: /diff?a=REF&b=REF")
    ia, ib = s.resolve(a), s.resolve(b)  # refs only: never a path on the server's disk
    d = s.diff(ia, ib)
    doc = d.to_dict()
    for t in doc["tensors"]:
        t["shape"] = pv.shape_text(t)
    gd = d.graph
    graph = None
    if gd is not None:
        graph = {"counts": pg.graph_counts(gd), "rows": pg.node_changes(gd), "figures": pg.figure_rows(gd["figures"]),
                 "identical": gd["identical"], "limit": pg.NODE_ROWS}
    one_sided = gd is None and (graph_store.ATTR in ia.meta) != (graph_store.ATTR in ib.meta)
    return render(request, "diff.html", title=f"Diff {ia.ref} → {ib.ref}", doc=doc, a=ia.ref, b=ib.ref,
                  notes=structure_notes(d), lists=pv.diff_lists(doc), heat=pv.diff_heatmap(doc),
                  summary_line=d.summary_line(), graph=graph, graph_one_sided=one_sided)


# everything the dashboard serves, as the one `router` app.py mounts
router = APIRouter(include_in_schema=False)
router.include_router(assets)
router.include_router(pages_login.router)
router.include_router(pages)
