"""Which layers an LLM fold should take its budget from: the library's schedules and a few
shapes given as per-layer dicts, each with the default repair, on SmolLM2-135M or any
model given (`--model`, a .gguf file or Hugging Face folder as in llm_other_family.py).
Perplexity on the first 2,048 WikiText-2 test tokens, one thread, one JSON line per row.

    python benchmarks/llm_schedules.py --sparsity 0.3 --seed 0 default inner-mlp spare2 \\
        fill75 uniform-mlp
    python benchmarks/llm_schedules.py --method obs spare6 spare10   # structured OBS instead

Rows: a library schedule name ("paper-mlp", "inner-mlp", "uniform", "paper"), "default"
(no schedule given: what `tuneless.fold(model, sparsity=s)` picks), or a shape solved for
the budget here and passed as a dict (heads kept everywhere): "spareK" (one MLP ratio for
every layer but the first K and the last), "uniform-mlp" (one MLP ratio everywhere),
"fillNN" (paper-mlp's ratios up to NN% in its deepest layers, then one floor ratio over
every layer), "rampNN" (a ratio rising linearly with depth from NN% of the depth to the
last-but-one layer, the last layer kept).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LIBRARY = ("paper-mlp", "inner-mlp", "uniform", "paper")


def shape_ratios(kind: str, n: int, t: float) -> list[float]:
    """MLP ratio per layer of a dict-shaped row at scale t (monotone in t)."""
    from tuneless.llm.plan import paper_ratios

    if kind == "uniform-mlp":
        return [min(t, 0.95)] * n
    if kind.startswith("spare"):
        k = int(kind[5:])
        return [0.0 if (i < k or i == n - 1) else min(t, 0.95) for i in range(n)]
    if kind.startswith("fill"):
        paper = [paper_ratios(i, n)[1] for i in range(n)]
        s_cap = float(kind[4:]) / 100 / max(paper)
        floor = max(0.0, t - s_cap)
        return [min(0.95, max(min(t, s_cap) * p, floor)) for p in paper]
    if kind.startswith("ramp"):
        start = float(kind[4:]) / 100 * (n - 1)
        return [0.0 if i == n - 1 else min(0.95, t * max(0.0, i - start) / (n - 2 - start))
                for i in range(n)]
    raise SystemExit(f"unknown row {kind!r}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rows", nargs="+")
    p.add_argument("--sparsity", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help=".gguf or HF folder (default: SmolLM2-135M)")
    p.add_argument("--method", default="fold", choices=("fold", "obs"),
                   help="fold (default) or obs: tuneless.prune(criterion='obs') on the same "
                        "sizes")
    args = p.parse_args()
    import tuneless
    from tuneless.budget import bisect
    from tuneless.llm import block_params, load_smollm2
    from tuneless.llm.adapters import adapter_for
    from tuneless.llm.perplexity import WIKITEXT2_TEST, perplexity_of_ids, read_text, tokenize
    from tuneless.llm.plan import layer_plan, removed_fraction

    torch.set_num_threads(1)
    if args.model:
        from benchmarks.llm_other_family import load

        model, tok = load(args.model)
    else:
        model, tok = load_smollm2()
    ids = tokenize(tok, read_text(WIKITEXT2_TEST))
    dense = perplexity_of_ids(model, ids, 512, 2048, progress=False)
    print(json.dumps({"model": type(model).__name__, "dense": round(dense, 2)}), flush=True)
    shapes = adapter_for(model).shapes(model)
    n = len(shapes)
    for kind in args.rows:
        kw: dict = {"seed": args.seed}
        if kind == "default":
            kw["sparsity"] = args.sparsity
        elif kind in LIBRARY:
            kw.update(sparsity=args.sparsity, schedule=kind)
        else:
            def plans(t, kind=kind):
                return [layer_plan(s, 0.0, r, "kv-groups")
                        for s, r in zip(shapes, shape_ratios(kind, n, t))]
            _, hi = bisect(lambda t: removed_fraction(shapes, plans(t)) >= args.sparsity,
                           0.0, 3.0)
            kw["schedule"] = {i: (0.0, r) for i, r in enumerate(shape_ratios(kind, n, hi))}
        cpu = time.process_time()
        if args.method == "obs":
            small = tuneless.prune(model, criterion="obs", **kw)
        else:
            small = tuneless.fold(model, **kw)
        cpu = time.process_time() - cpu
        ppl = perplexity_of_ids(small, ids, 512, 2048, progress=False)
        mlp = [s[2] for s in getattr(small.config, "tuneless_layer_sizes", [])]
        print(json.dumps({"row": kind, "method": args.method, "sparsity": args.sparsity,
                          "seed": args.seed,
                          "ppl": round(ppl, 2), "x_dense": round(ppl / dense, 3),
                          "cpu_s": round(cpu, 1),
                          "removed": round(1 - block_params(small) / block_params(model), 4),
                          "mlp_kept": mlp}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
