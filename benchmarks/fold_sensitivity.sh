#!/usr/bin/env bash
# Whether folding should spend its budget by measured sensitivity (allocation="sensitivity":
# each group folded alone at five depths, the output's movement on probe inputs — the
# repair's own images for Fold-R, pink noise otherwise — then the greedy budget of
# tuneless.allocation): the "sens" variant for Fold-Naive ("none"), Fold-AR ("ar") and
# Fold-R ("data") on every benchmark network at 10-80%, 3 seeds, full test split, and at
# the VGG's paper points. The default's rows ("auto") are those of
# benchmarks/fold_cluster_repair.sh (the uniform allocation's code path is unchanged), copied
# into each CSV first so that only the new rows run; each row carries its commit.
# LANE=1 / LANE=2 as in sweep_env.sh. Results: docs/folding.md "Sensitivity allocation".
source "$(dirname "$0")/sweep_env.sh"
out=docs/results/fold-sens
seed_from() {  # $1 short name: start from the default's rows
  [[ -f $out-$1.csv ]] || cp docs/results/fold-cluster-repair-$1.csv "$out-$1.csv"
}
sweep() {  # $1 checkpoint, $2 short name
  seed_from "$2"
  run "$1" --points 0.1,0.3,0.5,0.7,0.8 --repairs ar,data,none --variants sens \
    --seeds 0,1,2 --out "$out-$2"
}
if [[ ${LANE:-0} != 2 ]]; then  # the VGG's paper points go with its lane
  seed_from vgg11-ratio
  run $VGG --ratio channel --points 0.3,0.5,0.7 --repairs ar,data,none --variants sens \
    --seeds 0,1,2 --out "$out-vgg11-ratio"
fi
sweep_lanes
