import math
from types import SimpleNamespace

import pytest
import torch

from tests.llm.conftest import tiny_llama
from tuneless.errors import TunelessError
from tuneless.llm.perplexity import perplexity_of_ids, read_text


def test_read_text_normalises_crlf_and_joins_like_the_hf_loader(tmp_path):
    f = tmp_path / "t.raw"
    f.write_bytes(b" = A = \r\n\r\n text one \r\n")
    assert read_text(f) == " = A = \n\n\n\n\n text one \n"


def test_uniform_predictions_give_vocab_size_perplexity():
    m = tiny_llama()
    assert not m.config.tie_word_embeddings
    with torch.no_grad():
        m.lm_head.weight.zero_()  # every logit 0: each next token has probability 1/97
    ids = torch.randint(0, 97, (64,), generator=torch.Generator().manual_seed(0))
    assert math.isclose(perplexity_of_ids(m, ids, seq_len=16, progress=False), 97, rel_tol=1e-5)


def test_perplexity_matches_a_direct_computation_and_respects_the_budget():
    m = tiny_llama()
    ids = torch.randint(0, 97, (100,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        nll = []
        for w in range(2):  # max_tokens=40 with seq_len 16 → two windows
            x = ids[w * 16:(w + 1) * 16][None]
            nll.append(torch.nn.functional.cross_entropy(m(x).logits[0, :-1], x[0, 1:]))
    want = math.exp(float(torch.stack(nll).mean()))
    got = perplexity_of_ids(m, ids, seq_len=16, max_tokens=40, progress=False)
    assert math.isclose(got, want, rel_tol=1e-5)


def test_too_few_tokens():
    with pytest.raises(TunelessError, match="seq_len"):
        perplexity_of_ids(tiny_llama(), torch.arange(10), seq_len=16, progress=False)


def test_run_cli_rejects_unknown_model(tmp_path):
    from tuneless.llm.perplexity import run_cli

    args = SimpleNamespace(model=str(tmp_path / "nope"), data=None, seq_len=16, max_tokens=32)
    with pytest.raises(TunelessError, match="neither"):
        run_cli(args)


def test_read_text_without_a_file_names_the_variable():
    from tuneless.errors import TunelessError

    with pytest.raises(TunelessError, match="TUNELESS_WIKITEXT2"):
        read_text(None)


def test_too_few_tokens_for_one_window_names_both_limits():
    class Never(torch.nn.Module):
        def forward(self, input_ids, use_cache=False):
            raise AssertionError("no window should run")

    with pytest.raises(TunelessError, match=r"only 256 tokens to evaluate \(max_tokens=256 of "
                                            r"1000\); a window needs seq_len=512"):
        perplexity_of_ids(Never(), torch.arange(1000), seq_len=512, max_tokens=256)
    with pytest.raises(TunelessError, match=r"only 100 tokens to evaluate; a window"):
        perplexity_of_ids(Never(), torch.arange(100), seq_len=512)
