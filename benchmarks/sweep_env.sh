# Sourced by the fold sweeps (benchmarks/fold_*.sh): strict mode, the repository root as the
# working directory, this checkout's package first on the path, and run() = the sweep
# script benchmarks/fold_defaults.py stamped with the calling script's name (each result
# file says which command produced it).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
run() { python benchmarks/fold_defaults.py --script "benchmarks/$(basename "$0")" "$@"; }

# A clustering rule for wide groups against the default (fold_wide.sh, fold_cut.sh): only
# the VGG11-BN 1/2 and the MLP have groups of >= 128 channels. $1 names the result files
# (docs/results/fold-$1-*), $2 the variants; 3 seeds. Each line resumes its CSV.
VGG=models/vgg11_bn-w0.5-cifar10.pt
MLP=models/mlp-fashion-mnist.pt
wide_rule_sweep() {
  local out="docs/results/fold-$1" v=$2
  # the paper-code comparison of issue 17: channel ratio 0.3 / 0.5 / 0.7, full test split
  run $VGG --ratio channel --points 0.3,0.5,0.7 --repairs ar,none,data --variants "$v" \
    --out "$out-vgg11-ratio"
  for net in "$VGG:vgg11" "$MLP:mlp"; do
    run "${net%%:*}" --test-images 2000 --points 0.1,0.3,0.5,0.7,0.8 --repairs ar \
      --variants "$v" --out "$out-${net##*:}"
    run "${net%%:*}" --view plain --test-images 2000 --points 0.1,0.3 --repairs refit \
      --variants "$v" --out "$out-refit-${net##*:}"
    run "${net%%:*}" --test-images 2000 --points 0.1,0.3,0.5 --repairs data \
      --variants "$v" --out "$out-fold-r-${net##*:}"
  done
}

# The five benchmark networks through the caller's sweep() ($1 checkpoint, $2 short name),
# in two lanes for two single-thread jobs side by side: LANE=1 ResNet-20, the VGG and the
# MLP; LANE=2 ResNet-56 and LeNet-5; no LANE: all of them in turn.
sweep_lanes() {
  local lane=${LANE:-0}
  if [[ $lane != 2 ]]; then
    sweep models/resnet20-cifar10.pt resnet20
    sweep $VGG vgg11
    sweep $MLP mlp
  fi
  if [[ $lane != 1 ]]; then
    sweep models/resnet56-avg-cifar10.pt resnet56
    sweep models/lenet5-fashion-mnist.pt lenet5
  fi
}

# One fold variant against the default on every benchmark network (fold_balance.sh,
# fold_sensitivity.sh): $1 the result files' prefix, $2 the variant. Fold-Naive, Fold-AR and
# Fold-R at 10-80%, 3 seeds, full test split, and the VGG's paper points (with lane 1).
# Each CSV starts from the default's rows of fold_cluster_repair.sh (the same code path),
# so only the variant's rows run; each row carries its commit.
variant_sweep() {
  local out=$1 variant=$2
  seed_from() {  # $1 short name
    [[ -f $out-$1.csv ]] || cp "docs/results/fold-cluster-repair-$1.csv" "$out-$1.csv"
  }
  sweep() {  # $1 checkpoint, $2 short name
    seed_from "$2"
    run "$1" --points 0.1,0.3,0.5,0.7,0.8 --repairs none,data,ar --variants "$variant" \
      --seeds 0,1,2 --out "$out-$2"
  }
  if [[ ${LANE:-0} != 2 ]]; then
    seed_from vgg11-ratio
    run $VGG --ratio channel --points 0.3,0.5,0.7 --repairs none,data,ar \
      --variants "$variant" --seeds 0,1,2 --out "$out-vgg11-ratio"
  fi
  sweep_lanes
}
