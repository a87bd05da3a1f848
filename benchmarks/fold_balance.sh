#!/usr/bin/env bash
# Whether folding should first balance each channel's ReLU scale symmetry (balance=True,
# tuneless.rescale): the "balance" variant for Fold-Naive ("none"), Fold-AR ("ar") and
# Fold-R ("data") on every benchmark network at 10-80%, 3 seeds, full test split, and at
# the VGG's paper points. The default's rows ("auto") are those of
# benchmarks/fold_cluster_repair.sh (balance off is the code path they measured), copied
# into each CSV first so that only the new rows run; each row carries its commit.
# LANE=1 / LANE=2 as in sweep_env.sh. Results: docs/folding.md "Balanced channel scales".
source "$(dirname "$0")/sweep_env.sh"
out=docs/results/fold-balance
seed_from() {  # $1 short name: start from the default's rows
  [[ -f $out-$1.csv ]] || cp docs/results/fold-cluster-repair-$1.csv "$out-$1.csv"
}
sweep() {  # $1 checkpoint, $2 short name
  seed_from "$2"
  run "$1" --points 0.1,0.3,0.5,0.7,0.8 --repairs none,data,ar --variants balance \
    --seeds 0,1,2 --out "$out-$2"
}
if [[ ${LANE:-0} != 2 ]]; then  # the VGG's paper points go with its lane
  seed_from vgg11-ratio
  run $VGG --ratio channel --points 0.3,0.5,0.7 --repairs none,data,ar --variants balance \
    --seeds 0,1,2 --out "$out-vgg11-ratio"
fi
sweep_lanes
