"""Small hand-written graph patterns the engine must handle (or refuse with a reason)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def cbr(cin: int, cout: int, k: int = 3, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class Concat(nn.Module):
    """Two branches concatenated on channels, then one conv reads both (offsets)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 12)
        self.a, self.b = cbr(12, 8), cbr(12, 16, 1)
        self.mix = cbr(24, 20)
        self.fc = nn.Linear(20, 5)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.a(x), self.b(x)], dim=1)
        return self.fc(F.adaptive_avg_pool2d(self.mix(x), 1).flatten(1))


class Split(nn.Module):
    """chunk() on the channel axis: the split group is fixed, the rest stays reducible."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 64)
        self.left, self.right = cbr(32, 32), cbr(32, 32)
        self.fc = nn.Linear(64, 5)

    def forward(self, x):
        a, b = self.stem(x).chunk(2, dim=1)
        x = torch.cat([self.left(a), self.right(b)], 1)
        return self.fc(x.mean((2, 3)))


class SqueezeExcite(nn.Module):
    """Gating: x * sigmoid(fc2(relu(fc1(pool(x))))) joins fc2's output with x's channels."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16)
        self.fc1, self.fc2 = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.dw = cbr(16, 16, groups=16)
        self.head = nn.Conv2d(16, 6, 1)

    def forward(self, x):
        x = self.stem(x)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        x = self.dw(x * s)
        return self.head(x).mean((2, 3))


class SharedModule(nn.Module):
    """One conv applied twice: its input and output become one channel space."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 48)
        self.shared = nn.Conv2d(48, 48, 3, padding=1)
        self.fc = nn.Linear(48, 5)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(self.shared(F.relu(self.shared(x))))
        return self.fc(x.mean((2, 3)))


class MultiOutput(nn.Module):
    """Two heads returned as a tuple; both outputs are fixed."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(cbr(3, 16), cbr(16, 16))
        self.cls, self.aux = nn.Linear(16 * 4 * 4, 5), nn.Conv2d(16, 2, 1)

    def forward(self, x):
        h = self.body(x)
        flat = F.adaptive_max_pool2d(h, 4).view(h.size(0), -1)
        return self.cls(flat), self.aux(h)


class UnknownOp(nn.Module):
    """A channel-mixing op tuneless has no rule for (einsum) next to a normal block."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.mixer = nn.Parameter(torch.randn(8, 8) / 8)
        self.body = cbr(8, 16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.einsum("nchw,cd->ndhw", self.stem(x), self.mixer)
        return self.fc(self.body(x).mean((2, 3)))


class ChannelsLast(nn.Module):
    """Permute to channels-last, LayerNorm + Linear on the last dim, layer scale, GroupNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.gn = nn.GroupNorm(1, 16)
        self.ln = nn.LayerNorm(16)
        self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 16)
        self.scale = nn.Parameter(torch.rand(16))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.gn(self.stem(x))
        y = x.permute(0, 2, 3, 1)
        y = self.down(F.gelu(self.up(self.ln(y)))) * self.scale
        x = x + y.permute(0, 3, 1, 2)
        return self.fc(x.mean((2, 3)))


class GroupedNorm(nn.Module):
    """GroupNorm with 4 groups of 4 channels: its channel space shrinks block by block."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.gn = nn.GroupNorm(4, 16)
        self.body = cbr(16, 24)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = self.body(F.relu(self.gn(self.stem(x))))
        return self.fc(x.mean((2, 3)))


class SameConv2d(nn.Conv2d):
    """TensorFlow "same" padding for a fixed image size, then F.conv2d on its own weights
    (the EfficientNet-Lite port's Conv2dStaticSamePadding): fx traces through it, so the
    engine sees a padding module and a functional conv, not a Conv2d module."""

    def __init__(self, *args, image_size: int = 16, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        k, s = self.kernel_size[0], self.stride[0]
        pad = max((-(-image_size // s) - 1) * s + k - image_size, 0)
        self.static_padding = nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))

    def forward(self, x):
        x = self.static_padding(x)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class StdConv2d(nn.Conv2d):
    """Weight standardisation: the weights are transformed before the conv, so merging the
    raw rows is not merging the layer's function; its channels must stay fixed."""

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                         training=True).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class SamePadding(nn.Module):
    """An inverted-residual block built from "same"-padding conv subclasses."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = SameConv2d(3, 16, 3, stride=2, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        self.expand = SameConv2d(16, 48, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(48)
        self.dw = SameConv2d(48, 48, 3, groups=48, bias=False, image_size=8)
        self.bn2 = nn.BatchNorm2d(48)
        self.project = SameConv2d(48, 16, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu6(self.bn0(self.stem(x)))
        y = F.relu6(self.bn2(self.dw(F.relu6(self.bn1(self.expand(x))))))
        x = x + self.bn3(self.project(y))
        return self.fc(x.mean((2, 3)))


class NothingToReduce(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        return self.fc(x.flatten(1))


class GroupedBottleneck(nn.Module):
    """ResNeXt-style residual bottleneck: 1×1, grouped 3×3 (4 groups), 1×1, plus the stream.
    The grouped conv's input and output channels shrink block by block."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16, 1)
        self.reduce, self.grouped = cbr(16, 24, 1), cbr(24, 24, groups=4)
        self.expand = nn.Sequential(nn.Conv2d(24, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.expand(self.grouped(self.reduce(x))))
        return self.fc(x.mean((2, 3)))


PATTERNS = {
    "concat": Concat, "split": Split, "squeeze_excite": SqueezeExcite,
    "shared_module": SharedModule, "multi_output": MultiOutput, "unknown_op": UnknownOp,
    "channels_last": ChannelsLast, "grouped_norm": GroupedNorm, "same_padding": SamePadding,
    "grouped_conv": GroupedBottleneck,
}
