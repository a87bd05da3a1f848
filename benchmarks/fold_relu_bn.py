"""Fold-AR on a network whose BatchNorms follow a ReLU (Keras order), the check of the
ReLU-through AR rescale on a network it was not decided on (docs/folding.md "A second
network nobody here trained"): a Fashion-MNIST conv net (conv → ReLU → BN ×4 with two
max-pools, dense 256 → ReLU → BN → 10) trained for two epochs (Adam 1e-3, batch 128,
seed 0), then Fold-AR and Fold-Naive at 30–80% with 3 k-means seeds, full test split.
Before the rescale Fold-AR was Fold-Naive on such networks (it skipped BNs after a ReLU),
so the Fold-Naive rows are also "Fold-AR before". One thread, ~10 minutes.

    python benchmarks/fold_relu_bn.py [--out <runs>/relubn-fmnist.pt]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def network() -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(cout)]

    return nn.Sequential(*block(1, 32), *block(32, 32), nn.MaxPool2d(2), *block(32, 64),
                         *block(64, 64), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(64 * 7 * 7, 256), nn.ReLU(), nn.BatchNorm1d(256),
                         nn.Linear(256, 10))


def trained(epochs: int = 2) -> nn.Module:
    from tuneless.data.loader import TensorLoader, get_dataset

    torch.manual_seed(0)
    net = network()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    train = get_dataset("fashion-mnist", "train")
    for epoch in range(epochs):
        net.train()
        for x, y in TensorLoader(train, 128, shuffle=True, augment=False, seed=epoch):
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def main() -> int:
    import tuneless
    from tuneless.data import get_dataset
    from tuneless.evaluate import accuracy

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="also save the trained network here (tuneless.save)")
    p.add_argument("--points", default="0.3,0.5,0.7,0.8")
    args = p.parse_args()
    torch.set_num_threads(1)
    net = trained()
    test = get_dataset("fashion-mnist", "test")
    x = test.tensors(8)[0]
    print(f"dense {100 * accuracy(net, test):.2f}%", flush=True)
    if args.out:
        tuneless.save(net, args.out, meta={"dataset": "fashion-mnist"})
    for point in (float(s) for s in args.points.split(",")):
        for repair in ("ar", "none"):
            accs = [100 * accuracy(tuneless.fold(net, sparsity=point, example_inputs=x,
                                                 seed=seed, repair=repair), test)
                    for seed in (0, 1, 2)]
            print(f"{point:.0%} {repair:4s} " + " / ".join(f"{a:.2f}" for a in accs)
                  + f"  mean {statistics.mean(accs):.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
