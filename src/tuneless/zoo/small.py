"""Models for 28×28 grey images: LeNet-5 and the 3-layer MLP of the smooth-compression paper."""

from __future__ import annotations

import torch.nn as nn


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """3 × [Linear-BN-ReLU] then a linear classifier."""

    def __init__(self, num_classes: int = 10, width: float = 1.0, in_features: int = 784) -> None:
        super().__init__()
        h = max(1, round(512 * width))
        layers, d = [nn.Flatten()], in_features
        for _ in range(3):
            layers += [nn.Linear(d, h), nn.BatchNorm1d(h), nn.ReLU()]
            d = h
        layers.append(nn.Linear(d, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def lenet5(num_classes: int = 10) -> LeNet5:
    return LeNet5(num_classes)


def mlp(num_classes: int = 10, width: float = 1.0) -> MLP:
    return MLP(num_classes, width)
