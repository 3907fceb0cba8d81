"""Turn store answers into what the dashboard templates show: table columns and cells, chart
series, the lineage graph's layout, the diff heat-map, the compare grid.

Pure functions over Store / VersionInfo / diff dicts (no HTTP, no HTML), so each is testable alone.
"""

from __future__ import annotations

import math
import re

from modelstore.catalog import VersionInfo
from modelstore.humanize import scaled

# -- values ---------------------------------------------------------------------------------
LOWER_IS_BETTER = re.compile(r"(^|[_.@-])(loss|err|error|latency|time|ms|size|params|stored|perplexity|ppl|"
                             r"wer|cer|mse|mae|rmse|bytes|memory|mem|flops)([_.@-]|$)", re.IGNORECASE)


def lower_is_better(key: str) -> bool:
    """A guess of the better direction of a key from its name (the user can flip it)."""
    return bool(LOWER_IS_BETTER.search(key.split("@", 1)[0]) or key.split("@", 1)[0] in ("size", "params", "stored"))


def fmt(value) -> str:
    """A cell value as short text."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.3e}"
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "–"
    return str(value)


def human_bytes(n) -> str:
    return "–" if n is None else scaled(n, ("B", "kB", "MB", "GB", "TB"))


def human_count(n) -> str:
    return "–" if n is None else scaled(n, ("", "K", "M", "B"), sep="")


def sort_value(value) -> str:
    """A cell's data-sort-value: numbers sort numerically in static/table.js, the rest as text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (int, float)) and math.isfinite(value):
        return repr(float(value))
    return str(value)


def numeric_values(info: VersionInfo) -> dict[str, float]:
    """Every numeric key of a version, named as in a query: built-ins, user attributes, name@dataset."""
    out = {"size": float(info.size), "params": float(info.params), "stored": float(info.stored),
           "tensors": float(info.n_tensors), "version": float(info.number)}
    for k, v in info.meta.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in out and math.isfinite(v):
            out[k] = float(v)
    for ds, per in info.metrics.items():
        for name, v in per.items():
            out[f"{name}@{ds}"] = v
    return out


# -- request errors -------------------------------------------------------------------------
_TYPE_HINTS = {"bool": "use true/false, 1/0 or yes/no", "int": "use a whole number", "float": "use a number"}


def param_errors_text(errors: list[dict]) -> str:
    """FastAPI's validation errors of a page's query parameters as one line for the error page:
    `desc='maybe': use true/false, 1/0 or yes/no; page='x': use a whole number`."""
    parts = []
    for e in errors[:5]:
        name = ".".join(str(p) for p in e.get("loc", ())[1:]) or "request"
        kind = str(e.get("type", "")).split("_", 1)[0]
        value = e.get("input")
        shown = f"={str(value)[:60]!r}" if isinstance(value, (str, int, float)) else ""
        parts.append(f"{name}{shown}: {_TYPE_HINTS.get(kind) or e.get('msg', 'invalid value')}")
    return "bad query parameter " + "; ".join(parts) if parts else "bad request parameters"


# -- model page -----------------------------------------------------------------------------
BUILTIN_COLUMNS = (("version", "version"), ("created", "created"), ("size", "size"), ("params", "params"),
                   ("stored", "new bytes"), ("author", "author"), ("message", "message"))


def model_columns(attr_keys: list[str], metric_keys: list[tuple[str, str]]) -> list[dict]:
    """The sortable columns of a model's versions table: {key (query key), label, kind}.

    Order: version, the metrics (what the page is for), size and params, user attributes,
    then when, who and why."""
    b = {k: {"key": k, "label": label, "kind": "builtin"} for k, label in BUILTIN_COLUMNS}
    return ([b["version"]]
            + [{"key": f"{n}@{d}", "label": f"{n}", "sub": d, "kind": "metric"} for n, d in metric_keys[:16]]
            + [b["size"], b["params"]]
            + [{"key": k, "label": k, "kind": "attr"} for k in attr_keys[:12]]
            + [b["created"], b["author"], b["message"], b["stored"]])


def order_clause(col: dict, desc: bool) -> str:
    """`order by ...` for a column (user keys in backticks; they are validated names)."""
    if col["kind"] == "builtin":
        key = col["key"]
    elif col["kind"] == "attr":
        key = f"`{col['key']}`"
    else:
        name, ds = col["key"].split("@", 1)
        key = f"`{name}`@{ds}"
    return f" order by {key}{' desc' if desc else ''}"


