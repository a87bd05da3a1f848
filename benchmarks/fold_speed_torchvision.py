"""Fold-AR of torchvision's resnet18 / mobilenet_v2 / efficientnet_b0 at 30%: wall time of
`tuneless.fold` (issue 17's < 2 s target), median of 3 random-weight models per network at
1×3×224×224, with 1 and 2 threads; the clusterers given alternate on the same model in
each round. Run on a quiet machine:

    python benchmarks/fold_speed_torchvision.py [--models resnet18,mobilenet_v2,efficientnet_b0]
        [--clusters auto,cut70,kmeans,ward-hartigan] [--allocations auto,uniform]

The default allocation ("auto") measures per-group widths where its probing fits
`auto_budget`; "uniform" is the paper's fold (the one issue 17's < 2 s is about).
--models also takes checkpoints (a path ending in .pt, e.g. the CIFAR networks in models/,
timed at their own input size); --sparsity sets the budget (default 0.3).

Each line also gives the summed clustering objective (within-cluster sum of squares over
all groups) of the last model, so clusterers compare on quality as well as time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    import torchvision

    from benchmarks.suites import clusterers  # noqa: F401  (registers cut70, wide128, ...)
    from tuneless.methods.fold import fold
    from tuneless.progress import set_progress

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,mobilenet_v2,efficientnet_b0")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--clusters", default="auto", help="fold's cluster= values to time")
    p.add_argument("--sparsity", type=float, default=0.3)
    p.add_argument("--allocations", default="auto,uniform",
                   help="fold's allocation= values to time (each with every cluster)")
    args = p.parse_args()
    set_progress(False)
    x = torch.randn(1, 3, 224, 224)
    fold(torchvision.models.resnet18().eval(), sparsity=0.3, example_inputs=x,
         allocation="uniform")  # warm up
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for name in args.models.split(","):
            methods = [(c, a) for c in args.clusters.split(",")
                       for a in args.allocations.split(",")]
            times: dict[str, list[float]] = {m: [] for m in methods}
            objective, ran = {}, {}
            for r in range(args.repeats):  # the clusterers interleaved, same model per round
                for method in methods:
                    torch.manual_seed(r)
                    model, inp = _model(name, x)
                    t0 = time.perf_counter()
                    out = fold(model, sparsity=args.sparsity, example_inputs=inp,
                               cluster=method[0], allocation=method[1])
                    times[method].append(time.perf_counter() - t0)
                    objective[method] = sum(out.tuneless_report["kmeans_inertia"].values())
                    ran[method] = out.tuneless_report["allocation"]
            for method, ts in times.items():
                print(f"{name} cluster={method[0]} allocation={method[1]} (ran {ran[method]}) "
                      f"threads "
                      f"{threads}: median "
                      f"{statistics.median(ts):.2f} s ({', '.join(f'{t:.2f}' for t in ts)})"
                      f"; objective {objective[method]:.6g}", flush=True)
    return 0


def _model(name: str, x: torch.Tensor):
    """A random-weight torchvision model at 224 px, or a checkpoint at its own input size."""
    import torchvision

    if name.endswith(".pt"):
        from tuneless.modelio import example_input, load_model

        model = load_model(name).eval()
        return model, example_input(model)
    return getattr(torchvision.models, name)().eval(), x


if __name__ == "__main__":
    sys.exit(main())
