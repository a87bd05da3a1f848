"""A small CIFAR ResNeXt (Xie et al. 2017): bottleneck blocks whose 3×3 conv is grouped.

Three stages of two blocks, outputs 64-128-256, bottleneck widths 32-64-128 in 8 groups
(cardinality 8: 4, 8 and 16 channels per group), projection shortcuts. About the FLOPs of
ResNet-20; here so that folding grouped convolutions is measured on trained weights.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from tuneless.zoo.resnet_cifar import ThreeStageNet


class GroupedBottleneck(nn.Module):
    """1×1 reduce, 3×3 grouped conv, 1×1 expand, each with BN; projection shortcut."""

    def __init__(self, in_planes: int, width: int, planes: int, stride: int,
                 groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class CifarResNeXt(ThreeStageNet):
    """Stem 3×3 conv to 32 channels, then `blocks` grouped bottlenecks per stage."""

    def __init__(self, num_classes: int = 10, width: float = 1.0, groups: int = 8,
                 blocks: int = 2) -> None:
        super().__init__()
        outs = [max(groups, round(64 * width * 2**i)) for i in range(3)]
        inner = [max(groups, round(32 * width * 2**i)) // groups * groups for i in range(3)]
        stem = max(1, round(32 * width))
        self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        stages, in_planes = [], stem
        for i, (w, planes) in enumerate(zip(inner, outs)):
            layer = []
            for j in range(blocks):
                layer.append(GroupedBottleneck(in_planes, w, planes,
                                               2 if (i > 0 and j == 0) else 1, groups))
                in_planes = planes
            stages.append(nn.Sequential(*layer))
        self._finish(stages, outs[2], num_classes)


def resnext20(num_classes: int = 10, width: float = 1.0) -> CifarResNeXt:
    """20 layers (6 grouped bottlenecks, stem, classifier), cardinality 8."""
    return CifarResNeXt(num_classes, width)
