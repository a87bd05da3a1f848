"""Regenerate docs/breadth.md: python tests/breadth/make_table.py [--out docs/breadth.md]."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from breadth_cases import TOL, cases, check  # noqa: E402

from tuneless.io_atomic import atomic_write_text  # noqa: E402
from tuneless.provenance import stamp, stamp_markdown  # noqa: E402
from tuneless.report import render_markdown  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="docs/breadth.md")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in cases():
        try:
            row = check(name)
        except Exception as exc:  # the table must show failures, not stop at the first
            row = {"model": name, "pass": False, "error": str(exc).splitlines()[0][:120]}
        print(row, flush=True)
        rows.append(row)
    cols = ["model", "pass", "reducible_groups", "params", "pruned_params", "achieved_sparsity",
            "identity_max_diff", "same_output_shape", "seconds"]
    if any("error" in r for r in rows):
        cols.append("error")
    s = stamp(command="python tests/breadth/make_table.py")
    text = (
        "# Breadth: which models the channel-group engine handles\n\n"
        "Structured L1 pruning at sparsity 0.3 (fraction of parameters removed) must run,\n"
        "keep the output shape, really drop parameters and land within ±1 point; and\n"
        f"`channel_ratio=0` (every group rewritten by an identity selection) must give\n"
        f"outputs within {TOL:g} of the original. Random weights (no downloads);\n"
        "torchvision models at 1×3×64×64 with num_classes=10 (vit_b_16 built with\n"
        "image_size=64), zoo models at their dataset's shape, patterns at 2×3×16×16.\n"
        "`option_a_resnet20` is our own option-A (F.pad shortcut) CIFAR ResNet-20.\n\n"
        + stamp_markdown(s) + "\n"
        f"**{sum(bool(r['pass']) for r in rows)} / {len(rows)} pass.**\n\n"
        + render_markdown(rows, cols, formats={"achieved_sparsity": ".4f",
                                               "identity_max_diff": ".1e", "seconds": ".1f"})
        + "\n"
    )
    old = Path(args.out).read_text() if Path(args.out).is_file() else ""
    rest = old.find("\n## ")  # the sections written by hand after the table stay
    if rest >= 0:
        text += old[rest:]
    atomic_write_text(text, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
