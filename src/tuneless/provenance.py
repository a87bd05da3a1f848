"""The provenance line every result file carries: command, commit, machine, date."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys

import torch


def git_commit(where: str | os.PathLike | None = None) -> str:
    """The checkout's short commit (+dirty); where: a directory in it (default: the
    working directory), e.g. the checkout a benchmark imported tuneless from."""
    git = ["git"] if where is None else ["git", "-C", str(where)]
    try:
        out = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


def stamp(command: str | None = None) -> dict[str, str]:
    return {
        "command": command or "tuneless " + " ".join(sys.argv[1:]),
        "commit": git_commit(),
        "machine": machine(),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def stamp_markdown(info: dict[str, str]) -> str:
    return (f"Produced by `{info['command']}` at commit `{info['commit']}` on {info['machine']}, "
            f"{info['date']}.\n")