def model_cell(info: VersionInfo, col: dict) -> tuple[str, str]:
    """(css class, text) of a column's cell for a version."""
    key = col["key"]
    if col["kind"] == "builtin":
        if key == "version":
            return "num", f"@{info.number}"
        if key in ("size", "stored"):
            return "num", human_bytes(getattr(info, key))
        if key == "params":
            return "num", human_count(info.params)
        if key == "created":
            return "nowrap", info.created.replace("T", " ")
        return ("msg" if key == "message" else ""), getattr(info, key)
    if col["kind"] == "attr":
        v = info.meta.get(key)
    else:
        name, ds = key.split("@", 1)
        v = info.metrics.get(ds, {}).get(name)
    return ("num" if isinstance(v, (int, float)) and not isinstance(v, bool) else ""), fmt(v)


def metric_charts(series: dict) -> list[dict]:
    """One chart per metric name: {"name", "traces": [{name: dataset, x, y}]} (plotly lines)."""
    return [{"name": name, "traces": [{"name": ds, "x": xs, "y": ys} for ds, (xs, ys) in per.items()]}
            for name, per in sorted(series.items())]


# -- lineage graph ----------------------------------------------------------------------------
def lineage_layout(nodes: list[dict], edges: list[tuple], focus_model: str | None = None,
                   focus: str | None = None) -> dict:
    """Positions for an SVG lineage graph: one horizontal lane per model, one column per
    version in commit order (a child always right of its parents, even within one second).

    nodes: {key, model, number, created}; edges: (parent key, child key). Returns
    {width, height, lanes: [{model, y}], nodes: [{key, ref, label, x, y, focus}], edges: [{d, cross}]}.
    """
    import heapq

    if not nodes:
        return {"width": 0, "height": 0, "lanes": [], "nodes": [], "edges": []}
    by_key = {n["key"]: n for n in nodes}
    edges = [(p, c) for p, c in edges if p in by_key and c in by_key and p != c]
    waiting = {k: 0 for k in by_key}
    children: dict = {}
    for p, c in edges:
        waiting[c] += 1
        children.setdefault(p, []).append(c)

    def rank(k):
        n = by_key[k]
        return (n["created"] or "", n["model"], n["number"], str(k))

    ready = [(rank(k), k) for k, w in waiting.items() if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:  # topological order, earliest commit first among the ready ones
        _, k = heapq.heappop(ready)
        order.append(k)
        for c in children.get(k, ()):
            waiting[c] -= 1
            if waiting[c] == 0:
                heapq.heappush(ready, (rank(c), c))
    order += sorted((k for k in by_key if k not in set(order)), key=rank)  # a cycle: append the rest
    models = [focus_model] if focus_model in {n["model"] for n in nodes} else []
    for k in order:
        if by_key[k]["model"] not in models:
            models.append(by_key[k]["model"])
    step_x, lane_h, left, top = 52, 56, 200, 28
    pos, out_nodes = {}, []
    for col, k in enumerate(order):
        n = by_key[k]
        x, y = left + col * step_x, top + models.index(n["model"]) * lane_h
        pos[k] = (x, y)
        out_nodes.append({"key": k, "ref": f"{n['model']}@{n['number']}", "label": f"@{n['number']}",
                          "x": x, "y": y, "focus": k == focus})
    out_edges = []
    for p, c in edges:
        (x1, y1), (x2, y2) = pos[p], pos[c]
        mid = (x1 + x2) / 2
        d = f"M{x1},{y1} L{x2},{y2}" if y1 == y2 else f"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}"
        out_edges.append({"d": d, "cross": y1 != y2})
    return {"width": left + len(order) * step_x, "height": top + len(models) * lane_h - 12,
            "lanes": [{"model": m, "y": top + i * lane_h} for i, m in enumerate(models)],
            "nodes": out_nodes, "edges": out_edges}


def version_lineage(lin: dict, info: VersionInfo) -> dict:
    """The lineage graph of one version from store.lineage(ref) (ancestors and descendants)."""
    entries = [{"ref": info.ref, "created": info.created, "parents": info.parents}]
    entries += lin.get("ancestors", []) + lin.get("descendants", [])
    nodes, seen = [], set()
    for e in entries:
        if e["ref"] in seen:
            continue
        seen.add(e["ref"])
        model, number = e["ref"].rsplit("@", 1)
        nodes.append({"key": e["ref"], "model": model, "number": int(number), "created": e["created"]})
    edges = [(p, e["ref"]) for e in entries for p in e.get("parents", []) if p in seen]
    return lineage_layout(nodes, edges, focus_model=info.model, focus=info.ref)


# -- compare ----------------------------------------------------------------------------------
_COMPARE_BUILTINS = ("model", "version", "created", "author", "message", "size", "params", "stored", "dtype",
                     "tensors", "format", "parent", "tag", "content_id")


def compare_grid(infos: list[VersionInfo]) -> dict:
    """Rows of a side-by-side comparison: attributes, then metrics per dataset; each row knows
    whether its values differ (for the only-differences toggle)."""
    def row(label, values, group, raw=None):
        raw = values if raw is None else raw
        return {"label": label, "group": group, "cells": [fmt(v) for v in values],
                "same": all(r == raw[0] for r in raw[1:])}

    attrs = [row(k, [i.attributes()[k] for i in infos], "built-in") for k in _COMPARE_BUILTINS]
    for k in ("size", "stored"):
        r = next(r for r in attrs if r["label"] == k)
        r["cells"] = [human_bytes(i.attributes()[k]) for i in infos]
    user = sorted({k for i in infos for k in i.meta})
    attrs += [row(k, [i.meta.get(k) for i in infos], "metadata") for k in user]
    pairs = sorted({(ds, n) for i in infos for ds, per in i.metrics.items() for n in per})
    metrics = [row(f"{n}", [i.metrics.get(ds, {}).get(n) for i in infos], ds) for ds, n in pairs]
    for r, (ds, n) in zip(metrics, pairs):
        vals = [i.metrics.get(ds, {}).get(n) for i in infos]
        known = [v for v in vals if v is not None]
        if len(known) > 1 and not r["same"]:
            best = min(known) if lower_is_better(n) else max(known)
            r["best"] = [v == best for v in vals]
    names = sorted({n for _, n in pairs})
    charts = [{"name": n, "traces": [{"name": i.ref, "x": [ds for ds, m in pairs if m == n],
                                      "y": [i.metrics.get(ds, {}).get(n) for ds, m in pairs if m == n]}
                                     for i in infos]} for n in names]
    return {"attrs": attrs, "metrics": metrics, "charts": charts}


# -- diff -------------------------------------------------------------------------------------
def diff_heatmap(doc: dict, max_rows: int = 300, max_cols: int = 80) -> dict | None:
    """Blocks (rows) × tensor names within a block (columns) → log10 of the relative change."""
    rows: list[str] = []
    cols: list[str] = []
    cells: dict[tuple[str, str], float | None] = {}
    for t in doc["tensors"]:
        block = t.get("block") or ""
        name = t["name"]
        suffix = name[len(block) + 1:] if block and name.startswith(block + ".") else name
        if block not in rows:
            rows.append(block)
        if suffix not in cols:
            cols.append(suffix)
        cells[(block, suffix)] = t.get("rel_l2")
    if not cells:
        return None
    rows, cols = rows[:max_rows], cols[:max_cols]
    z, text = [], []
    for r in rows:
        zr, tr = [], []
        for c in cols:
            v = cells.get((r, c))
            zr.append(math.log10(v) if v is not None and v > 0 else (-12 if v == 0 else None))
            tr.append("–" if v is None else f"{v:.3g}")
        z.append(zr)
        text.append(tr)
    return {"x": cols, "y": rows, "z": z, "text": text}


def diff_lists(doc: dict) -> dict:
    """Tensors that changed structure, by kind (for the structure panel)."""
    out: dict[str, list[str]] = {}
    for t in doc["tensors"]:
        if t["status"] in ("added", "removed", "renamed", "reshaped", "retyped"):
            label = t["name"]
            if t["status"] == "renamed":
                label = f"{t['renamed_from']} → {t['name']}"
            elif t["status"] == "reshaped":
                label = f"{t['name']} {tuple(t['shape_a'])} → {tuple(t['shape_b'])}"
            elif t["status"] == "retyped":
                label = f"{t['name']} {t['dtype_a']} → {t['dtype_b']}"
            out.setdefault(t["status"], []).append(label)
    return out


def shape_text(t: dict) -> str:
    a, b = t.get("shape_a"), t.get("shape_b")
    if a is not None and b is not None and a != b:
        return f"({', '.join(map(str, a))}) → ({', '.join(map(str, b))})"
    s = b if b is not None else a
    return "–" if s is None else "(" + ", ".join(map(str, s)) + ")"
