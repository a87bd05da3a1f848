#!/usr/bin/env bash
# The least-squares refit at 10 / 30%, where fold + refit trailed L1 + refit by up to a
# point on 2,000 test images (docs/folding.md "Clamp-aware refit targets"): the default
# cluster="auto" (k-means, 3 seeds) and Ward + Hartigan (deterministic, one run) against
# L1 + the same refit on the same widths and the same 1,024 plain training images, on the
# full test split, every benchmark network. LANE=1: ResNet-20, VGG, MLP; LANE=2: ResNet-56,
# LeNet-5 (two single-thread jobs side by side); no LANE: both in turn.
source "$(dirname "$0")/sweep_env.sh"
out=docs/results/fold-cluster-refit
sweep() {  # $1 checkpoint, $2 short name
  run "$1" --view plain --points 0.1,0.3 --repairs refit,l1-refit --variants auto \
    --seeds 0,1,2 --out "$out-$2"
  run "$1" --view plain --points 0.1,0.3 --repairs refit --variants ward-hartigan \
    --seeds 0 --out "$out-$2"
}
sweep_lanes
