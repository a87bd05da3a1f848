#!/usr/bin/env bash
# The L1 baselines on equal terms with benchmarks/fold_sensitivity.sh: L1 pruning with its
# own sensitivity allocation (each group pruned alone, the same probes: the repair's images
# for L1 + BN re-estimation, pink noise for plain L1), then nothing or BN re-estimation on
# the same 1,024 training images; every benchmark network at 10-80%, full test split (L1 is
# deterministic: seed 0). LANE=1 / LANE=2 as in sweep_env.sh; results beside the fold's.
source "$(dirname "$0")/sweep_env.sh"
sweep() {  # $1 checkpoint, $2 short name
  run "$1" --points 0.1,0.3,0.5,0.7,0.8 --repairs l1,l1-bn --variants sens --seeds 0 \
    --out "docs/results/fold-sens-l1-$2"
}
sweep_lanes
