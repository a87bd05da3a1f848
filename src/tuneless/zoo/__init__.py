"""The benchmark models, by name; plain nn.Modules with nothing tuneless-specific inside."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from tuneless.errors import TunelessError
from tuneless.zoo.resnet_cifar import resnet18, resnet20, resnet20a, resnet32, resnet56
from tuneless.zoo.resnext_cifar import resnext20
from tuneless.zoo.small import lenet5, mlp
from tuneless.zoo.vgg import vgg11_bn

ARCHS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet20a": resnet20a,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet18": resnet18,
    "resnext20": resnext20,
    "vgg11_bn": vgg11_bn,
    "lenet5": lenet5,
    "mlp": mlp,
}
# Which dataset each architecture expects (its input shape follows).
ARCH_DATASET = {
    "resnet20": "cifar10", "resnet20a": "cifar10", "resnet32": "cifar10",
    "resnet56": "cifar10", "resnet18": "cifar10", "resnext20": "cifar10",
    "vgg11_bn": "cifar10", "lenet5": "fashion-mnist", "mlp": "fashion-mnist",
}
INPUT_SHAPE = {"cifar10": (3, 32, 32), "fashion-mnist": (1, 28, 28)}


def build_model(name: str, **kwargs) -> nn.Module:
    """Construct a zoo model by name with keyword arguments (num_classes, width, ...)."""
    if name not in ARCHS:
        raise TunelessError(f"unknown architecture {name!r}; the zoo has: {', '.join(ARCHS)}")
    try:
        return ARCHS[name](**kwargs)
    except TypeError as exc:
        raise TunelessError(f"bad arguments for {name}: {exc}") from exc


__all__ = ["ARCHS", "ARCH_DATASET", "INPUT_SHAPE", "build_model"]
