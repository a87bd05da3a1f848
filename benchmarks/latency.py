"""Real CPU speed-up of folded networks, dense and folded timed interleaved (issue 22 item 3).

For each benchmark network the fold that removes half of the FLOPs (the uniform channel
ratio found by bisection, or with `--widths flops` the FLOP budget, uniform widths, its
rounding corrected across groups; `round_to` 1 and 8), BatchNorm fused into the convolutions in both
models (as `tuneless export` does), then latency at batch 1 and 64 in PyTorch
(torch.utils.benchmark) and in ONNX Runtime (one intra-op thread), the dense and the
folded model measured in alternating rounds so that drift in the machine's speed hits both
alike. Reports the median per round and the spread (interquartile range) of the ratio
folded / dense, beside the FLOP ratio; the issue's target is a latency ratio within 15% of
the FLOP ratio. `floor_ratio` times the thinnest fold of the same architecture (90% of
every group's channels removed, at the same round_to) against the dense model the same
way: no channel reduction can run faster than that, so where it exceeds 1.15 × the FLOP
ratio the target is out of reach for that cell (`reachable` = no): what is left is the
runtime's per-layer cost. Weights do not change the timing: the folds use the default
data-free repair. Run on a quiet machine:

    python benchmarks/latency.py [--models resnet20,resnet56,vgg11] [--rounds 15]
        [--widths bisect|flops] [--pad-to 1,8] [--out docs/results/latency]
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tuneless.evaluate import batch_of, count_flops  # noqa: E402
from tuneless.export import _export_onnx, fuse_conv_bn  # noqa: E402
from tuneless.io_atomic import atomic_write_text  # noqa: E402
from tuneless.methods.fold import fold  # noqa: E402
from tuneless.modelio import load_model  # noqa: E402
from tuneless.padding import pad_channels  # noqa: E402
from tuneless.provenance import stamp, stamp_markdown  # noqa: E402
from tuneless.report import render_markdown  # noqa: E402

CHECKPOINTS = {"resnet20": "models/resnet20-cifar10.pt",
               "resnet56": "models/resnet56-avg-cifar10.pt",
               "vgg11": "models/vgg11_bn-w0.5-cifar10.pt"}
FIELDS = ["model", "round_to", "pad_to", "batch", "runtime", "flop_ratio", "run_flop_ratio",
          "dense_ms", "folded_ms",
          "latency_ratio", "ratio_iqr", "within_15pct", "floor_ratio", "reachable"]


def half_flops(model, x, round_to: int, widths: str = "bisect"):
    """The fold removing half of the dense model's FLOPs: widths="flops", the FLOP budget
    (one ratio for every group, its rounding corrected across groups: within a point of
    0.5 at any round_to); "bisect", the uniform channel ratio whose FLOPs come closest (the
    table at commit 80bb106: 0.45 with round_to=8, so the target was 1.15 × 0.45)."""
    dense = count_flops(model, x)
    if widths == "flops":
        small = fold(model, sparsity=0.5, budget="flops", example_inputs=x, round_to=round_to,
                     allocation="uniform")
        return small, count_flops(small, x) / dense
    lo, hi, best = 0.0, 0.9, None
    for _ in range(12):
        mid = (lo + hi) / 2
        small = fold(model, channel_ratio=mid, example_inputs=x, round_to=round_to,
                     allocation="uniform")  # uniform widths at a FLOP target, as measured
        ratio = count_flops(small, x) / dense
        if best is None or abs(ratio - 0.5) < abs(best[1] - 0.5):
            best = (small, ratio)
        lo, hi = (mid, hi) if ratio > 0.5 else (lo, mid)
    return best


def _torch_runner(model):
    from torch.utils.benchmark import Timer

    def run(x):
        t = Timer("m(x)", globals={"m": model, "x": x}, num_threads=1)
        return t.blocked_autorange(min_run_time=0.3).median * 1000
    return run


def _ort_runner(model, x):
    import onnxruntime as ort

    data = _export_onnx(model, x, 1, [True])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(batch):
        feed = {name: batch.numpy()}
        session.run(None, feed)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.3:
            session.run(None, feed)
            n += 1
        return (time.perf_counter() - t0) / n * 1000
    return run


def interleaved(dense_run, folded_run, x, rounds: int) -> tuple[float, float, float, float]:
    """Median dense and folded ms over alternating rounds, the median of the per-round
    ratios and its interquartile range."""
    d, f = [], []
    for r in range(rounds):
        pair = ((dense_run, d), (folded_run, f)) if r % 2 == 0 else ((folded_run, f),
                                                                     (dense_run, d))
        for run, out in pair:
            out.append(run(x))
    ratios = sorted(b / a for a, b in zip(d, f))
    q = statistics.quantiles(ratios, n=4)
    return statistics.median(d), statistics.median(f), statistics.median(ratios), q[2] - q[0]


def derive(row: dict) -> dict:
    """The verdict columns from the measured ones. `reachable`: whether the target can be
    met at this FLOP ratio if the time is a fixed part (the thinnest fold's, floor_ratio)
    plus a part that shrinks with the FLOPs at the dense model's efficiency, i.e. the best
    any fold can do unless its kernels run faster per FLOP than the dense ones."""
    row.setdefault("pad_to", 1)  # CSVs from before --pad-to
    row.setdefault("run_flop_ratio", row["flop_ratio"])
    flops, floor = float(row["flop_ratio"]), float(row["floor_ratio"])
    row["within_15pct"] = "yes" if float(row["latency_ratio"]) <= 1.15 * flops else "no"
    row["reachable"] = "yes" if floor + (1 - floor) * flops <= 1.15 * flops else "no"
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20,resnet56,vgg11")
    p.add_argument("--round-to", default="1,8")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--widths", choices=("bisect", "flops"), default="bisect",
                   help="half of the FLOPs by bisecting one uniform channel ratio (default, "
                        "docs/results/latency) or by the FLOP budget (docs/results/latency-flops)")
    p.add_argument("--pad-to", default="1",
                   help="comma-separated: also time each fold with zero channels appended "
                        "up to a multiple (tuneless export --pad-to; 1 = none)")
    p.add_argument("--out", default="docs/results/latency")
    p.add_argument("--render-only", action="store_true",
                   help="recompute the verdict columns and the table from the CSV at --out")
    args = p.parse_args()
    torch.set_num_threads(1)
    info = stamp("python benchmarks/latency.py " + " ".join(sys.argv[1:]))
    rows = []
    if args.render_only:
        rows = [derive(r) for r in csv.DictReader(Path(args.out).with_suffix(".csv").open())]
    for name in args.models.split(",") if not args.render_only else ():
        model = load_model(CHECKPOINTS[name]).eval()
        x1 = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        dense_fused = fuse_conv_bn(model, x1)[0].eval()
        cells = [(int(r), int(q)) for r in args.round_to.split(",")
                 for q in args.pad_to.split(",")]
        for rt, pad in cells:
            small, flop_ratio = half_flops(model, x1, rt, args.widths)
            thin = fold(model, channel_ratio=0.9, example_inputs=x1, round_to=rt,
                        allocation="uniform")
            if pad > 1:
                small, thin = (pad_channels(m.eval(), x1, pad)[0] for m in (small, thin))
            run_flops = count_flops(small, x1) / count_flops(model, x1)
            small_fused = fuse_conv_bn(small, x1)[0].eval()
            thin_fused = fuse_conv_bn(thin, x1)[0].eval()
            for batch in (int(v) for v in args.batches.split(",")):
                x = batch_of(x1, batch)
                for runtime in ("pytorch", "onnxruntime"):
                    if runtime == "pytorch":
                        runs = [_torch_runner(m) for m in (dense_fused, small_fused, thin_fused)]
                    else:
                        runs = [_ort_runner(m, x1) for m in (dense_fused, small_fused,
                                                             thin_fused)]
                    with torch.no_grad():
                        dms, fms, ratio, iqr = interleaved(runs[0], runs[1], x, args.rounds)
                        floor = interleaved(runs[0], runs[2], x, args.rounds)[2]
                    row = {"model": name, "round_to": rt, "pad_to": pad, "batch": batch,
                           "runtime": runtime, "flop_ratio": round(flop_ratio, 3),
                           "run_flop_ratio": round(run_flops, 3), "dense_ms": round(dms, 3),
                           "folded_ms": round(fms, 3), "latency_ratio": round(ratio, 3),
                           "ratio_iqr": round(iqr, 3),
                           "floor_ratio": round(floor, 3)}
                    derive(row)
                    print(row, flush=True)
                    rows.append(row)
    buf = io.StringIO()
    w = csv.DictWriter(buf, FIELDS)
    w.writeheader()
    w.writerows(rows)
    out = Path(args.out)
    atomic_write_text(buf.getvalue(), out.with_suffix(".csv"))
    met = sum(r["within_15pct"] == "yes" for r in rows)
    unreachable = sum(r["reachable"] == "no" for r in rows)
    measured = ""
    md = out.with_suffix(".md")
    if args.render_only and md.is_file():  # keep the stamp of the run that measured the rows
        first = next((ln for ln in md.read_text().splitlines()
                      if ln.startswith(("Produced by", "Measured:"))), "")
        measured = (first if first.startswith("Measured:") else "Measured: " + first) + "\n\n"
    text = ("# Latency of folded networks: dense and folded interleaved\n\n"
            + measured + stamp_markdown(info) + "\n"
            "Half of the FLOPs removed ("
            + ("`budget=\"flops\"`, uniform widths, `round_to`" if args.widths == "flops"
               else "uniform channel ratio by bisection") + "), BatchNorm fused in "
            "both models, one thread; `pad_to` > 1: the fold with zero channels appended up "
            "to that multiple (`tuneless export --pad-to`), `run_flop_ratio` the FLOPs it "
            "runs (the target is still on `flop_ratio`, the fold's); `latency_ratio` is the "
            f"median over {args.rounds} alternating rounds of folded / dense, `ratio_iqr` its "
            "interquartile range; `floor_ratio` the same for the thinnest fold (90% of every "
            "group's channels removed). Target (issue 22): latency ratio ≤ 1.15 × FLOP "
            "ratio.\n\n"
            f"**Within 15% of the FLOP ratio: {met} of {len(rows)} rows. Out of reach at "
            f"this FLOP ratio for any fold whose kernels are no faster per FLOP than the "
            f"dense model's (`reachable` = no: the thinnest fold's time plus the rest "
            f"scaled by the FLOP ratio is above the target): {unreachable}.**\n\n"
            + render_markdown(rows, FIELDS) + "\n")
    atomic_write_text(text, out.with_suffix(".md"))
    print(f"wrote {out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
