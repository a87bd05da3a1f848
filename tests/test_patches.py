"""conv_patches: the patches a conv multiplies, whatever padding its own forward applies."""

import pytest
import torch
import torch.nn as nn

import tuneless
from tuneless.patches import conv_patches

from .breadth.graph_patterns import SameConv2d, SamePadding, StdConv2d

torch.set_num_threads(1)
X = torch.randn(2, 4, 9, 9, generator=torch.Generator().manual_seed(0))


def _as_conv(layer: nn.Conv2d, cols: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The conv's output rebuilt from its patches (same shape as layer(x))."""
    out = layer(x)
    y = layer.weight.reshape(layer.out_channels, -1) @ cols
    if layer.bias is not None:
        y = y + layer.bias[:, None]
    return y.reshape(out.shape)


@pytest.mark.parametrize("layer", [
    nn.Conv2d(4, 6, 3, padding=1),
    nn.Conv2d(4, 6, 3, stride=2, dilation=2, padding=2),
    nn.Conv2d(4, 6, 3, padding="same"),
    nn.Conv2d(4, 6, 4, padding="same", dilation=2),  # even span: extra pixel right/bottom
    nn.Conv2d(4, 6, 3, padding="valid"),
    SameConv2d(4, 6, 3, stride=2, image_size=9),  # pads in its own forward
    SameConv2d(4, 6, 1, image_size=9),
])
def test_patches_times_the_weight_is_the_convolution(layer):
    with torch.no_grad():
        cols = conv_patches(layer, X)
        assert torch.allclose(_as_conv(layer, cols, X), layer(X), atol=1e-5)


def test_a_conv_that_transforms_its_weight_has_no_plain_patches():
    assert conv_patches(StdConv2d(4, 6, 3, padding=1), X) is None
    assert conv_patches(nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"), X) is None


def test_refit_handles_convs_that_pad_in_their_own_forward():
    model = SamePadding().eval()
    x = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    small = tuneless.fold(model, channel_ratio=0.5, repair="refit", data=x,
                          example_inputs=x[:2])
    report = small.refit_report
    assert {"stem", "expand", "project", "fc"} <= set(report["refitted"]), report
    assert [s for s in report["skipped"] if s.startswith("dw:")], report  # depthwise: named
