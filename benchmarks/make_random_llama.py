"""Write a randomly initialised LLaMA-architecture checkpoint (bf16, sharded safetensors).

For the out-of-core folding demo: the default is a Llama-3.2-3B-shaped model
(hidden 3072, 28 layers, 24 query / 8 kv heads, MLP 8192, vocab 128256, tied
embeddings) = 3.21 B parameters, ~6.4 GB. One shard per decoder layer, written
one tensor group at a time so this script itself stays small in memory.

    python benchmarks/make_random_llama.py ./bigllama
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 3072,
    "intermediate_size": 8192, "num_hidden_layers": 28, "num_attention_heads": 24,
    "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "hidden_act": "silu", "tie_word_embeddings": True, "attention_bias": False,
    "mlp_bias": False, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16",
}


def _rand(gen, *shape, std=0.02):
    return (torch.randn(*shape, generator=gen) * std).to(torch.bfloat16)


def layer_tensors(cfg: dict, i: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    h, f, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    nq, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    p = f"model.layers.{i}."
    return {
        p + "self_attn.q_proj.weight": _rand(gen, nq * hd, h),
        p + "self_attn.k_proj.weight": _rand(gen, nkv * hd, h),
        p + "self_attn.v_proj.weight": _rand(gen, nkv * hd, h),
        p + "self_attn.o_proj.weight": _rand(gen, h, nq * hd),
        p + "mlp.gate_proj.weight": _rand(gen, f, h),
        p + "mlp.up_proj.weight": _rand(gen, f, h),
        p + "mlp.down_proj.weight": _rand(gen, h, f),
        p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
        p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--layers", type=int, default=CONFIG["num_hidden_layers"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; choose a new folder")
    cfg = dict(CONFIG, num_hidden_layers=args.layers)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.mkdir(parents=True, exist_ok=False)
    gen = torch.Generator().manual_seed(args.seed)
    n = cfg["num_hidden_layers"] + 1
    weight_map, total, count = {}, 0, 0

    def write(tensors, k):
        nonlocal total, count
        name = f"model-{k:05d}-of-{n:05d}.safetensors"
        save_file(tensors, str(tmp / name), metadata={"format": "pt"})
        for key, t in tensors.items():
            weight_map[key] = name
            total += t.numel() * t.element_size()
            count += t.numel()

    write({"model.embed_tokens.weight": _rand(gen, cfg["vocab_size"], cfg["hidden_size"]),
           "model.norm.weight": torch.ones(cfg["hidden_size"], dtype=torch.bfloat16)}, 1)
    for i in range(cfg["num_hidden_layers"]):
        write(layer_tensors(cfg, i, gen), i + 2)
        print(f"layer {i + 1}/{cfg['num_hidden_layers']}", flush=True)
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
    os.replace(tmp, args.out)
    print(f"{count / 1e9:.2f} B parameters, {total / 2**30:.2f} GiB in {args.out}")


if __name__ == "__main__":
    main()
