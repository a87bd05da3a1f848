"""`tuneless compress` on a language model: a Hugging Face folder, a .gguf file, a Hub id or
the name "smollm2" in (tuneless.llm.source); a folder that transformers loads out (tokenizer
included)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tuneless.errors import TunelessError
from tuneless.llm.source import load_llm

# CLI method name -> (tuneless function, fixed options)
LLM_METHODS = {
    "fold": ("fold", {}),
    "fold-naive": ("fold", {"repair": "none"}),
    "fold-self": ("fold", {"repair": "self"}),
    "fold-refit": ("fold", {"repair": "refit"}),
    "magnitude": ("prune", {"criterion": "magnitude"}),
    "prune-l2": ("prune", {"criterion": "l2"}),
    "wanda-sp": ("prune", {"criterion": "wanda-sp"}),
    "flap": ("prune", {"criterion": "flap"}),
    "obs": ("prune", {"criterion": "obs"}),
}
# svd of a decoder gives two Linears per projection: no transformers class loads that, so the
# command line does not write it (tuneless.svd(llm, sparsity=) from Python does it in memory)
NOT_SAVABLE = {"svd": "svd factors each projection into two Linears, which no transformers "
                      "class can load; call tuneless.svd(model, sparsity=) from Python"}


def run_llm(args: argparse.Namespace, options: dict) -> int:
    import torch

    from tuneless.evaluate import count_params
    from tuneless.llm import block_params, save_folded
    from tuneless.methods.fold import fold
    from tuneless.methods.prune import prune

    if args.method in NOT_SAVABLE:
        raise TunelessError(f"{args.method} on a language model: {NOT_SAVABLE[args.method]}")
    if args.method not in LLM_METHODS:
        raise TunelessError(f"method {args.method!r} does not apply to language models; "
                            f"choose one of {', '.join(LLM_METHODS)}")
    if args.channel_ratio is not None or options.pop("budget", "params") != "params":
        raise TunelessError("language models take --sparsity (fraction of decoder-block "
                            "parameters), not --channel-ratio or --budget flops")
    out = Path(args.out)
    if out.exists():
        raise TunelessError(f"{out} already exists; the output is a new folder")
    device = getattr(args, "device", None) or "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TunelessError(f"--device {device}: no CUDA device is available here")
    name, fixed = LLM_METHODS[args.method]
    streams = name == "fold" or args.method == "obs"
    if not streams and getattr(args, "stream", "auto") == "on":
        raise TunelessError(f"--stream on: {args.method} runs in memory; the fold methods "
                            "and obs stream")
    if streams and _streamed(args):
        if device != "cpu":
            raise TunelessError("--stream folds on the CPU; use --stream off for --device")
        return run_streamed(args, fixed, options)
    model, tok = load_llm(args.model, trust_code=args.trust_code, device=device)
    if name == "fold" and tok is not None:  # progress follows --quiet (tuneless.progress)
        options.setdefault("tokenizer", tok)
    if name == "prune" and fixed["criterion"] in ("wanda-sp", "flap"):
        if tok is None:
            raise TunelessError(f"{fixed['criterion']} needs calibration text: the model "
                                "folder has no tokenizer")
        options.setdefault("tokenizer", tok)
    func = {"fold": fold, "prune": prune}[name]
    start, cpu = time.perf_counter(), time.process_time()
    try:
        small = func(model, sparsity=args.sparsity, **fixed, **options)
    except TypeError as exc:
        raise TunelessError(f"method {args.method}: {exc}") from exc
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    before, after = block_params(model), block_params(small)
    if after >= before:
        raise TunelessError(f"{args.method} removed nothing at --sparsity {args.sparsity}; "
                            "nothing written")
    from tuneless.distributed import is_main

    if not is_main():  # torchrun: every rank holds the same result; rank 0 writes it
        return 0
    from tuneless.llm.multimodal import wrapper_of

    wrapper = wrapper_of(model)
    save_folded(small, out, tokenizer=tok, wrapper=wrapper)
    total_before, total_after = count_params(model), count_params(small)
    if wrapper is not None:  # the vision tower and projector are written too
        rest = count_params(wrapper) - total_before
        total_before, total_after = total_before + rest, total_after + rest
    print(f"{args.method}: decoder blocks {before:,} -> {after:,} parameters "
          f"({1 - after / before:.1%} removed), whole model {total_before:,} -> "
          f"{total_after:,}; {seconds:.0f} s ({cpu:.0f} CPU-s)")
    _wrote(out, getattr(small, "tuneless_report", {}).get("schedule_choice"),
           getattr(small.config, "tuneless_layer_sizes", None) is not None,
           "AutoModelForCausalLM" if wrapper is None else "AutoModelForImageTextToText")
    return 0


def _wrote(out: Path, choice: dict | None, per_layer: bool, auto: str) -> None:
    """The schedule the default fold kept (if it chose one) and how to load the folder."""
    if choice:
        from tuneless.llm.choose import describe_choice

        print(describe_choice(choice))
    print(f"wrote {out} (" + (f"per-layer sizes: load with {auto}.from_pretrained"
                              "(folder, trust_remote_code=True)" if per_layer else
                              f"loads with {auto}.from_pretrained") + ")")


STREAM_SHARE_OF_MEMORY = 1 / 8  # --stream auto: weights files above this share of RAM stream


def _streamed(args: argparse.Namespace) -> bool:
    """Whether this fold streams: --stream on / off, or auto for a safetensors folder whose
    weights files take more than STREAM_SHARE_OF_MEMORY of the machine's memory (in memory
    the fold holds the model in float32, its folded copy and every layer's statistics)."""
    import os

    mode = getattr(args, "stream", "auto")
    folder = Path(args.model)
    files = list(folder.glob("*.safetensors")) if folder.is_dir() else []
    if mode == "on" and not files:
        raise TunelessError(f"--stream reads a folder of .safetensors weights; {args.model} "
                            "has none")
    if mode != "auto":
        return mode == "on"
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if not files or sum(f.stat().st_size for f in files) <= STREAM_SHARE_OF_MEMORY * memory:
        return False
    from transformers import AutoConfig

    from tuneless.llm.adapters import adapter_for_config

    try:  # vision-language wrappers and unsupported families: the in-memory path names them
        adapter_for_config(AutoConfig.from_pretrained(str(folder)))
    except (TunelessError, ValueError, OSError):
        return False
    return True


