"""Rewrite checkpoints in the reproducible byte layout (fixed zip member names).

Files written before tuneless saved through a file handle carry their random temporary
name inside the zip, so the same weights hashed differently. This loads each file as
plain data (weights_only) and writes it back through tuneless's writer; the weights and
metadata are unchanged (checked by their recorded weights_sha256).

    python scripts/resave_checkpoints.py models/*.pt models/smooth/*.pt
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tuneless.checkpoint import file_sha256, read_torch_file, weights_sha256  # noqa: E402
from tuneless.io_atomic import atomic_torch_save  # noqa: E402


def resave(path: Path) -> tuple[str, str]:
    obj = read_torch_file(path)
    recorded = obj.get("weights_sha256") if isinstance(obj, dict) else None
    if recorded and weights_sha256(obj["state_dict"]) != recorded:
        raise SystemExit(f"{path}: weights do not match their recorded sha256; not rewritten")
    before = file_sha256(path)
    atomic_torch_save(obj, path)
    return before, file_sha256(path)


def main(paths: list[str]) -> int:
    for p in paths:
        before, after = resave(Path(p))
        print(f"{p}: {before[:12]} -> {after[:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
