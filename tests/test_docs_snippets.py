"""Docs that run (issue 22 item 6): every fenced ```sh / ```python block in README.md and
docs/*.md is either executed here or marked, on the line before it, with
`<!-- not run: REASON -->` saying why it cannot be (too long for the test suite, needs a
download, placeholders for the reader's own files). A new unmarked block fails this test
until it runs or says why not."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(sh|python)\s*$")
MARK = re.compile(r"^<!-- not run: (.+?) -->$")


def blocks() -> list[tuple[str, int, str, str, str | None]]:
    """(file, line, language, code, reason it is not run or None) of every block."""
    out = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            m = FENCE.match(lines[i])
            if not m:
                i += 1
                continue
            prev = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
            mark = MARK.match(prev.strip())
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            out.append((path.relative_to(ROOT).as_posix(), i + 1, m.group(1),
                        "\n".join(lines[i + 1:end]), mark.group(1) if mark else None))
            i = end + 1
    return out


CASES = blocks()


def test_the_docs_have_snippets_and_every_skip_says_why():
    assert len(CASES) >= 10
    for where, line, _lang, _code, reason in CASES:
        assert reason is None or len(reason.split()) >= 3, f"{where}:{line}: say why"


@pytest.mark.parametrize("where, line, lang, code, reason", CASES,
                         ids=[f"{c[0]}:{c[1]}" for c in CASES])
def test_snippet_runs(where, line, lang, code, reason, tmp_path):
    if reason is not None:
        pytest.skip(f"not run: {reason}")
    (tmp_path / "models").symlink_to(ROOT / "models")  # snippets name committed models
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    if lang == "python":
        cmd = [sys.executable, "-c", code]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", code]
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{where}:{line}\n{done.stderr[-1500:]}"
