"""The streamed fold's defaults on SmolLM2-135M: `fold_checkpoint(src, dst, 0.2)` (paper-mlp,
data-free self repair: the checkpoint samples its own calibration text one layer at a time),
then perplexity on the first 2,048 WikiText-2 test tokens (windows of 512), against the
in-memory default in docs/llm.md. One thread; CPU seconds of the fold; peak RSS of the
process (fold and evaluation).

    python benchmarks/llm_stream_default.py [--seed 0] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    from transformers import AutoTokenizer

    from tuneless.llm import fold_checkpoint, load_folded, load_smollm2
    from tuneless.llm.gguf import smollm2_cache_dir
    from tuneless.llm.perplexity import WIKITEXT2_TEST, perplexity_of_ids, read_text, tokenize

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="keep the folded folder here")
    args = p.parse_args()
    torch.set_num_threads(1)
    src = smollm2_cache_dir()
    if not (src / "config.json").is_file():
        load_smollm2()  # writes the float32 safetensors folder the stream reads
    work = Path(tempfile.mkdtemp())
    dst = args.out or work / "folded"
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        fold_checkpoint(src, dst, 0.2, seed=args.seed, progress=False)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        ids = tokenize(AutoTokenizer.from_pretrained(str(src)), read_text(WIKITEXT2_TEST))
        ppl = perplexity_of_ids(load_folded(dst).float().eval(), ids, 512, 2048,
                                progress=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"seed": args.seed, "ppl": round(ppl, 2), "cpu_s": round(cpu, 1),
                      "wall_s": round(wall, 1), "peak_rss_gib": round(peak, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
