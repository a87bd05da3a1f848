"""GPT-2's Conv1D projections: compressed as nn.Linear copies whose state dicts keep Conv1D's
(in, out) layout, so the result saves to what plain transformers' GPT-2 loads."""

from __future__ import annotations

import torch
from torch import nn

from tests.llm.test_adapter_contract import IDS, _config
from tuneless.llm import fold_llm
from tuneless.llm.conv1d import TransposedLinear, as_linear, transposed_linear


def _gpt2():
    cfg, cls = _config("gpt2", layers=4)
    torch.manual_seed(0)
    return cls(cfg).eval()


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_transposed_linear_computes_and_saves_as_the_conv1d():
    from transformers.pytorch_utils import Conv1D

    conv = Conv1D(6, 4)  # 4 → 6, weight (4, 6)
    torch.nn.init.normal_(conv.weight)
    torch.nn.init.normal_(conv.bias)
    lin = transposed_linear(conv)
    x = torch.randn(3, 4)
    assert torch.allclose(lin(x), conv(x), atol=1e-6)
    assert {k: v.shape for k, v in lin.state_dict().items()} == {"weight": (4, 6), "bias": (6,)}
    back = TransposedLinear(4, 6)
    back.load_state_dict(conv.state_dict())  # a Conv1D checkpoint loads as it is
    assert torch.equal(back.weight, conv.weight.t()) and torch.equal(back.bias, conv.bias)


def test_a_model_without_conv1d_is_returned_as_it_is():
    model = nn.Sequential(nn.Linear(3, 3))
    assert as_linear(model) is model


def test_gpt2_folds_without_touching_the_input_and_saves_for_plain_transformers(tmp_path):
    from transformers import GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D

    model = _gpt2()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small = fold_llm(model, head_ratio=0.0, mlp_ratio=0.25, repair="none")
    assert all(isinstance(m, Conv1D) for m in (model.transformer.h[0].attn.c_proj,
                                               model.transformer.h[0].mlp.c_fc))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(small.transformer.h[0].attn.c_proj, TransposedLinear)
    small.save_pretrained(tmp_path / "small")  # transformers' own save, no tuneless loader
    plain = GPT2LMHeadModel.from_pretrained(tmp_path / "small").eval()
    assert plain.config.n_inner == 192
    assert torch.equal(_logits(plain), _logits(small))
