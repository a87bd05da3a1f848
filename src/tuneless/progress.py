"""A progress bar that uses tqdm when installed and degrades to periodic log lines.

On by default for every step that can take more than a few seconds; off with
`tuneless.set_progress(False)`, the environment variable TUNELESS_PROGRESS=0, or the
command line's `--quiet`. Without a terminal, a step reports every 30 s with the time
left, and once at its end if it took more than SLOW seconds (fast steps stay silent).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
SLOW = 5.0
_enabled: bool | None = None  # None: TUNELESS_PROGRESS decides (on unless "0")


def set_progress(on: bool) -> None:
    """Turn every progress display of tuneless on or off (for this process)."""
    global _enabled
    _enabled = bool(on)


def progress_enabled() -> bool:
    if _enabled is not None:
        return _enabled
    return os.environ.get("TUNELESS_PROGRESS", "1") not in ("0", "false", "no", "off")


def progress(items: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
             disable: bool = False) -> Iterator[T]:
    """Iterate with a progress display on stderr."""
    if disable or not progress_enabled():
        yield from items
        return
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None and sys.stderr.isatty():
        yield from tqdm(items, total=total, desc=desc, unit=unit, leave=False)
        return
    start, last = time.perf_counter(), 0.0
    for i, item in enumerate(items, 1):
        yield item
        now = time.perf_counter() - start
        if now - last > 30 or (total and i == total and now > SLOW):
            last = now
            pos = f"{i}/{total}" if total else str(i)
            rate = i / max(now, 1e-9)
            left = f", ~{(total - i) / rate:.0f} s left" if total and i < total else ""
            print(f"{desc} {pos} {rate:.2f} {unit}/s{left}", file=sys.stderr, flush=True)


class Ticker:
    """A progress display advanced by hand, for loops run by someone else (the steps of
    transformers' generate): `update()` per step, `close()` at the end."""

    def __init__(self, total: int, desc: str = "", unit: str = "it", disable: bool = False):
        self._steps = iter(progress(range(total), total=total, desc=desc, unit=unit,
                                    disable=disable))

    def update(self) -> None:
        next(self._steps, None)

    def close(self) -> None:
        for _ in self._steps:
            pass
