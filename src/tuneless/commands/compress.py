"""`tuneless compress MODEL --method NAME --sparsity S -o OUT`: compress, save, compare."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tuneless.commands.model_args import add_model_arguments, load_from_args
from tuneless.errors import TunelessError


def add_parser(sub) -> None:
    from tuneless.commands.compress_llm import LLM_METHODS
    from tuneless.methods import REGISTRY

    p = sub.add_parser("compress", help="compress a model with one method and save it")
    add_model_arguments(p)
    p.add_argument("--method", required=True,
                   help=f"one of: {', '.join(REGISTRY)}; for a language model one of: "
                        f"{', '.join(LLM_METHODS)}")
    p.add_argument("--sparsity", type=float,
                   help="fraction of parameters to remove (of FLOPs with --budget flops)")
    p.add_argument("--budget", choices=["params", "flops"],
                   help="what --sparsity is a fraction of (default params; CNN fold and "
                        "prune methods)")
    p.add_argument("--channel-ratio", type=float,
                   help="fraction of channels removed from every group (instead of --sparsity)")
    p.add_argument("-o", "--out", required=True,
                   help="output file (tuneless.save format); for a language model a new "
                        "folder that transformers loads")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method option (VALUE parsed as JSON if possible), e.g. round_to=8")
    p.add_argument("--dataset", choices=["cifar10", "fashion-mnist"],
                   help="measure accuracy on this dataset's test split")
    p.add_argument("--data", help="test data path (implies accuracy; default dataset location)")
    p.add_argument("--limit", type=int,
                   help="accuracy on a seeded random subset of N test images (the splits are "
                        "stored sorted by class, so the first N would be a few classes)")
    p.add_argument("--repair-data", nargs="?", const="default", metavar="PATH",
                   help="training images for repairs that need data (fold-r, fold-refit): "
                        "the dataset folder or archive whose train split is used (no PATH: "
                        "the default location)")
    p.add_argument("--repair-images", type=int, default=1024,
                   help="how many training images the repair sees (default 1024)")
    p.add_argument("--repair-view", choices=["auto", "train", "plain"], default="auto",
                   help="repair images augmented as the checkpoint's training fed them "
                        "(train) or plain; auto (default): train for BN re-estimation "
                        "(fold-r), plain for the least-squares refit (fold-refit), the better "
                        "view of each in docs/folding.md")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--device", default="cpu",
                   help="language models: where to compress (cpu, cuda, cuda:1; default cpu)")
    p.add_argument("--stream", choices=["auto", "on", "off"], default="auto",
                   help="language-model folds and obs of a safetensors folder: layer by layer, one "
                        "layer in memory (on), in memory (off), or streamed when the weights "
                        "take more than an eighth of this machine's memory (auto, default)")


def parse_options(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise TunelessError(f"--option expects KEY=VALUE, got {item!r}")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


def measure(model, x, data) -> dict:
    from tuneless.evaluate import accuracy, count_flops, count_params, latency_ms

    row = {"params": count_params(model), "nonzero": count_params(model, nonzero=True),
           "flops": count_flops(model, x), "latency_b1_ms": latency_ms(model, x)}
    row["top1"] = accuracy(model, data) if data is not None else None
    return row


def run(args: argparse.Namespace) -> int:
    import torch

    from tuneless.methods import accepts_option, check_options, get_method
    from tuneless.report import human_count, render_table
    from tuneless.serialize import save

    torch.set_num_threads(max(1, args.threads))
    if Path(args.out).resolve() == Path(args.model).resolve():
        raise TunelessError("-o would overwrite the input model; choose another path")
    options = parse_options(args.option)
    if args.budget is not None:
        options["budget"] = args.budget
    if args.sparsity is None and args.channel_ratio is None and "channels" not in options:
        raise TunelessError("give --sparsity (fraction of parameters), --channel-ratio, or "
                            "--option channels='{\"GROUP\": COUNT}' (ids from tuneless inspect)")
    from tuneless.commands.compress_llm import run_llm
    from tuneless.distributed import init_from_env, is_main
    from tuneless.llm.source import is_llm_source, local_source

    # under torchrun: every rank calibrates on its share of the data; rank 0 writes
    init_from_env(getattr(args, "device", None) or "cpu")
    args.model = local_source(args.model)  # a Hub id: its folder, then routed by type
    if is_llm_source(args.model):  # HF folder, GGUF file, Hub id or "smollm2"
        return run_llm(args, options)
    method = get_method(args.method)
    if args.budget is not None and not accepts_option(args.method, "budget"):
        raise TunelessError(f"--budget: method {args.method} has no FLOP budget (its "
                            "--sparsity is a fraction of parameters); the fold-* and "
                            "prune-* methods take one")
    check_options(args.method, options)
    model, x = load_from_args(args)
    data = _test_data(args, model)
    if args.limit is not None:
        if args.limit < 1:
            raise TunelessError(f"--limit must be at least 1, got {args.limit}")
        data = data.subset(args.limit, seed=0) if data is not None else None
    kwargs = {k: v for k, v in (("sparsity", args.sparsity),
                                ("channel_ratio", args.channel_ratio)) if v is not None}
    if needs_images(method, options) and "data" not in options:
        if args.repair_data is None:
            raise TunelessError(f"{args.method} {needs_images(method, options)} on real "
                                "images: pass --repair-data PATH (the model's training set)")
        options["data"] = repair_images(args, model)
    try:
        small = method(model, example_inputs=x, **kwargs, **options)
    except TypeError as exc:
        raise TunelessError(f"method {args.method}: {exc}") from exc
    nothing_removed(args.method, model, small)
    if not is_main():
        return 0
    saved = getattr(model, "tuneless_saved_meta", None) or {}  # what the input recorded
    carried = {k: saved[k] for k in ("dataset", "input_shape") if k in saved}
    info = save(small, args.out, meta={"source": str(args.model), "method": args.method,
                                       **kwargs, "options": options, **carried})
    rows = [{"model": "before", **measure(model, x, data)},
            {"model": "after", **measure(small, x, data)}]
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    print(render_table(rows, formats={"params": human_count, "nonzero": human_count,
                                      "flops": human_count, "latency_b1_ms": ".2f",
                                      "top1": pct}))
    report = getattr(small, "tuneless_report", None) or {}
    if report.get("achieved_sparsity") is not None:
        of = " of the FLOPs" if report.get("budget") == "flops" else ""
        print(f"achieved sparsity {report['achieved_sparsity']:.4f}{of}"
              + (f" (requested {args.sparsity})" if args.sparsity is not None else ""))
    if report.get("allocation") == "sensitivity":
        print("widths measured per group (allocation=sensitivity; "
              "--option allocation=uniform: the paper's uniform widths, faster)")
    if report.get("physically_smaller") is False:
        print("note: " + report.get("note", "the model is not physically smaller"))
    print(f"wrote {args.out} ({info['mode']} format)")
    return 0


def needs_images(method, options: dict) -> str:
    """What the method's repair does with real images ("" when it needs none), read from
    the repair's own declaration (tuneless.repair.REPAIRS)."""
    from tuneless.repair import get_repair

    merged = {**getattr(method, "fixed", {}), **options}
    if merged.get("whiten") == "data":  # svd's data-driven whitening
        return "whitens each truncation by its input's second moment"
    name = merged.get("repair")
    if name is None:
        return ""
    rep = get_repair(name)
    return rep.uses_images if rep.needs_data else ""


