"""Breadth over transformers' causal language models: for every model type transformers maps
to a causal LM, a tiny random model of its default config (2 layers, hidden 64, 4 heads,
2 kv heads where the config has them), folded by the defaults at 20% of its block
parameters (4 self-sampled sequences of 16 tokens, to keep it quick), saved with
`tuneless.llm.save_folded` and loaded back by plain transformers (with the shipped
modeling file where sizes differ per layer): a model passes when the fold runs, removes
20% ± 2 points, stays finite and the reloaded model's logits equal the folded one's.
Unsupported families must fail with one line naming their model_type.

    python benchmarks/breadth_llm.py [--out docs/breadth-llm.md] [--only TYPE ...]

Random weights: this checks structure (which families fold and load), not quality.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

COMMON = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              bos_token_id=1, eos_token_id=2, pad_token_id=0)
IDS = torch.randint(3, 90, (2, 12), generator=torch.Generator().manual_seed(0))
MAX_PARAMS = 20_000_000
EXTRA = {"gptj": {"rotary_dim": 8}}  # its default rotary_dim (64) exceeds this head_dim


def tiny(model_type: str):
    """A tiny random causal LM of this type, or the reason none could be built."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    cls = getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type], None)
    if cls is None:
        return None, "no class in this transformers"
    last = ""
    for extra in ({"head_dim": 16}, {}):
        try:
            cfg = CONFIG_MAPPING[model_type](**COMMON, **extra, **EXTRA.get(model_type, {}))
            with torch.device("meta"):  # sub-configs this recipe does not shrink: count first
                n = sum(p.numel() for p in cls(cfg).parameters())
            if n > MAX_PARAMS:
                return None, f"{n / 1e6:.0f}M parameters with this recipe (sub-configs kept)"
            torch.manual_seed(0)
            model = cls(cfg).eval()
            with torch.no_grad():
                model(input_ids=IDS)
            return model, ""
        except Exception as exc:  # noqa: BLE001 — any config/model this recipe cannot build
            last = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None, last


def check(model_type: str) -> dict:
    from transformers import AutoModelForCausalLM

    import tuneless
    from tuneless.errors import TunelessError
    from tuneless.llm import block_params, save_folded
    from tuneless.llm.adapters import ADAPTERS

    row = {"type": model_type, "supported": model_type in ADAPTERS}
    model, why = tiny(model_type)
    if model is None:
        return {**row, "result": "not built", "note": why[:90]}
    row["supported"] = model.config.model_type in ADAPTERS  # gpt-sw3 builds a GPT-2
    start = time.perf_counter()
    try:
        small = tuneless.fold(model, sparsity=0.2, calib_samples=4, calib_len=16)
    except TunelessError as exc:
        text = str(exc)
        one_line = len(text.splitlines()) == 1
        return {**row, "result": "refused, one line" if one_line else "refused, several lines",
                "note": text[:90]}
    except Exception as exc:  # noqa: BLE001 — a crash is what this scan is looking for
        return {**row, "result": "crash", "note": f"{type(exc).__name__}: {str(exc)[:80]}"}
    removed = 1 - block_params(small) / block_params(model)
    with torch.no_grad():
        logits = small(input_ids=IDS).logits
    per_layer = getattr(small.config, "tuneless_layer_sizes", None) is not None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            folder = save_folded(small, Path(tmp) / "out")
            back = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=per_layer).eval()
            with torch.no_grad():
                same = torch.equal(back(input_ids=IDS).logits, logits)
        except Exception as exc:  # noqa: BLE001
            return {**row, "result": "save/load failed", "note": str(exc)[:90]}
    ok = abs(removed - 0.2) <= 0.02 and bool(torch.isfinite(logits).all()) and same
    return {**row, "result": "folds and loads" if ok else "wrong result",
            "removed": f"{removed:.3f}", "per_layer": "yes" if per_layer else "no",
            "identical": "yes" if same else "no", "seconds": f"{time.perf_counter() - start:.1f}",
            "note": ""}


def main() -> int:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from tuneless.io_atomic import atomic_write_text
    from tuneless.progress import set_progress
    from tuneless.provenance import stamp, stamp_markdown

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="markdown file to write")
    p.add_argument("--only", nargs="*", default=None)
    args = p.parse_args()
    set_progress(False)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    rows = []
    for mt in sorted(args.only or MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        rows.append(check(mt))
        print(rows[-1], flush=True)
    supported = [r for r in rows if r["supported"]]
    good = [r for r in supported if r["result"] == "folds and loads"]
    refused = [r for r in rows if not r["supported"] and r["result"] == "refused, one line"]
    keys = ["type", "supported", "result", "removed", "per_layer", "identical", "seconds",
            "note"]
    table = "\n".join(["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)] + [
        "| " + " | ".join(str(r.get(k, "")).replace("|", "/") for k in keys) + " |"
        for r in rows])
    command = "python benchmarks/breadth_llm.py " + " ".join(sys.argv[1:])
    text = (f"# Breadth: transformers causal language models\n\n{__doc__}\n"
            f"{stamp_markdown(stamp(command.strip()))}\n"
            f"**{len(good)} of {len(supported)} supported families fold and load; "
            f"{len(refused)} of {len(rows) - len(supported)} other model types refused in one "
            f"line.**\n\n{table}\n")
    if args.out:
        atomic_write_text(text, Path(args.out))
    print(f"{len(good)}/{len(supported)} supported fold and load; {len(refused)} refused "
          "in one line", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
