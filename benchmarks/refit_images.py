"""How many images the least-squares refit needs: fold + refit (3 seeds) and L1 + refit at
the same sparsities with the first 256 or 1,024 of the same plain training images,
full test split, one thread.

    python benchmarks/refit_images.py CHECKPOINT [REPAIR_IMAGES=1024] [SPARSITIES=0.1,0.3]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.suites.fold_bench import load_any  # noqa: E402
from tuneless.data import get_dataset  # noqa: E402
from tuneless.evaluate import accuracy  # noqa: E402
from tuneless.layer_refit import refit  # noqa: E402
from tuneless.methods.fold import fold  # noqa: E402
from tuneless.methods.prune import prune  # noqa: E402


def main(path: str, images: int = 1024, sparsities: str = "0.1,0.3") -> int:
    torch.set_num_threads(1)
    model, _, ds = load_any(path)
    test = get_dataset(ds, "test")
    real = get_dataset(ds, "train").subset(images, seed=1).training_view(None, seed=2)
    x = test.tensors(8)[0]
    print("dense", accuracy(model, test), flush=True)
    for sp in (float(v) for v in sparsities.split(",")):
        for n in (256, 1024):
            t0 = time.perf_counter()
            accs = [accuracy(fold(model, sparsity=sp, repair="refit", data=real, seed=s,
                                  refit_images=n, example_inputs=x), test) for s in (0, 1, 2)]
            secs = (time.perf_counter() - t0) / 3
            pruned = prune(model, sparsity=sp, criterion="l1", example_inputs=x)
            l1 = accuracy(refit(model, pruned, real, example_inputs=x, num_images=n,
                                inplace=True), test)
            print(f"sp {sp} images {n}: fold+refit {sum(accs) / 3:.4f} "
                  f"{[round(a, 4) for a in accs]}  l1+refit {l1:.4f}  fold s {secs:.1f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    sys.exit(main(sys.argv[1], *(int(a) if i == 0 else a
                                  for i, a in enumerate(sys.argv[2:]))))
