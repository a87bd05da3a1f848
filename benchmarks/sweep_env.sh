# Sourced by the fold sweeps (benchmarks/fold_*.sh): strict mode, the repository root as the
# working directory, this checkout's package first on the path, and run() = the sweep
# script benchmarks/fold_defaults.py stamped with the calling script's name (each result
# file says which command produced it).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
run() { python benchmarks/fold_defaults.py --script "benchmarks/$(basename "$0")" "$@"; }
