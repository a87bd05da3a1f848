"""Wall time of Fold-DIR on ResNet-56 at 50%, the default DeepInversion schedule and the
halved one (50 steps at lr 0.2); one thread; run with every other job paused.

    python benchmarks/fold_dir_time.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    from tuneless.methods.fold import fold
    from tuneless.modelio import load_model
    from tuneless.progress import set_progress

    torch.set_num_threads(1)
    set_progress(False)
    model = load_model("models/resnet56-avg-cifar10.pt").eval()
    x = torch.randn(8, 3, 32, 32)
    for name, inversion in (("50 steps, lr 0.2", {"steps": 50, "lr": 0.2}), ("default", {})):
        t0 = time.perf_counter()
        fold(model, sparsity=0.5, repair="dir", example_inputs=x, inversion=inversion)
        print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
