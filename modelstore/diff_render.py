"""Human output of a Diff: structure notes, a rich table sorted by relative change, a summary line.

Rows: modified entries first (largest relative change first), then structural changes
(reshaped, retyped, added, removed, renamed), identical entries last; `limit` rows at most
(0 or None = all). With ``layers=True`` rows are blocks (see ``modelstore.diff.block_of``)
instead of tensors.
"""

from __future__ import annotations

from modelstore.diff import Diff, GroupDiff, TensorDiff

_OPTIONAL = ("dtype", "‖Δ‖", "max|Δ|", "params")  # dropped first in a narrow terminal
_ORDER = {"modified": 0, "reshaped": 1, "retyped": 2, "added": 3, "removed": 4, "renamed": 5, "identical": 6}
_STYLE = {"modified": "yellow", "added": "green", "removed": "red", "reshaped": "magenta", "retyped": "magenta",
          "renamed": "cyan", "identical": "dim"}


def _g(x, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def _pct(x) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    if x < 0.001:
        return "<0.1%"
    return f"{100 * x:.1f}%"


def _shape(s) -> str:
    return "-" if s is None else "(" + ", ".join(str(d) for d in s) + ")"


def _sort_key(status: str, rel) -> tuple:
    return (_ORDER.get(status, 9), -(rel if rel is not None else float("inf")) if status == "modified" else 0)


def _esc(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def structure_notes(diff: Diff) -> list[str]:
    """One line per structural event worth calling out above the table."""
    notes = []
    indexed = [g for g in diff.layers if g.name.rsplit(".", 1)[-1].isdigit()]  # blocks of a family
    added = [g.name for g in indexed if g.status == "added"]
    removed = [g.name for g in indexed if g.status == "removed"]
    if added:
        notes.append(f"blocks inserted in B: {', '.join(added)}")
    if removed:
        notes.append(f"blocks removed from A: {', '.join(removed)}")
    shifted = [g for g in diff.layers if g.matched_to is not None]
    if shifted:
        first, last = shifted[0], shifted[-1]
        span = first.name if first is last else f"{first.name} .. {last.name}"
        notes.append(f"{len(shifted)} block(s) compared with their shifted counterparts "
                     f"({span} matched to {first.matched_to}{'' if first is last else ' .. ' + last.matched_to})")
    for t in diff.tensors:
        if t.status == "renamed":
            notes.append(f"renamed: {t.renamed_from} -> {t.name}")
    return notes


def render(diff: Diff, console, layers: bool = False, limit: int | None = 50) -> None:
    from rich.table import Table

    out(console, f"[bold]diff[/bold] {_esc(diff.a)} ({diff.a_kind}) -> {_esc(diff.b)} ({diff.b_kind})")
    for line in structure_notes(diff)[:20]:
        out(console, "  " + _esc(line))
    table = Table(box=None, pad_edge=False, expand=False)
    if layers:
        rows = sorted(diff.layers, key=lambda g: _sort_key(g.status, g.metrics()["rel_l2"]))
        cols = ("block", "status", "tensors", "params", "rel Δ", "‖Δ‖", "cosine", "max|Δ|", "changed", "chunks")
    else:
        rows = sorted(diff.tensors, key=lambda t: _sort_key(t.status, t.rel_l2))
        cols = ("tensor", "status", "shape", "dtype", "rel Δ", "‖Δ‖", "cosine", "max|Δ|", "changed", "chunks")
        if any(t.rank is not None or t.rank_note for t in diff.tensors):
            cols += ("rank",)
    shown = rows if not limit else rows[:limit]
    cells = [_group_row(r) if layers else _tensor_row(r, "rank" in cols) for r in shown]
    if console.is_terminal and console.width < 132:  # narrow terminal: keep the essential columns
        keep = [i for i, c in enumerate(cols) if c not in _OPTIONAL]
        cols = tuple(cols[i] for i in keep)
        cells = [[row[i] for i in keep] for row in cells]
    longest = max((len(c[0]) for c in cells), default=10)
    for c in cols:
        first = c in ("tensor", "block")
        table.add_column(c, justify="left" if first or c in ("status", "shape", "dtype") else "right",
                         overflow="fold", no_wrap=not first, min_width=min(longest, 24) if first else None)
    for row in cells:
        table.add_row(*row)
    out(console, table)
    if len(shown) < len(rows):
        out(console, f"[dim]... {len(rows) - len(shown)} more rows (--limit 0 shows all)[/dim]")
    out(console, _esc(diff.summary_line()))


def out(console, obj) -> None:
    """Print; piped or redirected output is not folded at 80 columns (lines stay whole for grep)."""
    if console.is_terminal:
        console.print(obj)
        return
    saved = getattr(console, "_width", None)
    console.width = max(console.width, 400)
    try:
        console.print(obj, crop=False)
    finally:
        console._width = saved


def _status(status: str) -> str:
    return f"[{_STYLE.get(status, '')}]{status}[/]"


def _tensor_row(t: TensorDiff, with_rank: bool) -> list[str]:
    m = t.sums.metrics() if t.sums else {}
    name = t.name
    if t.renamed_from:
        name += f" (was {t.renamed_from})"
    elif t.matched_to:
        name += f" (vs {t.matched_to})"
    if t.shape_a is not None and t.shape_b is not None and t.shape_a != t.shape_b:
        shape = f"{_shape(t.shape_a)} -> {_shape(t.shape_b)}"
    else:
        shape = _shape(t.shape_b if t.shape_b is not None else t.shape_a)
    if t.dtype_a and t.dtype_b and t.dtype_a != t.dtype_b:
        dtype = f"{t.dtype_a} -> {t.dtype_b}"
    else:
        dtype = t.dtype_b or t.dtype_a or "-"
    row = [_esc(name), _status(t.status), shape, dtype, _g(m.get("rel_l2")), _g(m.get("l2_delta")),
           _g(m.get("cosine"), ".6f"), _g(m.get("max_abs")), _pct(m.get("frac_changed")),
           _pct(m.get("frac_chunks_changed"))]
    if with_rank:
        if t.rank is not None:
            row.append(f"≥{t.rank}" if t.rank_note and t.rank_note.startswith("≥") else str(t.rank))
        else:
            row.append("-" if not t.rank_note else "skipped")
    return row


def _group_row(g: GroupDiff) -> list[str]:
    m = g.metrics()
    name = g.name or "(top level)"
    if g.matched_to:
        name += f" (vs {g.matched_to})"
    n = sum(g.counts.values())
    params = f"{g.params_b:,}" if g.params_a == g.params_b else f"{g.params_a:,} -> {g.params_b:,}"
    return [_esc(name), _status(g.status), str(n), params, _g(m["rel_l2"]), _g(m["l2_delta"]),
            _g(m["cosine"], ".6f"), _g(m["max_abs"]), _pct(m["frac_changed"]), _pct(m["frac_chunks_changed"])]
