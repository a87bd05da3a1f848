"""What the documented one-liner gives on SmolLM2-135M: `tuneless.fold(model, sparsity=0.2)`
with the library's defaults, or with overrides given as JSON (`"method": "magnitude"` or
`"wanda-sp"` runs `tuneless.prune` with that criterion instead, `"flap"` FLAP, `"svd"` SVD,
for the baselines on equal terms; Wanda-sp and FLAP draw their calibration windows from the
Python reference docs). Issue 19's
target: perplexity ≤ 1.5× dense on the first 2,048 WikiText-2 test tokens, ≤ 120 CPU-s
including the repair and its self-generated calibration text. One thread; CPU seconds of
this process.

    python benchmarks/llm_default.py                       # the defaults
    python benchmarks/llm_default.py '{"calib_samples": 32}' '{"refine": true}'
    python benchmarks/llm_default.py '{"method": "obs", "sparsity": 0.3}'   # another budget
"""

from __future__ import annotations

import json
import sys
import time

import torch


def main(argv: list[str]) -> int:
    import tuneless
    from tuneless.llm import block_params, load_smollm2
    from tuneless.llm.perplexity import WIKITEXT2_TEST, perplexity_of_ids, read_text, tokenize

    torch.set_num_threads(1)
    model, tok = load_smollm2()
    ids = tokenize(tok, read_text(WIKITEXT2_TEST))

    def ppl(m):
        return perplexity_of_ids(m, ids, 512, 2048, progress=False)

    dense = ppl(model)
    print(f"dense {dense:.2f}", flush=True)
    for text in argv or ["{}"]:
        options = json.loads(text)
        call = dict(options)
        method = call.pop("method", "fold")
        sparsity = call.pop("sparsity", 0.2)
        cpu, wall = time.process_time(), time.perf_counter()
        if method == "fold":
            small = tuneless.fold(model, sparsity=sparsity, **call)
        elif method == "flap":  # FLAP (adaptive structure, bias compensation) on real text
            from tuneless.llm import flap_llm

            call.setdefault("tokenizer", tok)
            small = flap_llm(model, None if isinstance(call.get("schedule"), dict) else sparsity,
                             **call)
        elif method == "svd":  # plain, or SVD-LLM whitening with "whiten": "self" | "data"
            from tuneless.llm import svd_llm

            if call.get("whiten") == "data":
                call.setdefault("tokenizer", tok)
            small = svd_llm(model, sparsity, **call)
        else:
            if method == "wanda-sp":
                call.setdefault("tokenizer", tok)
            small = tuneless.prune(model, sparsity=sparsity, criterion=method, **call)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        p = ppl(small)
        print(json.dumps({"options": options, "ppl": round(p, 2), "x_dense": round(p / dense, 3),
                          "cpu_s": round(cpu, 1), "wall_s": round(wall, 1),
                          "removed": round(1 - block_params(small) / block_params(model), 4),
                          "schedule_choice": small.tuneless_report.get("schedule_choice")}),
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
