"""Is it the widths or the merge? Fold + refit at the very per-group widths that L1 pruning's
own sensitivity allocation measured (¾ floor, probed on the refit's images), beside L1 +
refit at those widths: issue 17's one open refit cell (ResNet-56 at 10%) asks which part
of the pipeline loses. The refit's protocol of `benchmarks/fold_defaults.py --view plain`:
1,024 plain training images (subset seed 1), the full test split; one thread; one JSON line
per row.

    python benchmarks/fold_at_l1_widths.py models/resnet56-avg-cifar10.pt 0.1 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("sparsity", type=float)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--keep-floor", type=float, default=0.75)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model, _arch, ds = load_any(args.checkpoint)
    test = get_dataset(ds, "test")
    real = get_dataset(ds, "train").subset(1024, seed=1).training_view(None, seed=2)
    x = test.tensors(8)[0]
    pruned = prune(model, criterion="l1", example_inputs=x, allocation="sensitivity", data=real,
                   keep_floor=args.keep_floor, sparsity=args.sparsity)
    kept = {int(k): v for k, v in pruned.tuneless_report["kept"].items()}
    removed = pruned.tuneless_report["achieved_sparsity"]
    l1 = refit(model, pruned, real, example_inputs=x, inplace=True)
    print(json.dumps({"row": "l1+refit", "accuracy": round(accuracy(l1, test), 4),
                      "removed": round(removed, 4)}), flush=True)
    for seed in (int(s) for s in args.seeds.split(",")):
        t = time.perf_counter()
        small = fold(model, repair="refit", example_inputs=x, seed=seed, data=real,
                     channels=kept)
        print(json.dumps({"row": "fold+refit at L1's widths", "seed": seed,
                          "accuracy": round(accuracy(small, test), 4),
                          "removed": round(small.tuneless_report["achieved_sparsity"], 4),
                          "seconds": round(time.perf_counter() - t, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
