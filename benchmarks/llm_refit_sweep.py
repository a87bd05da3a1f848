"""Settings of the least-squares repair for folded LLMs (tuneless.llm.refit) on SmolLM2-135M.

    python benchmarks/llm_refit_sweep.py [--tokens 2048] [--out docs/results/llm_refit_sweep.md]

Folds SmolLM2-135M at 20% of block parameters with the paper-mlp schedule, then repairs it
on self-generated text (data-free) with different ridge strengths, numbers of calibration
sequences, k-means refinement and clustering features (raw weights or activation-aware);
WikiText-2 test perplexity on the first --tokens tokens.
The self-generated text (--max-samples sequences of 256 tokens, seed 0) is sampled once;
a setting with n sequences uses the first n (repair="self" draws 64 by default).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from tuneless.io_atomic import atomic_write_text
from tuneless.llm import fold_llm, load_smollm2
from tuneless.llm.perplexity import WIKITEXT2_TEST, perplexity_of_ids, read_text, tokenize
from tuneless.llm.refit import self_generated
from tuneless.provenance import stamp, stamp_markdown

SETTINGS = [  # (calibration sequences, lambda, k-means refinement, clustering features)
    (0, None, False, "weights"), (64, 1.0, False, "weights"), (64, 1.0, False, "activations"),
    (64, 0.3, False, "activations"), (32, 1.0, False, "activations"),
]


def _setting(parts: list[str]) -> tuple[int, float | None, bool, str]:
    n = int(parts[0])
    features = parts[3] if len(parts) > 3 else "activations"
    return n, float(parts[1]) if n else None, bool(int(parts[2])), features


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--sparsity", type=float, default=0.2)
    ap.add_argument("--schedule", default="paper-mlp")
    ap.add_argument("--out", type=Path, default=Path("docs/results/llm_refit_sweep.md"))
    ap.add_argument("--max-samples", type=int, default=64,
                    help="self-generated sequences to sample (settings use the first n)")
    ap.add_argument("--settings", default=None,
                    help="n:lambda:refine[:features],... (refine 0/1; n=0 means no repair; "
                         "features weights|activations, default activations); "
                         "default: the built-in list")
    args = ap.parse_args()
    settings = SETTINGS if args.settings is None else [
        _setting(item.split(":")) for item in args.settings.split(",")]
    torch.set_num_threads(1)
    info = stamp("python benchmarks/llm_refit_sweep.py " + " ".join(sys.argv[1:]))
    model, tok = load_smollm2()
    ids = tokenize(tok, read_text(WIKITEXT2_TEST))
    dense = perplexity_of_ids(model, ids, 512, args.tokens, progress=False)
    start = time.perf_counter()
    calib = self_generated(model, tok, n_samples=args.max_samples, seq_len=256, seed=0)
    gen_s = time.perf_counter() - start
    rows = []
    for n, lam, refine, features in settings:
        start = time.process_time()
        kw = ({"repair": "refit", "data": calib[:n], "refit_lambda": lam, "features": features}
              if n else {})
        small = fold_llm(model, args.sparsity, schedule=args.schedule, refine=refine, **kw)
        cpu = time.process_time() - start
        ppl = perplexity_of_ids(small, ids, 512, args.tokens, progress=False)
        rows.append((n, lam, refine, features, ppl, cpu))
        print(f"n={n} lambda={lam} refine={refine} features={features}: ppl {ppl:.2f} "
              f"({cpu:.0f} CPU s)", flush=True)
        lines = [
            "# Least-squares repair of folded SmolLM2-135M: settings", "",
            stamp_markdown(info),
            f"SmolLM2-135M folded at {args.sparsity:.0%} of block parameters "
            f"(`schedule=\"{args.schedule}\"`), repaired on text the dense model sampled itself "
            f"(sequences of 256 tokens; sampling {args.max_samples} took {gen_s:.0f} s). "
            "WikiText-2 raw test, "
            f"first {args.tokens} tokens in windows of 512; dense perplexity {dense:.2f}. "
            "CPU seconds = fold + repair in this process (one thread; the machine was shared), "
            "including the activation-statistics pass for activation-aware features "
            "(tuneless.llm.activation_stats; \"weights\" = the paper's raw-weight features).",
            "", "| calibration sequences | λ | k-means refinement | clustering features | "
            "perplexity | × dense | CPU s |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [f"| {n or 'none (no repair)'} | {lam if lam is not None else '-'} | "
                  f"{'yes' if r else 'no'} | {f if n else 'weights'} | {p:.2f} | "
                  f"{p / dense:.2f} | {c:.0f} |"
                  for n, lam, r, f, p, c in rows]
        atomic_write_text("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
