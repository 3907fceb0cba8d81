"""Graph diff: which nodes were added, removed or changed, and which edges were rewired.

Matching (A's nodes to B's), so that a layer inserted in the middle is one insertion:
1. by name: a non-empty name unique on each side pairs the two nodes;
2. by wiring: an unmatched B node pairs with an unmatched A node reading the counterpart
   of one of its inputs at the same slot (the same graph input or initializer, or the same
   output of a matched node), in tiers: same op, attributes and weight names first; then
   same op type; then same number of inputs and outputs (Relu -> Sigmoid: one changed
   node). After any looser match the tight tier runs again, so matching flows through an
   inserted layer from both ends (weights anchor the far side). Then a pair whose weights changed shape moves to an unmatched B node with exactly the
   A node's op, attributes and weight shapes, if there is one (torch names nodes by module
   index, so after an insertion A's ``/2/Gemm`` is B's ``/4/Gemm``);
3. by order, for what is left (nodes no edge reaches, e.g. Constants): the longest common
   subsequence of (domain, op type, attributes) in graph order, then inside each stretch
   that differs equal op types, then same-arity nodes position by position.
The rest is added or removed.
A matched pair is *changed* when its op type, domain, attributes, number of
inputs/outputs, or the shapes of the weights it reads differ (``weight_shapes``:
``{input slot: [old shape, new shape]}``). Edges are compared through the matching, not by
tensor names (an exporter renames tensors freely): input k of a matched node B reads from the
counterpart of what A's input k read from (a matched node's same output slot, the same
graph input, the same initializer); if not, the edge is *rewired* — unless the new or
old producer is an added or removed node, which the insertion or removal already says.
"""

from __future__ import annotations

import json
from difflib import SequenceMatcher

from modelstore.graph import node_label

ATTR_LIMIT = 200  # characters of an attribute value shown in a change


def _key(n: dict, attrs: bool = True):
    k = (n["domain"], n["op_type"])
    if attrs:
        k += (json.dumps(n["attributes"], sort_keys=True),)
    return k


def match(ga: dict, gb: dict) -> tuple[dict[int, int], dict[str, int]]:
    """(A node index -> B node index, counts by how: {"name", "wiring", "order"})."""
    na, nb = ga["nodes"], gb["nodes"]
    pairs: dict[int, int] = {}
    names_a = _unique_names(na)
    names_b = _unique_names(nb)
    for name, i in names_a.items():
        j = names_b.get(name)
        if j is not None:
            pairs[i] = j
    by_name = len(pairs)
    _by_wiring(ga, gb, pairs)
    by_wiring = len(pairs) - by_name
    _refine(ga, gb, pairs)
    left_a = [i for i in range(len(na)) if i not in pairs]
    taken_b = set(pairs.values())
    left_b = [j for j in range(len(nb)) if j not in taken_b]
    _structural(na, nb, left_a, left_b, pairs)
    return pairs, {"name": by_name, "wiring": by_wiring, "order": len(pairs) - by_name - by_wiring}


def _unique_names(nodes: list[dict]) -> dict[str, int]:
    seen: dict[str, int] = {}
    dup = set()
    for i, n in enumerate(nodes):
        if n["name"]:
            if n["name"] in seen:
                dup.add(n["name"])
            seen[n["name"]] = i
    return {k: v for k, v in seen.items() if k not in dup}


def _tight(n: dict, inits: dict) -> tuple:
    """Op, attributes, and which weights (name and shape) each input slot reads."""
    return _key(n) + (tuple((x, tuple(inits[x] or ())) if x in inits else None for x in n["inputs"]),)


def _weight_shapes(n: dict, inits: dict) -> list:
    return [inits.get(x) for x in n["inputs"]]


