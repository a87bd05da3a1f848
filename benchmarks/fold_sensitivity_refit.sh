#!/usr/bin/env bash
# Whether the least-squares refit should take measured widths too: fold + refit and L1 +
# the same refit, each with its own sensitivity allocation (probed on the refit's 1,024
# plain training images) at a floor of 3/4 of the uniform width (variant sens75), against
# the uniform rows of benchmarks/fold_cluster_refit.sh (each CSV starts from them) at
# 10 / 30%, where fold + refit trailed L1 + refit; 3 seeds for the fold, one for L1
# (deterministic), full test split. LANE=1 / LANE=2 as in sweep_env.sh.
source "$(dirname "$0")/sweep_env.sh"
out=docs/results/fold-sens75-refit
# DEEP=1: the same at 50 / 70 / 80%, uniform widths (variant auto) and sens75 both run here
# (the uniform refit rows above come from fold_cluster_refit.sh, which stops at 30%); DEEP=1
# NETS="resnet20 vgg11" runs only those networks.
sweep() {  # $1 checkpoint, $2 short name
  [[ -f $out-$2.csv ]] || cp "docs/results/fold-cluster-refit-$2.csv" "$out-$2.csv"
  if [[ -n ${NETS:-} && " $NETS " != *" $2 "* ]]; then return 0; fi
  local points=0.1,0.3 variants=sens75
  [[ ${DEEP:-0} == 1 ]] && points=0.5,0.7,0.8 variants=auto,sens75
  run "$1" --view plain --points $points --repairs refit --variants $variants --seeds 0,1,2 \
    --out "$out-$2"
  run "$1" --view plain --points $points --repairs l1-refit --variants $variants --seeds 0 \
    --out "$out-$2"
}
sweep_lanes
