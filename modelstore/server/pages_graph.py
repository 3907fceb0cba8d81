"""What the dashboard shows of a model's graph: the hardware figures of a version or of both
sides of a diff, a graph diff's node changes (the rows of `modelstore diff --graph`), and the
op list of a stored graph.

Pure functions over VersionInfo / graph dicts / graph_diff results (no HTTP, no HTML).
"""

from __future__ import annotations

from collections import Counter

from modelstore.server.pages_views import human_bytes, human_count

# (key, label, unit kind); params and size are catalog built-ins, the rest come with a graph
FIGURES = (("params", "parameters", "count"), ("size", "weight bytes", "bytes"), ("flops", "flops / inference", "count"),
           ("mem_infer", "memory to infer", "bytes"), ("cpu_ghz_min", "min CPU clock", "hz"))
NODE_ROWS = 500  # graph changes / nodes listed on a page


def human_hz(ghz) -> str:
    """A clock given in GHz as short text in the unit that reads best (0.0012 GHz -> 1.2 MHz)."""
    if ghz is None:
        return "–"
    hz = float(ghz) * 1e9
    for unit, scale in (("GHz", 1e9), ("MHz", 1e6), ("kHz", 1e3)):
        if abs(hz) >= scale:
            return f"{hz / scale:.3g} {unit}"
    return f"{hz:.3g} Hz"


def _text(kind: str, v) -> str:
    if v is None:
        return "–"
    return {"count": human_count, "bytes": human_bytes, "hz": human_hz}[kind](v)


def version_figures(info) -> list[dict]:
    """The hardware figures of a version, {key, label, text, exact}, when it has graph-derived
    ones (committed from a graph); [] otherwise (params and size are in its facts anyway)."""
    values = {"params": info.params, "size": info.size}
    for k in ("flops", "mem_infer", "cpu_ghz_min"):
        v = info.meta.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            values[k] = v
    if len(values) == 2:
        return []
    return [{"key": k, "label": label, "text": _text(kind, values[k]), "exact": _exact(values[k])}
            for k, label, kind in FIGURES if k in values]


def cpu_assumption(meta: dict) -> str | None:
    """The budget cpu_ghz_min assumes, as a sentence (None without one)."""
    from modelstore.hwfigures import BUDGET_KEY, OPS_KEY

    b, ops = meta.get(BUDGET_KEY), meta.get(OPS_KEY)
    if b is None or "cpu_ghz_min" not in meta:
        return None
    return f"min CPU clock for one inference in {b:g} s at {ops if ops is not None else 1:g} op/cycle"


def _exact(v) -> str:
    if v is None:
        return ""
    return f"{v:,}" if isinstance(v, int) else f"{v:.6g}"


def figure_rows(figs: dict) -> list[dict]:
    """A diff's per-side figures ({"a": {...}, "b": {...}}) as rows {label, a, b, change, cls}:
    change is B/A (×) or the sign of a difference; cls tells up from down."""
    a, b = figs.get("a") or {}, figs.get("b") or {}
    rows = []
    for k, label, kind in FIGURES:
        va, vb = a.get(k), b.get(k)
        if va is None and vb is None:
            continue
        change, cls = "", "same"
        if va is not None and vb is not None and va != vb:
            cls = "up" if vb > va else "down"
            change = f"×{vb / va:.3g}" if va else ("+" + _text(kind, vb))
        rows.append({"key": k, "label": label, "a": _text(kind, va), "b": _text(kind, vb),
                     "a_exact": _exact(va), "b_exact": _exact(vb), "change": change, "cls": cls})
    return rows


def _io(n: dict) -> str:
    return f"{', '.join(x or '∅' for x in n['inputs'])} → {', '.join(n['outputs'])}"


def node_changes(gd: dict) -> list[dict]:
    """One row per change {change, name, op, detail}, as `modelstore diff --graph` prints them."""
    rows = [{"change": "added", "name": n["name"], "op": n["op_type"], "detail": _io(n)} for n in gd["added"]]
    rows += [{"change": "removed", "name": n["name"], "op": n["op_type"], "detail": _io(n)} for n in gd["removed"]]
    for c in gd["changed"]:
        op = c["op_type_b"] if c["op_type_a"] == c["op_type_b"] else f"{c['op_type_a']} → {c['op_type_b']}"
        detail = ([f"{k}: {_val(v[0])} → {_val(v[1])}" for k, v in c["attributes"].items()]
                  + [f"input {k} shape: {_shape(v[0])} → {_shape(v[1])}" for k, v in c.get("weight_shapes", {}).items()]
                  + [{"op_type": "op type", "inputs": "number of inputs", "outputs": "number of outputs"}.get(w, w)
                     for w in c["changes"] if w not in ("attributes", "weight_shapes")])
        name = c["name"] if c["name"] == c["name_a"] else f"{c['name_a']} → {c['name']}"
        rows.append({"change": "changed", "name": name, "op": op, "detail": "; ".join(detail)})
    rows += [{"change": "rewired", "name": r["node"], "op": "", "detail": f"input {r['input']}: {r['from']} → {r['to']}"}
             for r in gd["rewired"]]
    for what, key in (("input", "inputs"), ("output", "outputs")):
        io = gd.get(key) or {}
        rows += [{"change": f"{what} added", "name": n, "op": "", "detail": ""} for n in io.get("added", [])]
        rows += [{"change": f"{what} removed", "name": n, "op": "", "detail": ""} for n in io.get("removed", [])]
        rows += [{"change": f"{what} renamed", "name": f"{r['a']} → {r['b']}", "op": "", "detail": ""}
                 for r in io.get("renamed", [])]
        rows += [{"change": f"{what} changed", "name": c["name"], "op": "",
                  "detail": f"{_shape(c['shape_a'])} {c['dtype_a']} → {_shape(c['shape_b'])} {c['dtype_b']}"}
                 for c in io.get("changed", [])]
    return rows


def _shape(s) -> str:
    return "–" if s is None else "(" + ", ".join(map(str, s)) + ")"


def _val(v) -> str:
    return "unset" if v is None else str(v)


def graph_counts(gd: dict) -> dict:
    """Counts for the graph stats row of the diff page."""
    return {"nodes_a": gd["nodes_a"], "nodes_b": gd["nodes_b"], "unchanged": gd["unchanged"],
            "added": len(gd["added"]), "removed": len(gd["removed"]), "changed": len(gd["changed"]),
            "rewired": len(gd["rewired"])}


def op_summary(g: dict) -> dict:
    """A stored graph as {"ops": [(op type, count)] most used first, "nodes": [{name, op, io}]
    in graph order (the first NODE_ROWS), "n": node count, "inputs", "outputs"}."""
    from modelstore.graph import node_label

    nodes = g.get("nodes") or []
    counts = Counter((f"{n['domain']}." if n.get("domain") else "") + n["op_type"] for n in nodes)
    return {"n": len(nodes), "ops": sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])),
            "nodes": [{"name": node_label(n), "op": n["op_type"], "io": _io(n)} for n in nodes[:NODE_ROWS]],
            "inputs": [f"{x['name']} {_shape(x.get('shape'))} {x.get('dtype') or ''}".strip() for x in g.get("inputs") or []],
            "outputs": [f"{x['name']} {_shape(x.get('shape'))} {x.get('dtype') or ''}".strip() for x in g.get("outputs") or []]}