def _by_wiring(ga: dict, gb: dict, pairs: dict[int, int]) -> None:
    """Grow the matching along edges: an unmatched B node pairs with an unmatched A node that
    reads the counterpart of one of its inputs (same slot). Tiers, loosest last, and the
    tightest tier is retried after every match: same op, attributes and weight names; same
    op type; same number of inputs and outputs (a changed node)."""
    na, nb = ga["nodes"], gb["nodes"]
    inits_a, inits_b = ga.get("initializers") or {}, gb.get("initializers") or {}
    inputs_a = {x["name"] for x in ga.get("inputs") or []}
    consumers: dict[tuple[str, int], list[int]] = {}
    for i, n in enumerate(na):
        for k, x in enumerate(n["inputs"]):
            if x:
                consumers.setdefault((x, k), []).append(i)
    prod_b = _producers(gb)
    tiers = (
        lambda a, b: _tight(a, inits_a) == _tight(b, inits_b),
        lambda a, b: _key(a, False) == _key(b, False),
        lambda a, b: len(a["inputs"]) == len(b["inputs"]) and len(a["outputs"]) == len(b["outputs"]),
    )
    tier = 0
    while tier < len(tiers):
        same = tiers[tier]
        found = False
        inv = {jj: i for i, jj in pairs.items()}
        for j, b in enumerate(nb):
            if j in inv:
                continue
            for k, x in enumerate(b["inputs"]):
                src = prod_b.get(x) if x else None
                if src is None:
                    continue
                if src[0] == "node":
                    i_src = inv.get(src[1])
                    xa = na[i_src]["outputs"][src[2]] if i_src is not None and src[2] < len(na[i_src]["outputs"]) else None
                else:
                    xa = x if x in (inits_a if src[0] == "init" else inputs_a) else None
                cand = next((i for i in consumers.get((xa, k), ()) if i not in pairs and same(na[i], b)), None)
                if cand is not None:
                    pairs[cand] = j
                    inv[j] = cand
                    found = True
                    break
        if found and tier > 0:
            tier = 0  # a looser match may unlock tight ones downstream
        elif not found:
            tier += 1


def _refine(ga: dict, gb: dict, pairs: dict[int, int]) -> None:
    """Undo a shift: a pair whose weights changed shape moves to an unmatched B node that has
    the A node's op, attributes and weight shapes exactly (index-named layers after an
    insertion: A's ``/2/Gemm`` is B's ``/4/Gemm``, B's ``/2/Gemm`` is new)."""
    inits_a, inits_b = ga.get("initializers") or {}, gb.get("initializers") or {}

    def sig(n, inits):
        return _key(n) + (tuple(tuple(inits[x] or ()) if x in inits else None for x in n["inputs"]),)

    taken = set(pairs.values())
    free: dict[tuple, list[int]] = {}
    for j, n in enumerate(gb["nodes"]):
        if j not in taken:
            free.setdefault(sig(n, inits_b), []).append(j)
    for i, j in sorted(pairs.items()):
        a, b = ga["nodes"][i], gb["nodes"][j]
        if _key(a, False) != _key(b, False) or _weight_shapes(a, inits_a) == _weight_shapes(b, inits_b):
            continue
        cands = free.get(sig(a, inits_a))
        if cands:
            j2 = min(cands, key=lambda c: (c < j, abs(c - j)))  # the nearest one after j first
            cands.remove(j2)
            pairs[i] = j2
            free.setdefault(sig(b, inits_b), []).append(j)


def _structural(na, nb, left_a: list[int], left_b: list[int], pairs: dict[int, int]) -> None:
    ka = [_key(na[i]) for i in left_a]
    kb = [_key(nb[j]) for j in left_b]
    sm = SequenceMatcher(None, ka, kb, autojunk=False)
    for tag, a0, a1, b0, b1 in sm.get_opcodes():
        if tag == "equal":
            for x in range(a1 - a0):
                pairs[left_a[a0 + x]] = left_b[b0 + x]
        elif tag == "replace":
            _pair_replaced(na, nb, left_a[a0:a1], left_b[b0:b1], pairs)


def _pair_replaced(na, nb, ia: list[int], ib: list[int], pairs: dict[int, int]) -> None:
    """Inside a stretch that differs: equal op types first (LCS), then same-arity nodes in order."""
    sm = SequenceMatcher(None, [_key(na[i], False) for i in ia], [_key(nb[j], False) for j in ib], autojunk=False)
    rest_a, rest_b = [], []
    for tag, a0, a1, b0, b1 in sm.get_opcodes():
        if tag == "equal":
            for x in range(a1 - a0):
                pairs[ia[a0 + x]] = ib[b0 + x]
        elif tag == "replace":
            for x in range(min(a1 - a0, b1 - b0)):
                i, j = ia[a0 + x], ib[b0 + x]
                if len(na[i]["inputs"]) == len(nb[j]["inputs"]) and len(na[i]["outputs"]) == len(nb[j]["outputs"]):
                    pairs[i] = j
                else:
                    rest_a.append(i)
                    rest_b.append(j)
            rest_a.extend(ia[a0 + min(a1 - a0, b1 - b0):a1])
            rest_b.extend(ib[b0 + min(a1 - a0, b1 - b0):b1])


def _short(v) -> object:
    text = json.dumps(v, sort_keys=True)
    return v if len(text) <= ATTR_LIMIT else text[:ATTR_LIMIT] + "..."


