"""Numbers as short human text (1.2 MB, 8.3K), shared by the CLI and the dashboard."""

from __future__ import annotations

BYTES = ("B", "KB", "MB", "GB", "TB")


def scaled(n, units=BYTES, sep: str = " ") -> str:
    """`n` in steps of 1000 through `units` (the first unit shows an integer)."""
    n = float(n)
    for unit in units:
        if abs(n) < 1000 or unit == units[-1]:
            return f"{n:.0f}{sep}{unit}" if unit == units[0] else f"{n:.1f}{sep}{unit}"
        n /= 1000
    raise AssertionError("unreachable")
