#!/usr/bin/env bash
# What round_to=8 (every group's width a multiple of 8: ONNX Runtime and PyTorch run those
# 0.52-0.58 of the dense latency at half the FLOPs, against 0.71-1.14 for exact widths,
# docs/getting-started.md "How much faster") costs in accuracy at the same parameter
# budget: Fold-AR and Fold-R, 3 seeds, every benchmark network at 10-80%, full test split
# (LeNet-5 has no BatchNorm, so neither applies: skipped).
# The exact-width rows to compare with are the "auto" rows of fold_cluster_repair.sh (the
# same library code). LANE=1 / LANE=2 as there. OUT=…: a rerun into other files (the rerun
# after the budget solver's fix in 7d8dd46: OUT=docs/results/fold-round8-v2
# POINTS=0.3,0.5,0.7 NETS="resnet20 resnet56 vgg11", then VARIANTS=auto for the exact
# widths on the same solver into the same files).
source "$(dirname "$0")/sweep_env.sh"
sweep() {  # $1 checkpoint, $2 short name
  if [[ -n ${NETS:-} && " $NETS " != *" $2 "* ]]; then return 0; fi
  [[ $2 == lenet5 ]] && return 0  # no BatchNorm: neither repair applies
  run "$1" --points "${POINTS:-0.1,0.3,0.5,0.7,0.8}" --repairs ar,data --variants "${VARIANTS:-round8}" --seeds 0,1,2 \
    --out "${OUT:-docs/results/fold-round8}-$2"
}
sweep_lanes
