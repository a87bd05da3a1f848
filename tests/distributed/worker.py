"""Run by tests/distributed/test_data_parallel.py, once alone and once per rank under
torchrun: fold a tiny random Llama with the least-squares repair and a small CNN with
Fold-R (BN re-estimation) and with the CNN refit, on fixed calibration data; rank 0 saves
the results to the folder given."""

from __future__ import annotations

import sys

import torch
from torch import nn

import tuneless
from tuneless.distributed import init_from_env, is_main


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)).eval()


def tiny_cnn():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    with torch.no_grad():  # trained-looking BN statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def main(out: str) -> int:
    torch.set_num_threads(1)
    init_from_env()
    ids = torch.randint(0, 97, (8, 16), generator=torch.Generator().manual_seed(2))
    images = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    x = images[:1]
    llm = tuneless.fold(tiny_llama(), head_ratio=0.5, mlp_ratio=0.5, repair="refit", data=ids)
    fold_r = tuneless.fold(tiny_cnn(), channel_ratio=0.5, repair="data", data=images,
                           example_inputs=x, batch_size=16)
    refit = tuneless.fold(tiny_cnn(), channel_ratio=0.5, repair="refit", data=images,
                          example_inputs=x, batch_size=16)
    # the data-free repair: the model samples its calibration text in 2 seeded blocks, one
    # per rank under torchrun
    self = tuneless.fold(tiny_llama(), head_ratio=0.5, mlp_ratio=0.5, repair="self",
                         calib_samples=6, calib_len=12, calib_blocks=2)
    from tuneless.distributed import shard
    from tuneless.llm.fold import rank_calibration_ids

    sampled = rank_calibration_ids(tiny_llama(), "self", None, None, 6, 12, blocks=2)
    if is_main():  # and what this rank itself saw: its share of the data
        torch.save({"llm": llm.state_dict(), "fold_r": fold_r.state_dict(),
                    "refit": refit.state_dict(), "self": self.state_dict(),
                    "rows": len(shard(ids)), "sampled": sampled,
                    "refit_images": refit.refit_report["images"]}, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
