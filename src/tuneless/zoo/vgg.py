"""VGG11 with BatchNorm for 32×32 inputs, with a width multiplier and a configurable classifier."""

from __future__ import annotations

import torch.nn as nn

VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class VGG(nn.Module):
    def __init__(
        self, cfg=VGG11, num_classes: int = 10, width: float = 1.0, hidden: int = 512
    ) -> None:
        super().__init__()
        layers, c = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                out = max(1, round(v * width))
                layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                           nn.ReLU(True)]
                c = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c, hidden), nn.ReLU(True), nn.Dropout(0.0),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def vgg11_bn(num_classes: int = 10, width: float = 1.0, hidden: int = 512) -> VGG:
    return VGG(VGG11, num_classes, width, hidden)
