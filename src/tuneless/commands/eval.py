"""`tuneless eval MODEL...`: accuracy, parameters, FLOPs, size and CPU latency; table and JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tuneless.errors import TunelessError

TASKS = ("classify", "wikitext2")


def add_parser(sub) -> None:
    from tuneless.commands.model_args import add_loading_arguments

    p = sub.add_parser("eval", help="measure accuracy, size, FLOPs and latency of models")
    p.add_argument("model", nargs="+", metavar="MODEL",
                   help="checkpoint or saved model file(s), or torchvision:NAME / timm:NAME "
                        "(untrained); several give a comparison table")
    p.add_argument("--task", choices=TASKS, default="classify",
                   help="classify (images) or wikitext2 (language-model perplexity)")
    p.add_argument("--dataset", choices=["cifar10", "fashion-mnist"],
                   help="default: the dataset recorded in the checkpoint")
    p.add_argument("--data", help="test data path (default: the dataset's standard location)")
    p.add_argument("--limit", type=int, help="evaluate on a seeded random subset of N images")
    add_loading_arguments(p)
    p.add_argument("--input-shape", metavar="C,H,W",
                   help="measure size, FLOPs and latency at this input shape (for models "
                        "with no test data here, e.g. ImageNet-sized torchvision models)")
    p.add_argument("--json", metavar="OUT", help="also write the rows as JSON to OUT")
    p.add_argument("--threads", type=int, default=1, help="torch threads for timing (default 1)")
    p.add_argument("--repeats", type=int, default=10, help="latency repeats at batch 1")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument("--seq-len", type=int,
                   help="wikitext2: tokens per window (default: tuneless.llm.perplexity's)")
    p.add_argument("--max-tokens", type=int, help="wikitext2: evaluate only the first N tokens")


def load_any_model(path: str, arch: str | None = None, arch_kwargs: str | None = None,
                   unsafe_pickle: bool = False, trust_code: bool = False):
    """A model from any file tuneless understands: checkpoint, saved model, pickle, state_dict;
    or an untrained torchvision:NAME / timm:NAME / zoo:NAME (sizes, FLOPs, latency); a
    transformers image-classifier folder or Hub id."""
    import os

    from tuneless.arch import build_arch, is_reference
    from tuneless.modelio import load_model, parse_kwargs

    if is_reference(path) and not os.path.exists(path):
        return build_arch(path, parse_kwargs(arch_kwargs)).eval()
    from tuneless.llm.source import local_source

    path = local_source(path)  # a Hub id of an image classifier: its downloaded folder
    return load_model(path, arch=arch, arch_kwargs=arch_kwargs, allow_pickle=unsafe_pickle,
                      trust_code=trust_code)


def measure_shape(model, text: str | None) -> tuple[int, ...] | None:
    """The input shape to measure at: --input-shape, else what the architecture says."""
    from tuneless.modelio import default_input_shape, parse_input_shape

    if text is None:
        return default_input_shape(model)
    shape = parse_input_shape(text)
    if len(shape) not in (1, 3):
        raise TunelessError(f"--input-shape {text!r}: give C,H,W for images (e.g. 3,224,224) "
                            "or one number for vector inputs")
    return shape


def plausible_dataset(model, shape: tuple[int, ...] | None) -> str | None:
    """guess_dataset, kept only if the model's input shape and class count fit that data."""
    import torch

    from tuneless.zoo import INPUT_SHAPE

    name = guess_dataset(model)
    if name is None or (shape is not None and tuple(shape) != INPUT_SHAPE[name]):
        return None
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, *INPUT_SHAPE[name]))
    except RuntimeError:
        return None
    return name if out.dim() == 2 and out.shape[1] == 10 else None