def run_streamed(args: argparse.Namespace, fixed: dict, options: dict) -> int:
    """A fold (tuneless.llm.stream.fold_checkpoint) or structured OBS (obs_checkpoint) of a
    safetensors folder layer by layer: the same defaults as in memory, one original and one
    compressed layer in memory."""
    from tuneless.llm.stream import check_checkpoint, fold_checkpoint, obs_checkpoint
    from tuneless.options import check_names
    from tuneless.progress import progress_enabled

    fixed = {k: v for k, v in fixed.items() if k != "criterion"}  # obs: the function says it
    func = obs_checkpoint if args.method == "obs" else fold_checkpoint
    options = {**options, **fixed}
    check_names(options, func, f"{args.method} (streamed)",
                set_by_call={"progress": "--quiet", "sparsity": "--sparsity"})
    if options.get("repair") == "refit" and "data" not in options:
        from transformers import AutoTokenizer

        options.setdefault("tokenizer", AutoTokenizer.from_pretrained(args.model))
    src, out = Path(args.model), Path(args.out)
    start, cpu = time.perf_counter(), time.process_time()
    func(src, out, args.sparsity, progress=progress_enabled(), **options)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    from tuneless.distributed import is_main

    if not is_main():  # torchrun: rank 0 writes the folder
        return 0
    before, after = check_checkpoint(src), check_checkpoint(out)
    print(f"{args.method} (streamed, one layer in memory): {before:,} -> {after:,} parameters "
          f"({1 - after / before:.1%} of the whole model removed); {seconds:.0f} s "
          f"({cpu:.0f} CPU-s)")
    cfg = json.loads((out / "config.json").read_text())
    _wrote(out, cfg.get("tuneless_schedule_choice"), "tuneless_layer_sizes" in cfg,
           "AutoModelForCausalLM")
    return 0
