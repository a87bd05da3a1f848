"""Wall time of Fold-DIR on ResNet-56 at 50%: the default (DeepInversion images with
repair "dir"'s settings, statistics matching on them) and the paper's (BN re-estimation on
images of InversionConfig's default 100 steps at lr 0.1); one thread, alternating, the
median of `--rounds`. Run with every other job paused.

    python benchmarks/fold_dir_time.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    from tuneless.methods.fold import fold
    from tuneless.modelio import load_model
    from tuneless.progress import set_progress

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    set_progress(False)
    model = load_model("models/resnet56-avg-cifar10.pt").eval()
    x = torch.randn(8, 3, 32, 32)
    settings = {"default (match)": {}, "paper (re-estimation)": {"dir_stats": "reestimate"}}
    times: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name, opts in settings.items():
            t0 = time.perf_counter()
            fold(model, sparsity=0.5, repair="dir", example_inputs=x, **opts)
            times[name].append(time.perf_counter() - t0)
            print(f"{name}: {times[name][-1]:.1f} s", flush=True)
    for name, t in times.items():
        print(f"{name}: median {statistics.median(t):.1f} s over {len(t)} rounds "
              f"({args.threads} thread(s))", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
