import pytest
import torch
import torch.nn as nn

from tuneless.errors import TunelessError
from tuneless.evaluate import count_params
from tuneless.zoo import ARCH_DATASET, ARCHS, INPUT_SHAPE, build_model


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_output_shape_and_plain_modules(name):
    kwargs = {"width": 0.25} if name in ("resnet18", "vgg11_bn") else {}
    model = build_model(name, num_classes=7, **kwargs).eval()
    x = torch.randn(2, *INPUT_SHAPE[ARCH_DATASET[name]])
    with torch.no_grad():
        assert model(x).shape == (2, 7)
    # nothing tuneless-specific inside: every submodule comes from torch.nn or the zoo itself
    for m in model.modules():
        assert type(m).__module__.startswith(("torch.nn", "tuneless.zoo"))


@pytest.mark.parametrize("name, expected", [
    ("resnet20", 272_474),  # He et al. 2016: 0.27M
    ("resnet20a", 269_722),  # the same without the two projection shortcuts
    ("resnet32", 466_906),  # 0.46M
    ("resnet56", 855_770),  # 0.85M
    ("lenet5", 61_706),
])
def test_parameter_counts(name, expected):
    assert count_params(build_model(name)) == expected


def test_resnet_depths_and_projection_shortcuts():
    m = build_model("resnet56")
    assert len(m.layer1) == len(m.layer2) == len(m.layer3) == 9
    assert isinstance(m.layer2[0].shortcut[0], nn.Conv2d) and len(m.layer1[0].shortcut) == 0
    assert [m.layer1[0].conv1.out_channels, m.layer2[0].conv1.out_channels,
            m.layer3[0].conv1.out_channels] == [16, 32, 64]


def test_zero_padding_shortcuts():
    """Option A: the stage's first block keeps every other pixel of its input and appends
    zero channels; no parameters. The stage-1 stream folds through all stages, the appended
    zero channels stay fixed (tests/graph/test_discover.py)."""
    from tuneless.graph import find_groups
    from tuneless.zoo.resnet_cifar import PadShortcut

    m = build_model("resnet20a").eval()
    sc = m.layer2[0].shortcut
    assert isinstance(sc, PadShortcut) and len(m.layer1[0].shortcut) == 0
    x = torch.randn(2, 16, 32, 32)
    y = sc(x)
    assert y.shape == (2, 32, 16, 16)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2]) and not y[:, 16:].any()
    graph = find_groups(m, torch.randn(2, 3, 32, 32))
    assert len(graph.reducible) == 10  # the blocks' inner channels and the stage-1 stream
    with pytest.raises(ValueError, match="shortcut"):
        build_model("resnet20", width=1.0).__class__(20, shortcut="conv")


def test_width_multipliers():
    assert build_model("resnet20", width=2).layer3[0].conv1.out_channels == 128
    vgg = build_model("vgg11_bn", width=0.5)
    convs = [m for m in vgg.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 128, 256, 256, 256, 256]
    assert build_model("resnet18", width=0.5).fc.in_features == 256
    mlp = build_model("mlp", width=0.25)
    linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    assert [lin.out_features for lin in linears] == [128, 128, 128, 10]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in mlp.modules()) == 3


def test_unknown_and_bad_arguments():
    with pytest.raises(TunelessError, match="unknown architecture 'resnet21'"):
        build_model("resnet21")
    with pytest.raises(TunelessError, match="bad arguments for lenet5"):
        build_model("lenet5", width=2)


def test_resnext_blocks_fold_in_whole_groups():
    """The CIFAR ResNeXt's 3×3 convs are grouped (cardinality 8): its bottleneck groups
    shrink in whole multiples of 8, one count per block (ChannelGroup.blocks)."""
    from tuneless.graph import find_groups

    m = build_model("resnext20").eval()
    assert count_params(m) == 249_898
    assert [b.conv2.groups for s in (m.layer1, m.layer2, m.layer3) for b in s] == [8] * 6
    graph = find_groups(m, torch.randn(2, 3, 32, 32))
    blocked = [g for g in graph.reducible if g.blocks == 8]
    assert len(blocked) == 12  # each block's two bottleneck groups (before and after conv2)
    assert all(g.step(1) == 8 for g in blocked)