def _producers(g: dict) -> dict[str, tuple]:
    """tensor name -> ("node", index, output slot) | ("input", name) | ("init", name)."""
    out: dict[str, tuple] = {}
    for x in g.get("inputs") or []:
        out[x["name"]] = ("input", x["name"])
    for name in g.get("initializers") or {}:
        out[name] = ("init", name)
    for i, n in enumerate(g["nodes"]):
        for k, o in enumerate(n["outputs"]):
            if o:
                out[o] = ("node", i, k)
    return out


def _describe(src: tuple | None, g: dict) -> str:
    if src is None:
        return "(nothing)"
    if src[0] == "node":
        n = g["nodes"][src[1]]
        return f"{node_label(n)}[{src[2]}]" if len(n["outputs"]) > 1 else node_label(n)
    return f"{src[0]}:{src[1]}"


def _node_doc(n: dict) -> dict:
    return {"name": node_label(n), "op_type": n["op_type"], "domain": n["domain"],
            "inputs": list(n["inputs"]), "outputs": list(n["outputs"])}


def _io_diff(xa: list[dict], xb: list[dict]) -> dict:
    """Graph inputs/outputs by name; as many unpaired on each side pair by position as renamed
    (exporters number their tensors: output "7" becomes "11")."""
    a = {x["name"]: x for x in xa}
    b = {x["name"]: x for x in xb}
    only_a = [x for x in xa if x["name"] not in b]
    only_b = [x for x in xb if x["name"] not in a]
    pairs = [(x, x) for x in xa if x["name"] in b]
    pairs = [(a[x["name"]], b[x["name"]]) for x, _ in pairs]
    renamed = []
    if len(only_a) == len(only_b):
        renamed = [{"a": x["name"], "b": y["name"]} for x, y in zip(only_a, only_b)]
        pairs += list(zip(only_a, only_b))
        only_a = only_b = []
    changed = [{"name": y["name"], "shape_a": x["shape"], "shape_b": y["shape"], "dtype_a": x["dtype"],
                "dtype_b": y["dtype"]} for x, y in pairs if (x["shape"], x["dtype"]) != (y["shape"], y["dtype"])]
    return {"added": [x["name"] for x in only_b], "removed": [x["name"] for x in only_a], "renamed": renamed,
            "changed": changed}


def graph_diff(ga: dict, gb: dict) -> dict:
    """The structural difference from graph A to graph B (normalized graphs); JSON-able."""
    pairs, how = match(ga, gb)
    na, nb = ga["nodes"], gb["nodes"]
    inv = {j: i for i, j in pairs.items()}
    added = [_node_doc(nb[j]) for j in range(len(nb)) if j not in inv]
    removed = [_node_doc(na[i]) for i in range(len(na)) if i not in pairs]
    changed = []
    for i, j in sorted(pairs.items(), key=lambda p: p[1]):
        a, b = na[i], nb[j]
        what, attrs = [], {}
        if a["op_type"] != b["op_type"]:
            what.append("op_type")
        if a["domain"] != b["domain"]:
            what.append("domain")
        if a["attributes"] != b["attributes"]:
            what.append("attributes")
            for k in sorted(set(a["attributes"]) | set(b["attributes"])):
                va, vb = a["attributes"].get(k), b["attributes"].get(k)
                if va != vb:
                    attrs[k] = [_short(va), _short(vb)]
        wa, wb = _weight_shapes(a, ga.get("initializers") or {}), _weight_shapes(b, gb.get("initializers") or {})
        if len(a["inputs"]) != len(b["inputs"]):
            what.append("inputs")
        elif wa != wb:
            what.append("weight_shapes")
        weights = {str(k): [x, y] for k, (x, y) in enumerate(zip(wa, wb)) if x != y} if "weight_shapes" in what else {}
        if len(a["outputs"]) != len(b["outputs"]):
            what.append("outputs")
        if what:
            changed.append({"name": node_label(b), "name_a": node_label(a), "op_type_a": a["op_type"],
                            "op_type_b": b["op_type"], "changes": what, "attributes": attrs,
                            "weight_shapes": weights})
    rewired = _rewired(ga, gb, pairs, inv)
    unchanged = len(pairs) - len(changed)
    return {
        "nodes_a": len(na), "nodes_b": len(nb), "unchanged": unchanged, "matched_by": how,
        "added": added, "removed": removed, "changed": changed, "rewired": rewired,
        "inputs": _io_diff(ga.get("inputs") or [], gb.get("inputs") or []),
        "outputs": _io_diff(ga.get("outputs") or [], gb.get("outputs") or []),
        "initializers": {"added": sorted(set(gb.get("initializers") or {}) - set(ga.get("initializers") or {})),
                         "removed": sorted(set(ga.get("initializers") or {}) - set(gb.get("initializers") or {}))},
        "identical": not (added or removed or changed or rewired),
    }