def nothing_removed(method: str, model, small) -> None:
    """A request that removes nothing is a mistake from the command line: say so, write nothing."""
    from tuneless.evaluate import count_params

    if count_params(small, nonzero=True) >= count_params(model, nonzero=True):
        raise TunelessError(f"{method} removed nothing at these settings (a sparsity of 0, or "
                            "min_channels / round_to keep every channel); no file written")


def repair_images(args, model):
    """Normalised training images for a data repair, augmented as the model was trained."""
    from tuneless.data.loader import get_dataset, recipe_pad

    if args.repair_images < 2:
        raise TunelessError(f"--repair-images must be at least 2, got {args.repair_images}")
    path = None if args.repair_data == "default" else args.repair_data
    train = get_dataset(_dataset_name(args, model), "train", path).subset(args.repair_images)
    targs = (getattr(model, "tuneless_meta", None) or {}).get("train_args") or {}
    view = repair_view(args.repair_view, args.method)
    if view == "train" and not targs:
        print("note: the model records no training recipe; the repair sees plain images "
              "(if it was trained on random crops, its BN statistics expect them)",
              file=sys.stderr)
    return train.training_view(recipe_pad(targs) if view == "train" else None)


REFIT_METHODS = ("fold-refit", "fold-refit-error", "prune-l1-refit")


def repair_view(choice: str, method: str) -> str:
    """"train" or "plain": what a data repair should see (auto: measured per repair)."""
    if choice != "auto":
        return choice
    return "plain" if method in REFIT_METHODS else "train"


def _test_data(args, model):
    if args.data is None and args.dataset is None:
        return None
    from tuneless.data.loader import get_dataset

    return get_dataset(_dataset_name(args, model), "test", args.data)


def _dataset_name(args, model) -> str:
    from tuneless.zoo import ARCH_DATASET

    name = args.dataset
    if name is None:
        ref = (getattr(model, "tuneless_arch", None) or {}).get("ref", "")
        name = ARCH_DATASET.get(ref.removeprefix("zoo:"))
        name = name or (getattr(model, "tuneless_meta", None) or {}).get("dataset")
    if name is None:
        raise TunelessError("cannot tell which dataset the model is for: pass --dataset")
    return name
