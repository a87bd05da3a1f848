"""Small models and inputs shared by the folding and IFM tests."""

import torch
import torch.nn as nn
import torch.nn.functional as F

X32 = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=g)
            m.bias.data = 0.1 * torch.randn(n, generator=g)
            m.running_mean = 0.1 * torch.randn(n, generator=g)
            m.running_var = 0.5 + torch.rand(n, generator=g)
    return model.eval()


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@torch.no_grad()
def duplicate_pairs(g: torch.Generator, *bns: nn.BatchNorm2d) -> None:
    """Random BN parameters and statistics whose 8 channels are 4 duplicate pairs."""
    for bn in bns:
        bn.weight.copy_((0.5 + torch.rand(4, generator=g)).repeat(2))
        bn.bias.copy_(torch.randn(4, generator=g).repeat(2))
        bn.running_mean.copy_(torch.randn(4, generator=g).repeat(2))
        bn.running_var.copy_((0.5 + torch.rand(4, generator=g)).repeat(2))


class DuplicatedCNN(nn.Module):
    """Two hidden channel groups whose 8 channels are 4 exact duplicate pairs."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)
        with torch.no_grad():
            self.conv1.weight.copy_(torch.randn(4, 3, 3, 3, generator=g).repeat(2, 1, 1, 1))
            self.conv2.weight.copy_(torch.randn(4, 4, 3, 3, generator=g).repeat(2, 2, 1, 1))
            self.conv2.bias.copy_(torch.randn(4, generator=g).repeat(2))
            self.fc.weight.copy_(torch.randn(10, 4, generator=g).repeat(1, 2))
            duplicate_pairs(g, self.bn1, self.bn2)
        self.eval()

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
