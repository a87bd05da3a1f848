"""Perplexity of a causal LM on a text file, WikiText-2 style.

Protocol (as in the LLM-pruning literature, e.g. Wanda/SparseGPT/LLM-Pruner):
the text is split into lines the way the Hugging Face `wikitext` loader does
(each line keeps its "\\n", blank lines become ""), the lines are joined with
"\\n\\n", tokenised once, cut into non-overlapping windows of `seq_len` tokens,
and perplexity = exp(mean next-token NLL over every predicted token). CRLF is
normalised to LF first. `max_tokens` keeps only the first windows (a token
budget for CPU runs); every table says which budget it used.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from torch import nn

from tuneless._lazy import make_module_callable
from tuneless.data.loader import default_data_path
from tuneless.errors import TunelessError
from tuneless.modes import evaluating
from tuneless.progress import progress as _progress

WIKITEXT2_TEST = default_data_path("wikitext2")  # TUNELESS_WIKITEXT2 or shared/data; may be None


def read_text(path: str | Path | None) -> str:
    """The file's lines joined as the literature joins WikiText-2 documents."""
    if path is None:  # WIKITEXT2_TEST when neither TUNELESS_WIKITEXT2 nor shared/data is there
        raise TunelessError("no WikiText-2 test file found: set TUNELESS_WIKITEXT2 to "
                            "wiki.test.raw or pass the file's path")
    path = Path(path)
    if not path.is_file():
        raise TunelessError(f"text file not found: {path}")
    raw = path.read_bytes().decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    lines = [line if line.strip() else "" for line in raw.splitlines(keepends=True)]
    return "\n\n".join(lines)


def tokenize(tokenizer, text: str) -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    if ids.numel() < 2:
        raise TunelessError("the text is too short to measure perplexity (fewer than 2 tokens)")
    return ids


@torch.inference_mode()
def perplexity_of_ids(
    model: nn.Module,
    ids: torch.Tensor,
    seq_len: int = 512,
    max_tokens: int | None = None,
    progress: bool = True,
) -> float:
    """exp(mean NLL) over non-overlapping windows of `seq_len` tokens."""
    if seq_len < 2:
        raise TunelessError(f"seq_len={seq_len} must be at least 2")
    n = ids.numel() if max_tokens is None else min(ids.numel(), int(max_tokens))
    n_windows = n // seq_len
    if n_windows == 0:
        limit = ("" if max_tokens is None or ids.numel() <= int(max_tokens)
                 else f" (max_tokens={int(max_tokens)} of {ids.numel()})")
        raise TunelessError(f"only {n} tokens to evaluate{limit}; a window needs "
                            f"seq_len={seq_len}: evaluate more tokens or a shorter seq_len "
                            "(--seq-len)")
    total, count = 0.0, 0
    with evaluating(model):
        for w in _progress(range(n_windows), total=n_windows, desc="perplexity",
                           unit="window", disable=not progress):
            x = ids[w * seq_len : (w + 1) * seq_len][None]
            logits = model(input_ids=x, use_cache=False).logits[0, :-1].float()
            nll = nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum")
            total += float(nll)
            count += seq_len - 1
    return math.exp(total / count)


def perplexity(
    model: nn.Module,
    tokenizer,
    text: str,
    seq_len: int = 512,
    max_tokens: int | None = None,
    progress: bool = True,
) -> float:
    """Perplexity of `model` on `text` (already joined; see read_text)."""
    return perplexity_of_ids(model, tokenize(tokenizer, text), seq_len, max_tokens, progress)


def run_cli(args) -> int:
    """`tuneless eval --task wikitext2 MODEL`.

    args: .model, .data, .seq_len, .max_tokens (None = whole file).
    """
    data = getattr(args, "data", None) or WIKITEXT2_TEST
    if data is None:
        raise TunelessError("no WikiText-2 test file found: pass --data PATH (wiki.test.raw) "
                            "or set TUNELESS_WIKITEXT2")
    seq_len = int(getattr(args, "seq_len", None) or 512)
    max_tokens = getattr(args, "max_tokens", None)
    from tuneless.llm.source import load_llm

    model, tok = load_llm(str(args.model), need_tokenizer=True)
    ids = tokenize(tok, read_text(data))
    start = time.perf_counter()
    ppl = perplexity_of_ids(model, ids, seq_len=seq_len, max_tokens=max_tokens)
    used = (min(ids.numel(), max_tokens) if max_tokens else ids.numel()) // seq_len * seq_len
    print(
        f"perplexity {ppl:.3f} on {used} of {ids.numel()} tokens of {data} "
        f"(seq_len {seq_len}, {time.perf_counter() - start:.0f} s)"
    )
    return 0

make_module_callable(__name__)  # `tuneless.llm.perplexity` is both this module and its function
