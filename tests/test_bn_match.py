"""Statistics matching (repair="match", tuneless.match_bn): the compressed model's BN outputs
take the original's statistics on the images given, so what did not change stays unchanged
even on images unlike the training data, where plain BN re-estimation moves it."""

import pytest
import torch
import torch.nn as nn

import tuneless
from tuneless.errors import TunelessError
from tuneless.methods.fold import fold
from tuneless.methods.prune import prune
from tuneless.repair import reestimate_bn
from tuneless.zoo import build_model

from .methods.fold_models import X32, DuplicatedCNN, _randomise_bn, duplicate_pairs
from .test_layer_refit import _error, _HalfDead, _images

torch.set_num_threads(1)


def _shifted(n: int, seed: int = 0) -> torch.Tensor:
    """Images unlike the ones the BN statistics describe (another mean and scale)."""
    return 2.5 * _images(n, seed=seed) + 1.0


def test_an_exact_fold_stays_exact():
    model = DuplicatedCNN()
    small = fold(model, channel_ratio=0.5, repair="match", example_inputs=X32,
                 data=_shifted(64, seed=2))
    assert small.conv1.out_channels == 4
    assert _error(model, small, X32) < 1e-8


def test_an_exact_pruning_stays_exact_on_shifted_images_where_reestimation_does_not():
    model, x = _HalfDead(), _images(2)
    data, held = _shifted(64), _shifted(16, seed=1)
    pruned = prune(model, channel_ratio=0.5, criterion="l1", example_inputs=x)
    matched = tuneless.match_bn(model, pruned, data, example_inputs=x)
    assert matched is not pruned
    assert _error(model, matched, held) < 1e-6
    assert _error(model, reestimate_bn(pruned, data), held) > 1e-2


def test_matching_beats_reestimation_on_a_resnet_fold_with_shifted_images():
    model = _randomise_bn(build_model("resnet20"))
    x, data, held = _images(2), _shifted(96), _shifted(32, seed=1)
    errors = {rep: _error(model, fold(model, sparsity=0.3, repair=rep, example_inputs=x,
                                      data=data), held)
              for rep in ("data", "match")}
    assert errors["match"] < 0.5 * errors["data"], errors


def test_match_needs_data_and_a_compressed_model():
    model = DuplicatedCNN()
    with pytest.raises(TunelessError, match="needs data"):
        fold(model, channel_ratio=0.5, repair="match", example_inputs=X32)
    with pytest.raises(TunelessError, match="compressed by tuneless"):
        tuneless.match_bn(model, DuplicatedCNN(), X32, example_inputs=X32)


def test_a_model_without_batchnorm_is_refused_by_name():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4))
    model(X32)
    with pytest.raises(TunelessError, match="BatchNorm"):
        fold(model, channel_ratio=0.5, repair="match", example_inputs=X32, data=X32)


class _PreActDuplicated(nn.Module):
    """A pre-activation residual block (BatchNorms that read the residual stream, not a
    conv) whose stream and inner channels are 4 exact duplicate pairs each."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(4)
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1, self.conv1 = nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn3, self.fc = nn.BatchNorm2d(8), nn.Linear(8, 10)
        with torch.no_grad():
            self.conv0.weight.copy_(torch.randn(4, 3, 3, 3, generator=g).repeat(2, 1, 1, 1))
            for conv in (self.conv1, self.conv2):
                conv.weight.copy_(0.3 * torch.randn(4, 4, 3, 3, generator=g).repeat(2, 2, 1, 1))
            self.fc.weight.copy_(torch.randn(10, 4, generator=g).repeat(1, 2))
            duplicate_pairs(g, self.bn1, self.bn2, self.bn3)
        self.eval()

    def forward(self, x):
        x = self.conv0(x)
        h = self.conv1(torch.relu(self.bn1(x)))
        x = x + self.conv2(torch.relu(self.bn2(h)))
        return self.fc(torch.relu(self.bn3(x)).mean((2, 3)))


def test_batchnorms_that_read_a_residual_stream_are_matched_too():
    """bn1 and bn3 read the stream (no conv right before them): matched like the others,
    an exact fold stays exact on shifted images; re-estimation alone would move them."""
    model, x = _PreActDuplicated(), _images(2, size=8)
    data, held = _shifted(64, seed=2)[..., :8, :8], _shifted(16, seed=3)[..., :8, :8]
    small = fold(model, channel_ratio=0.5, repair="match", example_inputs=x, data=data)
    assert small.bn1.num_features == 4 and small.bn2.num_features == 4
    assert _error(model, small, held) < 1e-6  # 0.93 when only BNs after a conv matched
    assert _error(model, fold(model, channel_ratio=0.5, repair="data", example_inputs=x,
                              data=data), held) > 1e-2
