"""Benchmark rows kept in a CSV as they finish, so that a rerun resumes."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from tuneless.io_atomic import atomic_write_text


def write_rows(rows: list[dict], fields: list[str], path: Path) -> None:
    """Every row so far, written atomically (a killed run leaves the previous file whole)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fields)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(buf.getvalue(), path)
