#!/usr/bin/env bash
# Which clustering each repair should default to (issue 17: Fold-Naive and Fold-R below the
# paper's code on the VGG, which clusters by Ward): the default cluster="auto" (k-means, 3
# seeds; Ward + Hartigan only on shallow cuts of wide groups) against Ward + Hartigan on
# every group (deterministic, one run), for Fold-Naive ("none"), Fold-AR ("ar") and Fold-R
# ("data"), beside L1 pruning + BN re-estimation on the same widths and images, on every
# benchmark network at 10-80% and at the VGG's paper points; full test split, one run per
# network. LANE=1 runs ResNet-20, VGG and the MLP; LANE=2 ResNet-56 and LeNet-5 (two
# single-thread jobs side by side); no LANE runs both in turn. Results and the decision:
# docs/folding.md "Ward + Hartigan at the current defaults".
source "$(dirname "$0")/sweep_env.sh"
out=docs/results/fold-cluster-repair
sweep() {  # $1 checkpoint, $2 short name
  run "$1" --points 0.1,0.3,0.5,0.7,0.8 --repairs none,data,ar --variants auto \
    --seeds 0,1,2 --out "$out-$2"
  run "$1" --points 0.1,0.3,0.5,0.7,0.8 --repairs none,data,ar --variants ward-hartigan \
    --seeds 0 --out "$out-$2"
  # L1 + BN re-estimation on the same widths and images (deterministic): Fold-R's peer
  run "$1" --points 0.1,0.3,0.5,0.7,0.8 --repairs l1-bn --variants auto --seeds 0 \
    --out "$out-$2"
}
if [[ ${LANE:-0} != 2 ]]; then  # the VGG's paper points go with its lane
  run $VGG --ratio channel --points 0.3,0.5,0.7 --repairs none,data,ar --variants auto \
    --seeds 0,1,2 --out "$out-vgg11-ratio"
  run $VGG --ratio channel --points 0.3,0.5,0.7 --repairs none,data,ar \
    --variants ward-hartigan --seeds 0 --out "$out-vgg11-ratio"
  run $VGG --ratio channel --points 0.3,0.5,0.7 --repairs l1-bn --variants auto --seeds 0 \
    --out "$out-vgg11-ratio"
fi
sweep_lanes
