"""Read-only catalog lookups the dashboard needs and the Catalog does not offer yet.

Each function is one parameterized SELECT (or a few) in one read snapshot, sized for a model
with 10,000+ versions: summaries per model, the keys a model uses, its metric series, and the
lineage edges around a set of versions. They are candidates to move into modelstore.catalog.
"""

from __future__ import annotations

from modelstore.catalog import BUILTINS, Catalog

NUMERIC_BUILTINS = ("size", "params", "stored", "tensors", "version")
MAX_POINTS = 2000  # versions drawn per metric line (a longer history is sampled evenly)


def model_summaries(catalog: Catalog, limit: int, offset: int = 0) -> tuple[int, list[dict]]:
    """(number of models, one page of {model, versions, latest_id, last_activity, tags}) by name."""
    db = catalog.db
    with catalog.snapshot():
        (total,) = db.execute("SELECT COUNT(*) FROM models").fetchone()
        rows = db.execute(
            "SELECT m.id, m.name, COUNT(v.id), MAX(v.number), MAX(v.created) FROM models m "
            "LEFT JOIN versions v ON v.model_id = m.id GROUP BY m.id ORDER BY m.name LIMIT ? OFFSET ?",
            (limit, offset)).fetchall()
        out = []
        for mid, name, count, top, created in rows:
            latest = db.execute("SELECT id FROM versions WHERE model_id = ? AND number = ?", (mid, top)).fetchone()
            (tagged,) = db.execute("SELECT MAX(created) FROM tags WHERE model_id = ?", (mid,)).fetchone()
            (commented,) = db.execute(
                "SELECT MAX(c.created) FROM comments c JOIN versions v ON v.id = c.version_id WHERE v.model_id = ?",
                (mid,)).fetchone()
            tags = [f"{t}→@{n}" for t, n in db.execute(
                "SELECT t.name, v.number FROM tags t JOIN versions v ON v.id = t.version_id WHERE t.model_id = ? "
                "ORDER BY t.name", (mid,))]
            activity = max((x for x in (created, tagged, commented) if x), default=None)
            out.append({"model": name, "versions": count, "latest_id": latest[0] if latest else None,
                        "last_activity": activity[:19].replace("T", " ") + "Z" if activity else None,
                        "tags": tags})
    return total, out


def model_keys(catalog: Catalog, model: str) -> list[str]:
    """User attribute keys some version of `model` has."""
    keys = [k for (k,) in catalog.db.execute(
        "SELECT k.name FROM attr_keys k WHERE EXISTS (SELECT 1 FROM attrs a JOIN versions v ON v.id = a.version_id "
        "JOIN models m ON m.id = v.model_id WHERE a.key_id = k.id AND m.name = ?) ORDER BY k.name", (model,))]
    return [k for k in keys if k not in BUILTINS]


def metric_series(catalog: Catalog, model: str) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """{metric name: {dataset: ([version numbers], [values])}} of a model, by version number.

    Walks the model's versions in number order and probes their metrics by primary key (no
    sort); past MAX_POINTS versions every k-th version is taken (and the last), so a line has
    at most about MAX_POINTS points.
    """
    db = catalog.db
    with catalog.snapshot():
        row = db.execute("SELECT m.id, MAX(v.number) FROM models m JOIN versions v ON v.model_id = m.id "
                         "WHERE m.name = ?", (model,)).fetchone()
        if row is None or row[0] is None:
            return {}
        mid, top = row
        step = max(1, -(-top // MAX_POINTS))
        names = dict(db.execute("SELECT id, name FROM metric_names"))
        datasets = dict(db.execute("SELECT id, name FROM datasets"))
        rows = db.execute(
            "SELECT x.name_id, x.dataset_id, v.number, x.value FROM versions v CROSS JOIN metrics x "
            "ON x.version_id = v.id WHERE v.model_id = ? AND (v.number % ? = 0 OR v.number = ?) ORDER BY v.number",
            (mid, step, top)).fetchall()
    by_id: dict[tuple[int, int], tuple[list[int], list[float]]] = {}
    for name_id, ds_id, number, value in rows:
        xs, ys = by_id.setdefault((name_id, ds_id), ([], []))
        xs.append(number)
        ys.append(value)
    out: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for (name_id, ds_id), line in sorted(by_id.items(), key=lambda kv: (names[kv[0][0]], datasets[kv[0][1]])):
        out.setdefault(names[name_id], {})[datasets[ds_id]] = line
    return out


def all_keys(catalog: Catalog) -> dict[str, list[str]]:
    """Every attribute key, metric name and dataset the catalog knows (query autocomplete)."""
    db = catalog.db
    with catalog.snapshot():
        attrs = [k for (k,) in db.execute("SELECT name FROM attr_keys ORDER BY name")]
        metrics = [k for (k,) in db.execute("SELECT name FROM metric_names ORDER BY name")]
        datasets = [k for (k,) in db.execute("SELECT name FROM datasets ORDER BY name")]
    return {"builtins": list(BUILTINS), "attributes": attrs, "metrics": metrics, "datasets": datasets}


def lineage_around(catalog: Catalog, model: str, last: int) -> tuple[list[dict], list[tuple[int, int]], int]:
    """The `last` newest versions of `model` and the versions one lineage edge away from them.

    Returns (nodes {id, model, number, created}, edges (parent id, child id), versions shown of `model`).
    """
    db = catalog.db
    with catalog.snapshot():
        own = [r[0] for r in db.execute(
            "SELECT v.id FROM versions v JOIN models m ON m.id = v.model_id WHERE m.name = ? "
            "ORDER BY v.number DESC LIMIT ?", (model, last))]
        edges: set[tuple[int, int]] = set()
        for i in range(0, len(own), 400):
            chunk = own[i:i + 400]
            marks = ",".join("?" * len(chunk))
            edges.update(db.execute(
                f"SELECT parent, child FROM lineage WHERE child IN ({marks}) OR parent IN ({marks})", chunk + chunk))
        ids = sorted(set(own) | {p for p, _ in edges} | {c for _, c in edges})
        nodes = []
        for i in range(0, len(ids), 400):
            chunk = ids[i:i + 400]
            nodes.extend({"id": vid, "model": m, "number": n, "created": c} for vid, m, n, c in db.execute(
                "SELECT v.id, m.name, v.number, v.created FROM versions v JOIN models m ON m.id = v.model_id "
                f"WHERE v.id IN ({','.join('?' * len(chunk))})", chunk))
    return nodes, sorted(edges), len(own)
