"""Benchmarks behind `tuneless bench NAME`; each module has add_arguments(parser) and run(args).

BENCHMARKS maps NAME to its module. Results go to docs/results/ as CSV, markdown and PNG,
each stamped with the command, the git commit and the machine.
"""

BENCHMARKS = {
    "fold": "tuneless.bench.fold_bench",
    "fold-speed": "tuneless.bench.fold_speed",
    "smooth": "tuneless.bench.smooth_bench",
    "llm": "tuneless.bench.llm_bench",
}
# one line each for `tuneless bench --help` (without importing the suites)
HELP = {
    "fold": "folding vs pruning and Torch-Pruning, accuracy against parameters removed",
    "fold-speed": "folding time and k-means quality",
    "smooth": "smooth training + SVD against pruning and folding",
    "llm": "LLM folding against structured baselines, perplexity",
}