def _rewired(ga, gb, pairs: dict[int, int], inv: dict[int, int]) -> list[dict]:
    pa, pb = _producers(ga), _producers(gb)
    out = []
    for i, j in sorted(pairs.items(), key=lambda p: p[1]):
        a, b = ga["nodes"][i], gb["nodes"][j]
        for k in range(min(len(a["inputs"]), len(b["inputs"]))):
            sa = pa.get(a["inputs"][k]) if a["inputs"][k] else None
            sb = pb.get(b["inputs"][k]) if b["inputs"][k] else None
            if sa is not None and sa[0] == "node" and sa[1] not in pairs:
                continue  # old producer was removed: the removal says it
            if sb is not None and sb[0] == "node" and sb[1] not in inv:
                continue  # new producer was added: the insertion says it
            mapped = ("node", pairs[sa[1]], sa[2]) if sa is not None and sa[0] == "node" else sa
            same = mapped == sb or (sa is not None and sb is not None and sa[0] == sb[0] == "init")
            if sa is None and sb is None:
                same = a["inputs"][k] == b["inputs"][k]
            if not same:
                out.append({"node": node_label(b), "input": k, "from": _describe(sa, ga), "to": _describe(sb, gb)})
    return out


def summary_line(d: dict) -> str:
    return (f"graph: {d['nodes_a']} -> {d['nodes_b']} nodes; {len(d['added'])} added, {len(d['removed'])} removed, "
            f"{len(d['changed'])} changed, {len(d['rewired'])} edges rewired")


def _fig(x) -> str:
    return "-" if x is None else (f"{x:.3g}" if isinstance(x, float) else f"{x:,}")


def render(d: dict, console, limit: int | None = 50) -> None:
    """Human output of a graph section (``modelstore diff --graph``): one row per node change."""
    from rich.table import Table

    table = Table(title="graph", show_edge=False, pad_edge=False)
    for col in ("change", "node", "op", "detail"):
        table.add_column(col)
    rows = [("added", n["name"], n["op_type"], f"{', '.join(n['inputs'])} -> {', '.join(n['outputs'])}", "green")
            for n in d["added"]]
    rows += [("removed", n["name"], n["op_type"], f"{', '.join(n['inputs'])} -> {', '.join(n['outputs'])}", "red")
             for n in d["removed"]]
    for c in d["changed"]:
        op = c["op_type_b"] if c["op_type_a"] == c["op_type_b"] else f"{c['op_type_a']} -> {c['op_type_b']}"
        detail = "; ".join([f"{k}: {v[0]!r} -> {v[1]!r}" for k, v in c["attributes"].items()]
                           + [f"input {k} shape: {v[0]} -> {v[1]}" for k, v in c.get("weight_shapes", {}).items()]
                           + [w for w in c["changes"] if w not in ("op_type", "attributes", "weight_shapes")])
        name = c["name"] if c["name"] == c["name_a"] else f"{c['name_a']} -> {c['name']}"
        rows.append(("changed", name, op, detail, "yellow"))
    rows += [("rewired", r["node"], "", f"input {r['input']}: {r['from']} -> {r['to']}", "cyan") for r in d["rewired"]]
    for what, key in (("input", "inputs"), ("output", "outputs")):
        io = d[key]
        rows += [(f"{what} added", n, "", "", "green") for n in io["added"]]
        rows += [(f"{what} removed", n, "", "", "red") for n in io["removed"]]
        rows += [(f"{what} renamed", f"{r['a']} -> {r['b']}", "", "", "cyan") for r in io.get("renamed", [])]
        rows += [(f"{what} changed", c["name"], "", f"{c['shape_a']} {c['dtype_a']} -> {c['shape_b']} {c['dtype_b']}",
                  "magenta") for c in io["changed"]]
    shown = rows if not limit else rows[:limit]
    for change, name, op, detail, style in shown:
        table.add_row(f"[{style}]{change}[/{style}]", name, op, detail)
    if shown:
        console.print(table)
    if len(shown) < len(rows):
        console.print(f"({len(rows) - len(shown)} more graph changes; --limit 0 shows all)")
    figs = d.get("figures") or {}
    if figs:
        a, b = figs.get("a", {}), figs.get("b", {})
        console.print("  ".join(f"{k} {_fig(a.get(k))} -> {_fig(b.get(k))}" for k in ("flops", "mem_infer", "cpu_ghz_min")))
    console.print(summary_line(d))
