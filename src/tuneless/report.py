"""Before/after tables shared by eval, compress and bench: one list of row dicts, three renderings.

Rows are plain dicts (column -> value) so the same data goes to the terminal as an
aligned table, into docs as markdown, and to disk as JSON without re-formatting.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from tuneless.io_atomic import atomic_write_text

Formatter = Callable[[Any], str]
MISSING = "-"


def format_value(value: Any) -> str:
    """Human formatting: thousands separators for ints, 2-4 decimals for floats, '-' for None."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value != 0 and abs(value) < 0.01:
            return f"{value:.2e}"
        if abs(value) >= 100:
            return f"{value:,.1f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.4f}"
    return str(value)


def human_count(n: float) -> str:
    """1234567 -> '1.23M' (for parameters and FLOPs)."""
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:g}"


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for div, unit in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if abs(n) >= div:
            return f"{n / div:.3g} {unit}"
    return f"{int(n)} B"


def columns_of(rows: Iterable[dict]) -> list[str]:
    """Every key that occurs in any row, in order of first appearance."""
    cols: list[str] = []
    for row in rows:
        cols.extend(k for k in row if k not in cols)
    return cols


def _cells(rows: Sequence[dict], columns: Sequence[str],
           formats: dict[str, Formatter | str] | None) -> list[list[str]]:
    formats = formats or {}
    out = []
    for row in rows:
        line = []
        for c in columns:
            v = row.get(c)
            f = formats.get(c)
            if v is None:
                line.append(MISSING)
            elif isinstance(f, str):
                line.append(format(v, f))
            elif f is not None:
                line.append(f(v))
            else:
                line.append(format_value(v))
        out.append(line)
    return out


def _numeric(rows: Sequence[dict], col: str) -> bool:
    vals = [r.get(col) for r in rows if r.get(col) is not None]
    return bool(vals) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in vals
    )


def render_table(rows: Sequence[dict], columns: Sequence[str] | None = None,
                 formats: dict[str, Formatter | str] | None = None,
                 title: str | None = None) -> str:
    """An aligned plain-text table: numbers right-aligned, text left-aligned."""
    columns = list(columns) if columns is not None else columns_of(rows)
    cells = _cells(rows, columns, formats)
    widths = [max([len(c), *(len(line[i]) for line in cells)]) for i, c in enumerate(columns)]
    right = [_numeric(rows, c) for c in columns]

    def fmt(line: Sequence[str]) -> str:
        parts = [s.rjust(w) if r else s.ljust(w) for s, w, r in zip(line, widths, right)]
        return "  ".join(parts).rstrip()

    lines = [title] if title else []
    lines += [fmt(columns), "  ".join("-" * w for w in widths)]
    lines += [fmt(line) for line in cells]
    return "\n".join(lines)


def render_markdown(rows: Sequence[dict], columns: Sequence[str] | None = None,
                    formats: dict[str, Formatter | str] | None = None) -> str:
    """A GitHub-flavoured markdown table (numbers right-aligned)."""
    columns = list(columns) if columns is not None else columns_of(rows)
    cells = _cells(rows, columns, formats)

    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    head = "| " + " | ".join(esc(c) for c in columns) + " |"
    rule = "|" + "|".join("---:" if _numeric(rows, c) else "---" for c in columns) + "|"
    body = ["| " + " | ".join(esc(s) for s in line) + " |" for line in cells]
    return "\n".join([head, rule, *body])


def relative_to(rows: Sequence[dict], keys: Sequence[str], base: int = 0,
                suffix: str = "_rel") -> list[dict]:
    """Copies of rows with key/base-row's key added as `<key><suffix>` (1.0 = unchanged)."""
    ref = rows[base] if rows else {}
    out = []
    for row in rows:
        new = dict(row)
        for k in keys:
            a, b = row.get(k), ref.get(k)
            ok = isinstance(a, int | float) and isinstance(b, int | float) and b != 0
            new[k + suffix] = a / b if ok else None
        out.append(new)
    return out


def to_json(rows: Sequence[dict], meta: dict | None = None) -> str:
    """{"meta": ..., "rows": [...]} as indented JSON; non-JSON values become strings."""
    return json.dumps({"meta": meta or {}, "rows": list(rows)}, indent=2, default=str) + "\n"


def write_json(rows: Sequence[dict], path: str | os.PathLike, meta: dict | None = None) -> None:
    """Write rows (and provenance meta) as JSON atomically."""
    atomic_write_text(to_json(rows, meta), path)


__all__ = [
    "columns_of", "format_value", "human_bytes", "human_count", "relative_to",
    "render_markdown", "render_table", "to_json", "write_json",
]


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Write a matplotlib figure as PNG atomically and close it (every plot of the package)."""
    import io

    import matplotlib.pyplot as plt

    from tuneless.io_atomic import atomic_write_bytes

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(buf.getvalue(), path)
