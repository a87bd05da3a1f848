"""The breadth suite's models and its one check, shared by the tests and make_table.py.

check(): structured L1 pruning at 30% of the parameters runs, the pruned model keeps the
output shape, the parameter count really drops, and channel_ratio=0 (every group rewritten
with an identity selection) reproduces the outputs (max abs diff ≤ 1e-5).
"""

from __future__ import annotations

import time

import torch
from graph_patterns import PATTERNS
from option_a_resnet import resnet20 as resnet20_option_a

from tuneless.methods.prune import prune
from tuneless.modelio import build_arch
from tuneless.zoo import ARCH_DATASET, INPUT_SHAPE

TOL = 1e-5
TORCHVISION = ["resnet18", "resnet50", "vgg11_bn", "mobilenet_v2", "mobilenet_v3_small",
               "efficientnet_b0", "densenet121", "regnet_y_400mf", "convnext_tiny", "vit_b_16"]


def cases() -> dict[str, tuple]:
    """name → (builder, input shape)."""
    out = {}
    for name, ds in ARCH_DATASET.items():
        out[f"zoo:{name}"] = (lambda n=name: build_arch(n), (1, *INPUT_SHAPE[ds]))
    for name in TORCHVISION:
        kw = {"num_classes": 10}
        if name == "vit_b_16":  # same architecture, 64×64 images (16 patches) to stay fast
            kw["image_size"] = 64
        out[f"torchvision:{name}"] = (
            lambda n=name, kw=kw: build_arch(f"torchvision:{n}", kw), (1, 3, 64, 64))
    out["option_a_resnet20"] = (resnet20_option_a, (1, 3, 32, 32))
    for name, cls in PATTERNS.items():
        out[f"pattern:{name}"] = (cls, (2, 3, 16, 16))
    return out


def _first(y):
    return y[0] if isinstance(y, tuple | list) else y


@torch.no_grad()
def check(name: str) -> dict:
    builder, shape = cases()[name]
    torch.manual_seed(0)
    model = builder().eval()
    x = torch.randn(*shape)
    t0 = time.perf_counter()
    y = model(x)
    same = prune(model, channel_ratio=0.0, example_inputs=x).eval()
    identity = max((a - b).abs().max().item() for a, b in zip(_tuple(same(x)), _tuple(y)))
    small = prune(model, sparsity=0.3, example_inputs=x).eval()
    ys = small(x)
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in small.parameters())
    row = {
        "model": name,
        "reducible_groups": f"{small.tuneless_report['reducible_groups']}"
                            f"/{small.tuneless_report['groups']}",
        "params": before,
        "pruned_params": after,
        "achieved_sparsity": small.tuneless_report["achieved_sparsity"],
        "same_output_shape": all(a.shape == b.shape for a, b in zip(_tuple(ys), _tuple(y))),
        "identity_max_diff": identity,
        "seconds": time.perf_counter() - t0,
    }
    row["pass"] = bool(row["same_output_shape"] and after < before and identity <= TOL
                       and abs(row["achieved_sparsity"] - 0.3) <= 0.01)
    return row


def _tuple(y):
    return tuple(y) if isinstance(y, tuple | list) else (y,)
