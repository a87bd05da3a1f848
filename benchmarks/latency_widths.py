"""Per-stage widths of a CIFAR ResNet near half its FLOPs, timed against the dense model:
can any choice of channel counts (multiples of 8) meet issue 22's latency target where the
uniform fold does not? Every reducible group of width 16 / 32 / 64 keeps the given count;
folds use the default data-free repair (weights do not change the timing); BatchNorm fused
in both; dense and folded interleaved as in benchmarks/latency.py (fewer rounds: a survey).

    python benchmarks/latency_widths.py [--model resnet20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from latency import CHECKPOINTS, _ort_runner, _torch_runner, interleaved  # noqa: E402

from tuneless.evaluate import batch_of, count_flops  # noqa: E402
from tuneless.export import fuse_conv_bn  # noqa: E402
from tuneless.graph import find_groups  # noqa: E402
from tuneless.methods.fold import fold  # noqa: E402
from tuneless.modelio import load_model  # noqa: E402
from tuneless.provenance import stamp, stamp_markdown  # noqa: E402


def fold_to_widths(model, x, widths: dict[int, int]):
    """The fold keeping widths[n] channels of every reducible group of n channels."""
    graph = find_groups(model, x)
    return fold(model, example_inputs=x,
                channels={g.id: widths[g.n] for g in graph.reducible if g.n in widths})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20", choices=("resnet20", "resnet56"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--flops", default="0.40,0.52", help="FLOP-ratio window to time")
    args = p.parse_args()
    torch.set_num_threads(1)
    print(stamp_markdown(stamp("python benchmarks/latency_widths.py " + " ".join(sys.argv[1:]))))
    lo, hi = (float(v) for v in args.flops.split(","))
    model = load_model(CHECKPOINTS[args.model]).eval()
    x1 = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    dense = fuse_conv_bn(model, x1)[0].eval()
    flops = count_flops(model, x1)
    runs = {"pytorch": _torch_runner(dense), "onnxruntime": _ort_runner(dense, x1)}
    print("widths (16/32/64) | flop_ratio | target | pytorch b1 | onnxruntime b1 | pytorch b64")
    for a, b, c in itertools.product((8, 16), (8, 16, 24, 32), (16, 24, 32, 40, 48, 56, 64)):
        small = fold_to_widths(model, x1, {16: a, 32: b, 64: c})
        ratio = count_flops(small, x1) / flops
        if not lo <= ratio <= hi:
            continue
        fused = fuse_conv_bn(small, x1)[0].eval()
        with torch.no_grad():
            pt = interleaved(runs["pytorch"], _torch_runner(fused), x1, args.rounds)[2]
            ort = interleaved(runs["onnxruntime"], _ort_runner(fused, x1), x1, args.rounds)[2]
            pt64 = interleaved(runs["pytorch"], _torch_runner(fused), batch_of(x1, 64),
                               max(3, args.rounds // 2))[2]
        print(f"{a}/{b}/{c} | {ratio:.3f} | {1.15 * ratio:.3f} | {pt:.3f} | {ort:.3f} | "
              f"{pt64:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
