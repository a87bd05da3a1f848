"""CIFAR ResNets (He et al. 2016): ResNet-20/32/56 with 16-32-64 widths and a ResNet-18.

The 6n+2 ResNets come with projection shortcuts (1×1 conv + BN, "option B") or, as in
the paper's CIFAR experiments and most public CIFAR checkpoints, parameter-free
zero-padding shortcuts ("option A": subsample, pad the new channels with zeros), which
couple each stage's residual channels to the previous stage's.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F


class PadShortcut(nn.Module):
    """Option A: keep every stride-th pixel and append zero channels up to `planes`."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride, self.extra = stride, planes - in_planes

    def forward(self, x):
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 shortcut: str = "projection") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut(in_planes, planes, stride) if shortcut == "pad" else \
                nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                              nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ThreeStageNet(nn.Module):
    """The CIFAR skeleton the ResNets and the ResNeXt share: a stem (conv1, bn1), three
    stages, global average pooling and a linear classifier."""

    def _finish(self, stages: list[nn.Module], features: int, num_classes: int) -> None:
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


class CifarResNet(ThreeStageNet):
    """The 6n+2-layer CIFAR ResNet; shortcut "projection" (1×1 conv + BN) or "pad" (zeros)."""

    def __init__(self, depth: int = 20, num_classes: int = 10, width: float = 1.0,
                 shortcut: str = "projection") -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        if shortcut not in ("projection", "pad"):
            raise ValueError(f"shortcut must be 'projection' or 'pad', got {shortcut!r}")
        n = (depth - 2) // 6
        widths = [max(1, round(16 * width)), max(1, round(32 * width)), max(1, round(64 * width))]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, in_planes = [], widths[0]
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, planes, 2 if (i > 0 and j == 0) else 1,
                                         shortcut))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self._finish(layers, widths[2], num_classes)


class ResNet18(nn.Module):
    """ResNet-18 for 32×32 inputs (3×3 stem, no max-pool), with a width multiplier."""

    def __init__(self, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        widths = [max(1, round(64 * width * 2**i)) for i in range(4)]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes, stages = widths[0], []
        for i, planes in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(in_planes, planes, stride),
                                        BasicBlock(planes, planes)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def resnet20(num_classes: int = 10, width: float = 1.0) -> CifarResNet:
    return CifarResNet(20, num_classes, width)


def resnet32(num_classes: int = 10, width: float = 1.0) -> CifarResNet:
    return CifarResNet(32, num_classes, width)


def resnet56(num_classes: int = 10, width: float = 1.0) -> CifarResNet:
    return CifarResNet(56, num_classes, width)


def resnet20a(num_classes: int = 10, width: float = 1.0) -> CifarResNet:
    """ResNet-20 with zero-padding shortcuts (option A), the common public CIFAR layout."""
    return CifarResNet(20, num_classes, width, shortcut="pad")


def resnet18(num_classes: int = 10, width: float = 1.0) -> ResNet18:
    return ResNet18(num_classes, width)
