"""FLOPs kept by the sensitivity allocation against uniform widths at the same parameter
budget (Fold-AR, seed 0, every benchmark network): the allocation keeps the layers whose
folding moves the output most, and those are often the early, high-resolution, FLOP-heavy
ones. Prints a markdown table of FLOP ratios (compressed / dense).

    python benchmarks/fold_sensitivity_flops.py [--keep-floor 0.5]

--keep-floor 0.5 (the default here) is the floor of the first measurements
(docs/results/fold-sens-flops.md); 0.75 is the default allocation's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tuneless.evaluate import count_flops  # noqa: E402
from tuneless.methods.fold import fold  # noqa: E402
from tuneless.modelio import example_input, load_model  # noqa: E402

NETS = {"ResNet-20": "models/resnet20-cifar10.pt", "ResNet-56": "models/resnet56-avg-cifar10.pt",
        "VGG11-BN ½": "models/vgg11_bn-w0.5-cifar10.pt", "MLP": "models/mlp-fashion-mnist.pt",
        "LeNet-5": "models/lenet5-fashion-mnist.pt"}
POINTS = (0.1, 0.3, 0.5, 0.7, 0.8)


def main() -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keep-floor", type=float, default=0.5)
    floor = p.parse_args().keep_floor
    torch.set_num_threads(1)
    root = Path(__file__).resolve().parents[1]
    print("| network | allocation | " + " | ".join(f"{int(p * 100)}%" for p in POINTS) + " |")
    print("|---|---|" + "---|" * len(POINTS))
    for name, rel in NETS.items():
        model = load_model(root / rel).eval()
        x = example_input(model)
        dense = count_flops(model, x)
        repair = "ar" if any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) \
            else "none"
        for alloc in ("uniform", "sensitivity"):
            cells = [count_flops(fold(model, sparsity=p, repair=repair, allocation=alloc,
                                      keep_floor=floor, example_inputs=x), x) / dense
                     for p in POINTS]
            print(f"| {name} | {alloc} | " + " | ".join(f"{c:.2f}" for c in cells) + " |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
