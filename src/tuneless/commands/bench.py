"""`tuneless bench NAME ...`: run one of the benchmark suites of a source checkout.

The suites live in the repository's `benchmarks/suites/`, not in the installed package:
they write docs/results/ of the checkout and need its models/ and data. Only the chosen
suite is imported (its parser reads the rest of the command line), so `tuneless --help`
does not import torch or the suites' optional dependencies.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from tuneless.cli import check_threads
from tuneless.errors import TunelessError

BENCHMARKS = {
    "fold": "benchmarks.suites.fold_bench",
    "fold-speed": "benchmarks.suites.fold_speed",
    "smooth": "benchmarks.suites.smooth_bench",
    "llm": "benchmarks.suites.llm_bench",
}
# one line each for `tuneless bench --help` (without importing the suites)
HELP = {
    "fold": "folding vs pruning and Torch-Pruning, accuracy against parameters removed",
    "fold-speed": "folding time and k-means quality",
    "smooth": "smooth training + SVD against pruning and folding",
    "llm": "LLM folding against structured baselines, perplexity",
}


def checkout() -> Path:
    """The repository this tuneless was installed from (editable or run from src/)."""
    root = Path(__file__).resolve().parents[3]  # src/tuneless/commands/bench.py
    if not (root / "benchmarks" / "suites" / "__init__.py").is_file():
        raise TunelessError("`tuneless bench` runs from a source checkout (the suites live in "
                            "the repository's benchmarks/suites/, not in the installed "
                            "package): git clone the repository and pip install -e it")
    return root


def add_parser(sub) -> None:
    names = ", ".join(f"{n} ({HELP[n]})" for n in BENCHMARKS)
    p = sub.add_parser("bench", help="run a benchmark suite; results go to docs/results/",
                       description=f"Benchmark suites: {names}. "
                                   "`tuneless bench NAME --help` lists a suite's options.")
    p.add_argument("bench_name", metavar="NAME", choices=list(BENCHMARKS))
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="the suite's own options")


def run(args: argparse.Namespace) -> int:
    root = str(checkout())
    if root not in sys.path:
        sys.path.insert(0, root)
    mod = importlib.import_module(BENCHMARKS[args.bench_name])
    p = argparse.ArgumentParser(prog=f"tuneless bench {args.bench_name}",
                                description=(mod.__doc__ or "").strip().splitlines()[0])
    mod.add_arguments(p)
    ns = p.parse_args(args.bench_args)
    check_threads(ns)
    ns.command_line = getattr(args, "command_line", None)
    return int(mod.run(ns) or 0)
