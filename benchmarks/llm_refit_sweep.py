"""Settings of the least-squares repair for folded LLMs (tuneless.llm.refit) on SmolLM2-135M.

    python benchmarks/llm_refit_sweep.py [--tokens 2048] [--out docs/results/llm_refit_sweep.md]

Folds SmolLM2-135M at 20% of block parameters with the paper-mlp schedule, then repairs it
on self-generated text (data-free) with different ridge strengths, numbers of calibration
sequences and k-means refinement; WikiText-2 test perplexity on the first --tokens tokens.
The self-generated text (64 sequences of 256 tokens, seed 0) is sampled once; the first n
sequences are used for n = 32 (what repair="self" draws by default).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from tuneless.bench.stamp import stamp, stamp_markdown
from tuneless.io_atomic import atomic_write_text
from tuneless.llm import fold_llm, load_smollm2
from tuneless.llm.perplexity import WIKITEXT2_TEST, perplexity_of_ids, read_text, tokenize
from tuneless.llm.refit import self_generated

SETTINGS = [  # (calibration sequences, lambda, k-means refinement)
    (0, None, False), (32, 3.0, False), (64, 3.0, False), (32, 1.0, False), (64, 1.0, False),
    (32, 10.0, False), (32, 3.0, True),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--sparsity", type=float, default=0.2)
    ap.add_argument("--schedule", default="paper-mlp")
    ap.add_argument("--out", type=Path, default=Path("docs/results/llm_refit_sweep.md"))
    ap.add_argument("--max-samples", type=int, default=64,
                    help="self-generated sequences to sample (settings use the first n)")
    ap.add_argument("--settings", default=None,
                    help="n:lambda:refine,... (refine 0/1; n=0 means no repair); "
                         "default: the built-in list")
    args = ap.parse_args()
    settings = SETTINGS if args.settings is None else [
        (int(n), float(lam) if int(n) else None, bool(int(r)))
        for n, lam, r in (item.split(":") for item in args.settings.split(","))]
    torch.set_num_threads(1)
    info = stamp("python benchmarks/llm_refit_sweep.py " + " ".join(sys.argv[1:]))
    model, tok = load_smollm2()
    ids = tokenize(tok, read_text(WIKITEXT2_TEST))
    dense = perplexity_of_ids(model, ids, 512, args.tokens, progress=False)
    start = time.perf_counter()
    calib = self_generated(model, tok, n_samples=args.max_samples, seq_len=256, seed=0)
    gen_s = time.perf_counter() - start
    rows = []
    for n, lam, refine in settings:
        start = time.process_time()
        kw = {"repair": "data", "data": calib[:n], "refit_lambda": lam} if n else {}
        small = fold_llm(model, args.sparsity, schedule=args.schedule, refine=refine, **kw)
        cpu = time.process_time() - start
        ppl = perplexity_of_ids(small, ids, 512, args.tokens, progress=False)
        rows.append((n, lam, refine, ppl, cpu))
        print(f"n={n} lambda={lam} refine={refine}: ppl {ppl:.2f} ({cpu:.0f} CPU s)", flush=True)
        lines = [
            "# Least-squares repair of folded SmolLM2-135M: settings", "",
            stamp_markdown(info),
            f"SmolLM2-135M folded at {args.sparsity:.0%} of block parameters "
            f"(`schedule=\"{args.schedule}\"`), repaired on text the dense model sampled itself "
            f"(sequences of 256 tokens; sampling {args.max_samples} took {gen_s:.0f} s). "
            "WikiText-2 raw test, "
            f"first {args.tokens} tokens in windows of 512; dense perplexity {dense:.2f}. "
            "CPU seconds = fold + repair in this process (one thread; the machine was shared).",
            "", "| calibration sequences | λ | k-means refinement | perplexity | × dense | CPU s |",
            "|---|---|---|---|---|---|",
        ]
        lines += [f"| {n or 'none (no repair)'} | {lam if lam is not None else '-'} | "
                  f"{'yes' if r else 'no'} | {p:.2f} | {p / dense:.2f} | {c:.0f} |"
                  for n, lam, r, p, c in rows]
        atomic_write_text("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
