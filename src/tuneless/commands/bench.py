"""`tuneless bench NAME ...`: run one of the benchmark suites (see tuneless.bench)."""

from __future__ import annotations

import argparse
import importlib

from tuneless.bench import BENCHMARKS


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark suite; results go to docs/results/")
    bsub = p.add_subparsers(dest="bench_name", metavar="NAME", required=True)
    for name, module in BENCHMARKS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue
            raise
        bp = bsub.add_parser(name, help=(mod.__doc__ or "").strip().splitlines()[0])
        mod.add_arguments(bp)
        bp.set_defaults(bench_run=mod.run)


def run(args: argparse.Namespace) -> int:
    return int(args.bench_run(args) or 0)
