"""Tiny random LLaMA models for fast exactness tests (no downloads)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_llama(n_heads=4, n_kv=2, hidden=64, mlp=32, layers=2, bias=False, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=97, hidden_size=hidden, intermediate_size=mlp,
                      num_hidden_layers=layers, num_attention_heads=n_heads,
                      num_key_value_heads=n_kv, max_position_embeddings=64,
                      attention_bias=bias, mlp_bias=bias)
    return LlamaForCausalLM(cfg).eval()


def duplicate_channels(model) -> None:
    """Make MLP channel j+n/2 an exact copy of channel j (rows and down columns) in every layer."""
    with torch.no_grad():
        for layer in model.model.layers:
            m = layer.mlp
            h = m.gate_proj.out_features // 2
            for lin in (m.gate_proj, m.up_proj):
                lin.weight[h:] = lin.weight[:h]
                if lin.bias is not None:
                    lin.bias[h:] = lin.bias[:h]
            m.down_proj.weight[:, h:] = m.down_proj.weight[:, :h]


def duplicate_kv_groups(model) -> None:
    """Make the second half of the kv groups (k, v heads, their query heads, o columns) copies."""
    cfg = model.config
    hd = cfg.hidden_size // cfg.num_attention_heads
    half_kv = cfg.num_key_value_heads // 2 * hd
    half_q = cfg.num_attention_heads // 2 * hd
    with torch.no_grad():
        for layer in model.model.layers:
            a = layer.self_attn
            for lin, half in ((a.k_proj, half_kv), (a.v_proj, half_kv), (a.q_proj, half_q)):
                lin.weight[half:] = lin.weight[:half]
                if lin.bias is not None:
                    lin.bias[half:] = lin.bias[:half]
            a.o_proj.weight[:, half_q:] = a.o_proj.weight[:, :half_q]


def duplicate_query_heads(model) -> None:
    """Inside each kv group of size 2, make query head 2j+1 a copy of head 2j (q rows, o cols)."""
    cfg = model.config
    hd = cfg.hidden_size // cfg.num_attention_heads
    with torch.no_grad():
        for layer in model.model.layers:
            a = layer.self_attn
            for j in range(0, cfg.num_attention_heads, 2):
                src, dst = slice(j * hd, (j + 1) * hd), slice((j + 1) * hd, (j + 2) * hd)
                a.q_proj.weight[dst] = a.q_proj.weight[src]
                a.o_proj.weight[:, dst] = a.o_proj.weight[:, src]
