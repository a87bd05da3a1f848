"""Every torchvision classification model through fold (data-free Fold-AR default) and
structured L1 pruning at 30% of the parameters (issue 22 item 4). Random weights
(no downloads), num_classes=10, small inputs; each model in its own process with a time
limit, one thread. Writes docs/breadth-torchvision.md (and a JSONL of the rows).

    python benchmarks/breadth_torchvision.py [--out docs/breadth-torchvision.md]
        [--only NAME ...] [--limit-s 900]

Rows go to docs/breadth-torchvision.jsonl as they finish; rerunning resumes from it
(delete a model's line to measure it again).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# inputs that differ from 1×3×64×64, and constructor options (no auxiliary heads)
SHAPES = {"maxvit_t": 224, "inception_v3": 96, "vit_h_14": 56}  # vit_h_14: its 14-px patches
KWARGS = {"inception_v3": {"aux_logits": False, "init_weights": False},
          "googlenet": {"aux_logits": False, "init_weights": False},
          "vit_b_16": {"image_size": 64}, "vit_b_32": {"image_size": 64},
          "vit_l_16": {"image_size": 64}, "vit_l_32": {"image_size": 64},
          "vit_h_14": {"image_size": 56}}


def one(name: str) -> dict:
    """Fold and prune one model; a row of what happened (errors as their first line)."""
    import torch
    import torchvision

    import tuneless

    torch.set_num_threads(1)
    size = SHAPES.get(name, 64)
    x = torch.randn(1, 3, size, size)
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10,
                                         **KWARGS.get(name, {})).eval()
    with torch.no_grad():
        y = model(x)
    row = {"model": name, "input": size, "params": sum(p.numel() for p in model.parameters())}
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    for method in ("fold", "prune"):
        # Fold-AR repairs BatchNorm statistics; a model without BN folds with repair="none"
        extra = {"repair": "none"} if method == "fold" and not has_bn else {}
        if extra:
            row["note"] = "no BatchNorm: fold with repair='none'"
        t0 = time.perf_counter()
        try:
            small = getattr(tuneless, method)(model, sparsity=0.3, example_inputs=x,
                                              **extra).eval()
            with torch.no_grad():
                ys = small(x)
            after = sum(p.numel() for p in small.parameters())
            ok = ys.shape == y.shape and bool(torch.isfinite(ys).all())
            row[f"{method}_removed"] = round(1 - after / row["params"], 4)
            if method == "fold":  # allocation="auto": measured widths or uniform (cost)
                row["fold_widths"] = small.tuneless_report.get("allocation", "?")
            row[method] = "yes" if ok and abs(1 - after / row["params"] - 0.3) <= 0.02 else \
                f"ran, removed {1 - after / row['params']:.3f}"
        except Exception as exc:  # the table shows failures with their reason
            row[method] = "no: " + (str(exc).strip().splitlines() or [type(exc).__name__])[0][:110]
        row[f"{method}_s"] = round(time.perf_counter() - t0, 1)
    return row


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="docs/breadth-torchvision.md")
    p.add_argument("--only", nargs="*")
    p.add_argument("--limit-s", type=int, default=900)
    p.add_argument("--conditions", default="the machine otherwise idle",
                   help="what else ran while timing (printed beside the seconds)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one)), flush=True)
        return 0
    import torchvision

    from tuneless.io_atomic import atomic_write_text
    from tuneless.provenance import stamp, stamp_markdown
    from tuneless.report import render_markdown

    names = args.only or sorted(torchvision.models.list_models(module=torchvision.models))
    log = Path(args.out).with_suffix(".jsonl")
    done_rows = {}  # rerunning the command resumes: rows already in the log are kept
    if log.is_file():
        for line in log.read_text().splitlines():
            row = json.loads(line)
            done_rows[row["model"]] = row
    rows = [done_rows[n] for n in names if n in done_rows]
    for name in names:
        if name in done_rows:
            continue
        try:
            done = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True,
                                  text=True, timeout=args.limit_s)
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
            last = (done.stderr.strip().splitlines() or ["?"])[-1][:110]
            row = json.loads(lines[-1]) if lines else {"model": name, "fold": "no: " + last}
        except subprocess.TimeoutExpired:
            row = {"model": name, "fold": f"no: over {args.limit_s} s", "prune": "not run"}
        print(json.dumps(row), flush=True)
        rows.append(row)
        with open(log, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    rows.sort(key=lambda r: names.index(r["model"]))
    folded = sum(r.get("fold") == "yes" for r in rows)
    pruned = sum(r.get("prune") == "yes" for r in rows)
    s = stamp(command="python benchmarks/breadth_torchvision.py")
    text = ("# Breadth: every torchvision classification model\n\n"
            "`tuneless.fold` (the data-free default, Fold-AR; `fold_widths`: what its default\n"
            "allocation chose, measured per group or uniform) and `tuneless.prune` (L1) at 30%\n"
            "of the parameters on every model `torchvision.models.list_models` lists for\n"
            "classification; random weights, num_classes=10, input 1×3×64×64 unless the\n"
            "table says otherwise (ViTs built for that size); a model passes when the result\n"
            "runs, keeps the output shape, stays finite and removes 30% ± 2 points. Seconds are\n"
            f"wall time on one thread ({args.conditions}); each model runs in a process of\n"
            "its own. For comparison, Torch-Pruning reports 77 of 85\n"
            "torchvision models pruned in its own benchmark.\n\n"
            + stamp_markdown(s) + "\n"
            f"**fold: {folded} / {len(rows)}; prune: {pruned} / {len(rows)}.**\n\n"
            + render_markdown(rows, ["model", "input", "params", "fold", "fold_removed",
                                     "fold_widths", "fold_s", "prune", "prune_removed",
                                     "prune_s", "note"])
            + "\n")
    atomic_write_text(text, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
