"""Folding and baselines for Hugging Face LLaMA-family language models.

    from tuneless.llm import fold_llm, load_smollm2, perplexity
    model, tok = load_smollm2()
    small = fold_llm(model, sparsity=0.2, schedule="paper")

Names load lazily so `import tuneless.llm` does not import transformers.
"""

from __future__ import annotations

from tuneless._lazy import lazy_names

_LAZY = {
    "fold_llm": "tuneless.llm.fold",
    "is_causal_lm": "tuneless.llm.adapters",
    "adapter_for": "tuneless.llm.adapters",
    "magnitude_prune_llm": "tuneless.llm.prune",
    "wanda_sp_llm": "tuneless.llm.prune",
    "flap_llm": "tuneless.llm.flap",
    "obs_prune_llm": "tuneless.llm.obs",
    "svd_llm": "tuneless.llm.svd",
    "perplexity": "tuneless.llm.perplexity",
    "load_gguf": "tuneless.llm.gguf",
    "load_smollm2": "tuneless.llm.gguf",
    "save_folded": "tuneless.llm.save",
    "load_folded": "tuneless.llm.save",
    "text_model": "tuneless.llm.multimodal",
    "wrapper_of": "tuneless.llm.multimodal",
    "fold_checkpoint": "tuneless.llm.stream",
    "obs_checkpoint": "tuneless.llm.stream",
    "block_params": "tuneless.llm.engine",
}


__getattr__, __dir__ = lazy_names(__name__, _LAZY)


__all__ = list(_LAZY)
