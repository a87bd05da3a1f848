"""How sensitive is each decoder layer of SmolLM2-135M to MLP folding? Folds one layer at a
time (MLP channels only, heads kept) and measures WikiText-2 perplexity; prints a markdown
table. This is why uniform schedules fail on small LLMs and the paper leaves early layers
untouched.

    python benchmarks/llm_layer_probe.py [--mlp-ratio 0.5] [--tokens 1024] [--seq-len 512]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mlp-ratio", type=float, default=0.5, help="fraction of MLP channels folded")
    p.add_argument("--tokens", type=int, default=1024, help="WikiText-2 token budget")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--text", default="../shared/data/wikitext-2-raw/wiki.test.raw")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from tuneless.llm import fold_llm, load_smollm2
    from tuneless.llm.perplexity import perplexity_of_ids, read_text, tokenize
    from tuneless.provenance import stamp, stamp_markdown

    info = stamp("python benchmarks/llm_layer_probe.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()))
    model, tok = load_smollm2()
    ids = tokenize(tok, read_text(args.text))

    def ppl(m) -> float:
        return perplexity_of_ids(m, ids, args.seq_len, args.tokens, progress=False)

    dense = ppl(model)
    print("# SmolLM2-135M: perplexity when one layer's MLP is folded\n")
    print(stamp_markdown(info))
    print(f"Dense perplexity {dense:.2f} (first {args.tokens} tokens, windows of "
          f"{args.seq_len}). One layer's MLP folded by {args.mlp_ratio:.0%}, all else dense.\n")
    print("| layer | perplexity | × dense | fold s |")
    print("|---:|---:|---:|---:|")
    for i in range(model.config.num_hidden_layers):
        t0 = time.perf_counter()
        small = fold_llm(model, None, schedule={i: (0.0, args.mlp_ratio)})
        secs = time.perf_counter() - t0
        value = ppl(small)
        print(f"| {i} | {value:.2f} | {value / dense:.2f} | {secs:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
