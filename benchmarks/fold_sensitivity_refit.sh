#!/usr/bin/env bash
# Whether the least-squares refit should take measured widths too: fold + refit and L1 +
# the same refit, each with its own sensitivity allocation (probed on the refit's 1,024
# plain training images) at a floor of 3/4 of the uniform width (variant sens75), against
# the uniform rows of benchmarks/fold_cluster_refit.sh (each CSV starts from them) at
# 10 / 30%, where fold + refit trailed L1 + refit; 3 seeds for the fold, one for L1
# (deterministic), full test split. LANE=1 / LANE=2 as in sweep_env.sh.
source "$(dirname "$0")/sweep_env.sh"
out=docs/results/fold-sens75-refit
sweep() {  # $1 checkpoint, $2 short name
  [[ -f $out-$2.csv ]] || cp "docs/results/fold-cluster-refit-$2.csv" "$out-$2.csv"
  run "$1" --view plain --points 0.1,0.3 --repairs refit --variants sens75 --seeds 0,1,2 \
    --out "$out-$2"
  run "$1" --view plain --points 0.1,0.3 --repairs l1-refit --variants sens75 --seeds 0 \
    --out "$out-$2"
}
sweep_lanes
