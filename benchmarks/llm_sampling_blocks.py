"""What sharing the data-free repair's sampling costs one process: SmolLM2-135M samples its
16 calibration sequences of 128 tokens in 1, 2 and 4 seeded blocks (tuneless.llm.refit.
self_generated(blocks=)), one thread; prints seconds per setting.

    PYTHONPATH=src python benchmarks/llm_sampling_blocks.py
"""

from __future__ import annotations

import time

import torch

from tuneless.llm.gguf import load_smollm2
from tuneless.llm.refit import self_generated


def main() -> None:
    torch.set_num_threads(1)
    model, tok = load_smollm2()
    for blocks in (1, 2, 4):
        start = time.perf_counter()
        self_generated(model, tok, 16, 128, 0, blocks=blocks)
        print(f"{blocks} block(s): {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
