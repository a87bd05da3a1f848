"""Same settings, same weights: LLM results of this checkout against another commit (issue 18).

Runs the LLM methods on SmolLM2-135M (and a tiny random LLaMA) twice, once with the code
of a reference commit (checked out by `git worktree` into a temporary folder) and once
with this checkout, each in its own subprocess, then prints the largest absolute weight
difference per setting. Usage:

    python benchmarks/engine_equivalence.py --ref 1b29451 [--skip-smollm2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SETTINGS = {
    "fold-uniform-0.2": "tl.fold_llm(m, sparsity=0.2)",
    "fold-paper-mlp-self": "tl.fold_llm(m, sparsity=0.2, schedule='paper-mlp', repair='self', "
                           "calib_samples=8, calib_len=64)",
    "fold-query-heads": "tl.fold_llm(m, sparsity=0.2, gqa='query-heads')",
    "fold-jl": "tl.fold_llm(m, sparsity=0.3, kmeans_dim=64, refine=False)",
    "magnitude": "tl.magnitude_prune_llm(m, sparsity=0.2, schedule='paper-mlp')",
    "wanda-sp": "tl.wanda_sp_llm(m, sparsity=0.2, schedule='paper-mlp', batches=[ids])",
    "svd": "tl.svd_llm(m, sparsity=0.2)",
}

CHILD = r"""
import sys, torch
torch.set_num_threads(1)
import tuneless.llm as tl
which, out = sys.argv[1], sys.argv[2]
if which == "smollm2":
    m, tok = tl.load_smollm2()
else:
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=48,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128)).eval()
ids = torch.randint(0, 90, (4, 32), generator=torch.Generator().manual_seed(1))
results = {}
for name, call in SETTINGS.items():
    if which == "smollm2" and name in ("svd",):
        continue
    small = eval(call)
    results[name] = {k: v.detach().float().clone() for k, v in small.state_dict().items()}
torch.save(results, out)
"""


def run(src: Path, which: str, out: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1")
    code = f"SETTINGS = {SETTINGS!r}\n" + CHILD
    subprocess.run([sys.executable, "-c", code, which, str(out)], check=True, env=env,
                   cwd=tempfile.gettempdir())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", required=True, help="reference commit")
    ap.add_argument("--skip-smollm2", action="store_true")
    args = ap.parse_args()
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="tuneless-equiv-"))
    ref = tmp / "ref"
    subprocess.run(["git", "worktree", "add", "--detach", str(ref), args.ref], cwd=ROOT,
                   check=True, capture_output=True)
    report = {}
    try:
        for which in ["tiny"] + ([] if args.skip_smollm2 else ["smollm2"]):
            run(ref / "src", which, tmp / f"{which}-ref.pt")
            run(ROOT / "src", which, tmp / f"{which}-new.pt")
            a, b = torch.load(tmp / f"{which}-ref.pt"), torch.load(tmp / f"{which}-new.pt")
            for name in a:
                if set(a[name]) != set(b[name]):
                    report[f"{which}/{name}"] = "different tensors"
                    continue
                diffs = [(a[name][k] - b[name][k]).abs().max().item()
                         if a[name][k].shape == b[name][k].shape else float("inf")
                         for k in a[name]]
                report[f"{which}/{name}"] = max(diffs)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(ref)], cwd=ROOT)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
