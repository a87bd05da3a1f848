"""Per-step cost of the smoothness penalties on a training step (ResNet-20 default), and magnitudes.

    python benchmarks/penalty_overhead.py [--steps 12] [--batch 128] [--checkpoint plain.pt]

Times one SGD step (forward, cross-entropy, penalty, backward, update) at batch 128 with one
torch thread, as `tuneless train --threads 1` runs it, for: no penalty, d1, d2, nuc, and nuc with
every=10. Configurations are interleaved step by step so load from other processes hits all of
them alike; medians are reported. Also reports Σ R(W) at initialisation (and on a trained
checkpoint if given) next to the cross-entropy, which is what a raw λ has to be scaled against.
Writes docs/results/penalty_overhead.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tuneless.io_atomic import atomic_write_text
from tuneless.modelio import load_model
from tuneless.provenance import stamp, stamp_markdown
from tuneless.smooth import KINDS, SmoothPenalty, penalty_value
from tuneless.zoo import ARCH_DATASET, INPUT_SHAPE, build_model

CONFIGS = [("none", None, 1), ("d1", "d1", 1), ("d2", "d2", 1), ("nuc", "nuc", 1),
           ("nuc every 10", "nuc", 10)]


def make_step(arch: str, kind: str | None, every: int, batch: int):
    torch.manual_seed(0)
    model = build_model(arch).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    penalty = SmoothPenalty(model, kind, lam=1e-4, every=every) if kind else None
    x = torch.randn(batch, *INPUT_SHAPE[ARCH_DATASET[arch]])
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step() -> float:
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        if penalty is not None:
            loss = loss + penalty(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    def penalty_only() -> float:
        t0 = time.perf_counter()
        penalty(model).backward()
        return time.perf_counter() - t0

    return step, (penalty_only if penalty else None)


def magnitudes(model) -> dict[str, float]:
    with torch.no_grad():
        return {k: float(penalty_value(model, k)) for k in KINDS}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet20", help="zoo architecture")
    ap.add_argument("--steps", type=int, default=20, help="a multiple of 10")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--checkpoint", action="append", default=[],
                    help="trained checkpoint(s) of --arch (or resume files) whose penalty "
                    "magnitudes to report")
    ap.add_argument("--out", default="docs/results/penalty_overhead.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    info = stamp("python benchmarks/penalty_overhead.py " + " ".join(sys.argv[1:]))

    steps = {name: make_step(args.arch, kind, every, args.batch) for name, kind, every in CONFIGS}
    times: dict[str, list[float]] = {name: [] for name in steps}
    ptimes: dict[str, list[float]] = {name: [] for name in steps}
    for step, _ in steps.values():  # warm-up
        step()
    for i in range(args.steps):
        for name, (step, only) in steps.items():
            times[name].append(step())
            if only is not None and name != "nuc every 10":
                ptimes[name].append(only())
        print(f"\rstep {i + 1}/{args.steps}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    base = statistics.median(times["none"])
    lines = [
        "# Smoothness penalty: cost per training step and magnitude", "",
        stamp_markdown(info),
        f"{args.arch}, batch {args.batch}, random input, SGD step, channels_last, "
        f"1 torch thread; median of {args.steps} interleaved steps per configuration (the mean for "
        "\"every 10\", whose cost falls on one step in ten). The "
        "machine was shared with other jobs, so step times are noisy (differences between whole "
        "steps mix in that load); the penalty's own forward+backward, timed in isolation right "
        "after each step, is the steadier measure of its cost.",
        "",
        "| penalty | step (ms) | step vs no penalty | penalty fwd+bwd alone (ms) "
        "| alone / plain step |",
        "|---|---:|---:|---:|---:|",
    ]
    every = {name: e for name, _, e in CONFIGS}
    for name in steps:
        # every-N steps are cheap N-1 times and dear once: only their mean shows the cost
        med = statistics.mean(times[name]) if every[name] > 1 else statistics.median(times[name])
        alone = statistics.median(ptimes[name]) if ptimes[name] else None
        a_ms = f"{alone * 1000:.1f}" if alone else "-"
        a_pct = f"{100 * alone / base:.1f}%" if alone else "-"
        lines.append(f"| {name} | {med * 1000:.1f} | {100 * (med / base - 1):+.1f}% | {a_ms} "
                     f"| {a_pct} |")

    torch.manual_seed(0)
    init = build_model(args.arch)
    x = torch.randn(256, *INPUT_SHAPE[ARCH_DATASET[args.arch]])
    with torch.no_grad():
        ce = float(F.cross_entropy(init.train()(x), torch.randint(0, 10, (256,))))
    rows = [(f"{args.arch} at initialisation (seed 0)", magnitudes(init), ce)]
    for path in args.checkpoint:
        model = load_model(path, arch=args.arch)  # a checkpoint, or a resume file mid-training
        rows.append((f"trained: {Path(path).name}", magnitudes(model), None))
    lines += ["", "## Magnitude of Σ R(W) (unweighted)", "",
              "| model | d1 | d2 | nuc | cross-entropy |", "|---|---:|---:|---:|---:|"]
    for label, mag, loss in rows:
        ce_txt = f"{loss:.3f}" if loss is not None else "-"
        lines.append(f"| {label} | {mag['d1']:.4g} | {mag['d2']:.4g} | {mag['nuc']:.4g} "
                     f"| {ce_txt} |")
    mag0 = rows[0][1]
    lines += ["", "Raw λ that makes the penalty at initialisation equal to a share of the initial "
              "cross-entropy (≈ 2.3), i.e. relative λ = share × 2.3:", "",
              "| share of CE at init | relative λ | raw λ d1 | raw λ d2 | raw λ nuc |",
              "|---:|---:|---:|---:|---:|"]
    for share in (0.01, 0.05, 0.2, 1.0):
        rel = share * ce
        lines.append(f"| {share:g} | {rel:.3g} | {rel / mag0['d1']:.3g} | {rel / mag0['d2']:.3g} "
                     f"| {rel / mag0['nuc']:.3g} |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(text, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
