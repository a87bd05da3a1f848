#!/usr/bin/env bash
# FLOP budgets (budget="flops": the points are fractions of the FLOPs removed): uniform
# widths against the default allocation ("auto": measured widths, damage per FLOP saved),
# Fold-AR and Fold-R (LeNet-5, no BatchNorm: Fold-Naive), and L1 + BN re-estimation at the
# same kind of widths, at 30 / 50 / 70% of the FLOPs, 3 seeds for the fold, full test split.
# VARIANTS=flops-uniform,flops-sens75: measured widths for every repair (auto measures
# Fold-R's only since 95c6056; the rerun after the solver's fix in 7d8dd46 ran these into
# OUT=docs/results/fold-flops-v2).
# LANE=1 / LANE=2 as in sweep_env.sh (the MLP is skipped: its FLOPs are its parameters).
# Results: docs/results/fold-flops-*, docs/folding.md "FLOP budgets".
source "$(dirname "$0")/sweep_env.sh"
out=${OUT:-docs/results/fold-flops}  # OUT=…: a rerun into other files
sweep() {  # $1 checkpoint, $2 short name
  [[ $2 == mlp ]] && return 0
  local repairs=ar,data,l1-bn variants=${VARIANTS:-flops-uniform,flops-auto}
  [[ $2 == lenet5 ]] && repairs=none,l1
  run "$1" --points 0.3,0.5,0.7 --repairs "$repairs" --variants "$variants" \
    --seeds 0,1,2 --out "$out-$2"
}
sweep_lanes
