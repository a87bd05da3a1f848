"""Store a checkpoint's weights in float16 (half the bytes; models/ has a 40 MB budget).

Evaluates the halved model on the full test split of its dataset and records that
accuracy in the new file (rounding moves it a little); prints both accuracies.

    python scripts/halve_checkpoint.py SRC.pt DST.pt
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tuneless.checkpoint import convert_checkpoint, read_torch_file  # noqa: E402
from tuneless.data import get_dataset  # noqa: E402
from tuneless.errors import TunelessError  # noqa: E402
from tuneless.evaluate import accuracy  # noqa: E402


def main(src: str, dst: str) -> int:
    import torch

    torch.set_num_threads(1)
    meta = convert_checkpoint(  # refuses an existing dst; one write, accuracy included
        src, dst, measure=lambda m: accuracy(m, get_dataset(m.tuneless_meta["dataset"], "test")))
    before = read_torch_file(src).get("test_accuracy")
    print(f"{dst}: float16, test accuracy {meta['test_accuracy']:.4f} (float32 file: {before})")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    try:
        sys.exit(main(sys.argv[1], sys.argv[2]))
    except TunelessError as exc:
        raise SystemExit(f"error: {exc}") from None
