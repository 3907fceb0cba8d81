"""The query language's facade: parse, plan and run a query over the catalog; the CLI's table.

    task = "object-detection" and dataset = "imagenet" and accuracy > 90%
        and size < 100MB and cpu_ghz <= 1 order by accuracy desc limit 10

`parse` turns text into a `Query` (a small syntax tree; errors name the column). `run` compiles
the tree to parameterized SQL over the catalog and executes it; `evaluate` computes the same
answer in plain Python from rows loaded with `load_rows` (the property tests hold the two to
each other). docs/QUERY.md is the user-facing reference: grammar, units, typing and the rule
for bare metric names.

How a query runs: every user key and metric comparison is an EXISTS probe by primary key, so
the whole predicate can be checked for one version in a few microseconds; the planner
(query_plan.py) chooses which versions to check (a driver term's index, a stream in `order by`
order, an intersection, or a scan), and every plan returns exactly the same rows.

Modules, in data-flow order: query_parse.py (text -> `Query`), query_sql.py (`Query` -> SQL:
`Compiler`, `Sql`, `Tuning`), query_plan.py (plan choice and execution -> version ids),
query_eval.py (the Python evaluator), and this facade (`run`, `query_ids`, `explain`, the
CLI's table cells). Their names are re-exported here, as before the split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modelstore.catalog import BUILTINS, VersionInfo, parse_time, scaled  # noqa: F401 - re-exported
from modelstore.errors import InvalidInputError  # noqa: F401 - re-exported
from modelstore.query_eval import (  # noqa: F401
    Row,
    _eval,
    _glob_prefix,
    _match,
    _op,
    _upper,
    _values,
    conjuncts,
    evaluate,
    family_of,
    glob_match,
    in_family,
    load_rows,
    sort_value,
    sql_glob,
)
from modelstore.query_parse import (  # noqa: F401
    _BUILTIN,
    _EXPECTED,
    _MULTI,
    _NUMBER,
    _OPS,
    _REF,
    _SEP_SQL,
    _SEPARATORS,
    GRAMMAR,
    MAX_DEPTH,
    MAX_LIMIT,
    MAX_QUERY,
    RESERVED,
    UNITS,
    All,
    And,
    Cmp,
    Has,
    In,
    InternalQueryError,
    Key,
    Lit,
    Not,
    Or,
    Query,
    _Builder,
    _describe_expected,
    _error,
    _no_reserved_names,
    _parser,
    _ReservedWord,
    _show,
    _tok_error,
    _where,
    parse,
)
from modelstore.query_plan import _cost, _execute, _fetch, _try_stream, _with_driver  # noqa: F401
from modelstore.query_sql import (  # noqa: F401
    _FALSE,
    _TRUE,
    Compiler,
    Driver,
    Sql,
    Tuning,
    _balanced,
    _iso_seconds,
    created_cond,
)


@dataclass
class QueryResult:
    """The versions a query matched, in query order, with the plan and final SQL that found them."""

    query: Query
    versions: list[VersionInfo]
    plan: str
    sql: str = ""
    params: list = field(default_factory=list)

    @property
    def columns(self) -> tuple[str, ...]:
        return self.query.columns


def run(catalog, text: str | Query, *, tuning: Tuning | None = None) -> QueryResult:
    """Parse, plan and execute a query in one read snapshot; versions in query order."""
    q = parse(text) if isinstance(text, str) else text
    with catalog.snapshot():
        ids, plan, sql = _execute(catalog, q, tuning or Tuning())
        versions = catalog.versions_by_ids(ids)
    return QueryResult(q, versions, plan, sql.text if sql else "", sql.params if sql else [])


def query_ids(catalog, text: str | Query, *, tuning: Tuning | None = None) -> tuple[list[int], str]:
    """Only the matching version ids and the plan's name (no VersionInfo)."""
    q = parse(text) if isinstance(text, str) else text
    with catalog.snapshot():
        ids, plan, _ = _execute(catalog, q, tuning or Tuning())
    return ids, plan


def explain(catalog, text: str | Query, *, tuning: Tuning | None = None) -> dict:
    """The plan chosen for a query and its final SQL (for debugging and benchmarks)."""
    q = parse(text) if isinstance(text, str) else text
    with catalog.snapshot():
        ids, plan, sql = _execute(catalog, q, tuning or Tuning())
    return {"plan": plan, "sql": sql.text if sql else "", "params": sql.params if sql else [], "rows": len(ids)}


# -- output helpers for the CLI --------------------------------------------------------------
def cell(info: VersionInfo, key: Key, family) -> object:
    """The value of one queried key for a version (a dict {dataset: value} for several)."""
    if key.builtin:
        return info.attributes()[key.name]
    if key.dataset is not None:
        return info.metrics.get(key.dataset, {}).get(key.name)
    if key.name in info.meta:
        return info.meta[key.name]
    found = {ds: m[key.name] for ds, m in info.metrics.items() if key.name in m and in_family(ds, family)}
    if len(found) == 1:
        return next(iter(found.values()))
    return found or None


def format_cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return ", ".join(f"{format_cell(v)} ({k})" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


def table(result: QueryResult) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the human table: ref, content id, then the queried keys."""
    keys = [k for k in result.query.keys if not (k.builtin and k.name in ("model", "version"))]
    headers = ["ref", "content id"] + [k.text for k in keys]
    rows = [[v.ref, v.content_id[:12]] + [format_cell(cell(v, k, result.query.family)) for k in keys]
            for v in result.versions]
    return headers, rows