def guess_dataset(model) -> str | None:
    """The dataset a checkpoint records or its zoo architecture implies, else a guess from the
    first layer's input width."""
    import torch.nn as nn

    from tuneless.zoo import ARCH_DATASET

    meta = getattr(model, "tuneless_meta", None) or {}
    if meta.get("dataset"):
        return meta["dataset"]
    saved = (getattr(model, "tuneless_saved_meta", None) or {}).get("dataset")
    if saved in ARCH_DATASET.values():  # tuneless.save(..., meta={"dataset": NAME})
        return saved
    ref = (getattr(model, "tuneless_arch", None) or {}).get("ref", "")
    if ref.startswith("zoo:") and ref[4:] in ARCH_DATASET:
        return ARCH_DATASET[ref[4:]]
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return {3: "cifar10", 1: "fashion-mnist"}.get(m.in_channels)
        if isinstance(m, nn.Linear):
            return {784: "fashion-mnist", 3072: "cifar10"}.get(m.in_features)
    return None


def test_data(name: str, path: str | None):
    """The test split, or None (with a note) when no path was given and none is installed."""
    from tuneless.data.loader import get_dataset

    try:
        return get_dataset(name, "test", path)
    except TunelessError as exc:
        if path is not None:
            raise
        print(f"note: no {name} test data found, accuracy skipped ({exc})", file=sys.stderr)
        return None


def eval_rows(args: argparse.Namespace) -> list[dict]:
    import torch

    from tuneless.evaluate import evaluate
    from tuneless.zoo import INPUT_SHAPE

    rows, cache = [], {}
    for path in args.model:
        model = load_any_model(path, args.arch, args.arch_kwargs, args.unsafe_pickle,
                               args.trust_code)
        shape = measure_shape(model, args.input_shape)
        name = args.dataset or plausible_dataset(model, shape)
        if name is None and shape is None:
            raise TunelessError(f"cannot tell which dataset {path} is for or what input it "
                                "takes: pass --dataset or --input-shape C,H,W")
        if name is not None and name not in cache:
            cache[name] = test_data(name, args.data)
        data = cache.get(name)
        example = torch.zeros(1, *(shape or INPUT_SHAPE[name])) if data is None else None
        row = {"model": Path(path).name, "dataset": name or "none (no test data: size, "
               f"FLOPs and latency at input {','.join(map(str, shape))})"}
        row.update(evaluate(model, data, example, limit=args.limit, path=path,
                            latency_batches=() if args.no_latency else (1, 256),
                            repeats=args.repeats))
        rows.append(row)
    return rows


def table_formats() -> dict:
    from tuneless.report import human_bytes, human_count

    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    return {"top1": pct, "params": human_count, "nonzero_params": human_count,
            "flops": human_count, "weights_bytes": human_bytes, "file_bytes": human_bytes,
            "latency_b1_ms": ".2f", "latency_b256_ms": ".1f"}


def check_args(args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit < 1:
        raise TunelessError(f"--limit must be at least 1, got {args.limit}")
    if args.repeats < 1:  # --threads and the --json target: tuneless.cli._check_common
        raise TunelessError("--repeats must be at least 1")
    if args.json:
        out = Path(args.json).resolve()
        if any(Path(m).resolve() == out for m in args.model):
            raise TunelessError(f"--json {args.json} would overwrite an input model")


def run_wikitext2(args: argparse.Namespace) -> int:
    if len(args.model) != 1:
        raise TunelessError("--task wikitext2 evaluates one model at a time")
    try:
        from tuneless.llm.perplexity import run_cli
    except ModuleNotFoundError as exc:
        if exc.name not in ("tuneless.llm.perplexity", "tuneless.llm"):
            raise
        raise TunelessError("--task wikitext2 needs tuneless.llm.perplexity, which this build "
                            "does not have yet") from exc
    ns = argparse.Namespace(**{**vars(args), "model": args.model[0]})
    return int(run_cli(ns) or 0)


def run(args: argparse.Namespace) -> int:
    if args.task == "wikitext2":
        return run_wikitext2(args)
    import torch

    from tuneless.provenance import stamp
    from tuneless.report import render_table, write_json

    check_args(args)
    torch.set_num_threads(args.threads)
    rows = eval_rows(args)
    print(render_table(rows, formats=table_formats()))
    limited = [r for r in rows if r.get("eval_images") and args.limit]
    if limited:
        print(f"(accuracy on a seeded random subset of {limited[0]['eval_images']} test images)")
    if args.json:
        meta = {**stamp(getattr(args, "command_line", None)), "threads": args.threads}
        write_json(rows, args.json, meta=meta)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
