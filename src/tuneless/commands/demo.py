"""`tuneless demo`: compress a committed checkpoint two ways and print the before/after table."""

from __future__ import annotations

import argparse

from tuneless.errors import TunelessError


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="compress a committed model 50%% without data; before/after")
    p.add_argument("--model", help="checkpoint to use (default: models/resnet20-cifar10.pt, "
                   "else a committed Fashion-MNIST model)")
    p.add_argument("--methods", default="prune-l1,fold-ar",
                   help="comma-separated method names (default: prune-l1,fold-ar)")
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction of parameters to remove")
    p.add_argument("--limit", type=int, help="evaluate on a seeded random subset of N test images")
    p.add_argument("--data", help="test data path (default: the dataset's standard location)")
    p.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    p.add_argument("--json", metavar="OUT", help="also write the rows as JSON")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")


def run(args: argparse.Namespace) -> int:
    import torch

    from tuneless.demo import print_rows, run_demo

    if args.limit is not None and args.limit < 1:
        raise TunelessError(f"--limit must be at least 1, got {args.limit}")
    if args.threads < 1:
        raise TunelessError(f"--threads must be at least 1, got {args.threads}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = run_demo(args.model, methods, args.sparsity, args.limit, args.data,
                    latency=not args.no_latency)
    print_rows(rows)
    if args.json:
        from tuneless.provenance import stamp
        from tuneless.report import write_json

        write_json(rows, args.json, meta=stamp(getattr(args, "command_line", None)))
    return 0
