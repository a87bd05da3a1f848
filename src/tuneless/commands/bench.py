"""`tuneless bench NAME ...`: run one of the benchmark suites (see tuneless.bench).

Only the chosen suite is imported (its parser reads the rest of the command line), so
`tuneless --help` does not import torch and the suites' optional dependencies.
"""

from __future__ import annotations

import argparse
import importlib

from tuneless.bench import BENCHMARKS, HELP
from tuneless.cli import check_threads


def add_parser(sub) -> None:
    names = ", ".join(f"{n} ({HELP[n]})" for n in BENCHMARKS)
    p = sub.add_parser("bench", help="run a benchmark suite; results go to docs/results/",
                       description=f"Benchmark suites: {names}. "
                                   "`tuneless bench NAME --help` lists a suite's options.")
    p.add_argument("bench_name", metavar="NAME", choices=list(BENCHMARKS))
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="the suite's own options")


def run(args: argparse.Namespace) -> int:
    mod = importlib.import_module(BENCHMARKS[args.bench_name])
    p = argparse.ArgumentParser(prog=f"tuneless bench {args.bench_name}",
                                description=(mod.__doc__ or "").strip().splitlines()[0])
    mod.add_arguments(p)
    ns = p.parse_args(args.bench_args)
    check_threads(ns)
    ns.command_line = getattr(args, "command_line", None)
    return int(mod.run(ns) or 0)
