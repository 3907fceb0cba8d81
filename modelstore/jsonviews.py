"""JSON documents built from the Store, shared by the CLI's --json output, the HTTP API and
the dashboard pages, so one shape serves every door.

Each function takes an open Store and returns plain dicts and lists (json.dumps-ready).
"""

from __future__ import annotations

import dataclasses
import re

from modelstore.catalog import BUILTINS, VersionInfo, check_model_name
from modelstore.errors import InvalidInputError, NotFoundError

MAX_PAGE = 1000  # versions per page of a model's version list
_SORT_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,199}(@[A-Za-z0-9][A-Za-z0-9_./\-]{0,199})?$")


def version(info: VersionInfo) -> dict:
    """A version as `log --json` / `commit --json` print it."""
    return info.to_dict()


def query_rows(versions: list[VersionInfo]) -> list[dict]:
    """The `query --json` list."""
    return [v.to_query_json() for v in versions]


def tensor_rows(manifest) -> list[dict]:
    """[{name, dtype, shape, nbytes}] of a version's tensors, in manifest order."""
    return [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "nbytes": t.nbytes} for t in manifest.tensors]


def comments(info: VersionInfo) -> list[dict]:
    """A version's comments, oldest first, each with its ref (the `comment --json` shape)."""
    return [{**c, "ref": info.ref} for c in info.comments]


def metric_rows(store, ref: str, history: bool = False) -> list[dict]:
    """`metric history --json` rows; only the current values unless `history`."""
    rows = store.metric_history(ref)
    return rows if history else [r for r in rows if r["latest"]]


def models_summary(store) -> list[dict]:
    """Every model with its number of versions, latest version, tags and last activity."""
    tags_by_model: dict[str, list[dict]] = {}
    for t in store.tags():
        tags_by_model.setdefault(t["model"], []).append(t)
    out = []
    for name, count in store.models():
        try:
            latest = store.resolve(f"{name}@latest")
        except NotFoundError:  # every version deleted
            latest = None
        tags = tags_by_model.get(name, [])
        times = [t["created"] for t in tags]
        if latest is not None:
            times.append(latest.created)
            times.extend(c["created"] for c in latest.comments)
        out.append({"model": name, "versions": count, "latest": version(latest) if latest else None,
                    "tags": tags, "last_activity": max(times) if times else None})
    return out


def sort_clause(sort: str | None, desc: bool) -> str:
    """An `order by` clause for a user-given key (attribute, metric or metric@dataset)."""
    key = sort or "version"
    if not _SORT_KEY.match(key):
        raise InvalidInputError(f"cannot sort by {key[:80]!r}: give an attribute or metric name, e.g. accuracy@val")
    from modelstore.query_parse import RESERVED

    name, at, dataset = key.partition("@")
    if name.lower() in RESERVED:
        name = f"`{name}`"
    return f" order by {name}{at}{dataset}" + (" desc" if desc else "")


def versions_page(store, model: str, *, limit: int = 50, offset: int = 0, sort: str | None = None,
                  desc: bool = False) -> dict:
    """{"total", "versions"}: one page of a model's versions sorted by any key (through the
    query engine, so a page loads only the versions it shows)."""
    check_model_name(model)
    if not 0 <= limit <= MAX_PAGE:
        raise InvalidInputError(f"limit must be between 0 and {MAX_PAGE}")
    if offset < 0:
        raise InvalidInputError("offset must be at least 0")
    total = dict(store.models()).get(model)
    if total is None:
        raise NotFoundError(f"no model named {model!r}")
    if limit == 0 or offset >= total:
        return {"total": total, "versions": []}
    # the model name was validated above: letters, digits, '.', '_', '-', one '/'; no quotes
    expr = f'model = "{model}"' + sort_clause(sort, desc) + f" limit {offset + limit}"
    return {"total": total, "versions": [version(v) for v in store.query(expr)[offset:]]}


def limited_query(store, text: str, limit: int | None):
    """Run a query keeping at most `limit` results (the smaller of it and the query's own limit)."""
    from modelstore.query_parse import parse

    q = parse(text)
    if limit is not None:
        if limit < 0:
            raise InvalidInputError("limit must be at least 0")
        q = dataclasses.replace(q, limit=limit if q.limit is None else min(q.limit, limit))
    return store.query_result(q)


def keys(store) -> dict:
    """Attribute keys, metric names and dataset names the catalog knows (query autocomplete)."""
    db = store.catalog.db  # fixed statements over the catalog's name tables, no user input
    with store.catalog.snapshot():
        attrs = [n for (n,) in db.execute("SELECT name FROM attr_keys ORDER BY name")]
        metrics = [n for (n,) in db.execute("SELECT name FROM metric_names ORDER BY name")]
        datasets = [n for (n,) in db.execute("SELECT name FROM datasets ORDER BY name")]
    return {"attributes": sorted(set(BUILTINS) | set(attrs)), "metrics": metrics, "datasets": datasets}
