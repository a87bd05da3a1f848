#!/usr/bin/env bash
# The layout of the outside check's networks: a zero-padding ("option A") CIFAR ResNet-20,
# trained here (`tuneless train resnet20a -o CKPT --epochs 18 --threads 1`, ~75-90 min on
# one thread; not committed: models/ is at its 40 MB budget). Every data repair against
# its L1 peer at the current defaults, 10-80%, full test split, fold 3 seeds: Fold-R and
# Fold-AR with L1 + BN re-estimation on 1,024 training images in the training view, fold +
# refit with L1 + refit on the same images in the plain view (the refit wants plain
# images, docs/folding.md). Usage: LANE=1|2 bash benchmarks/fold_option_a.sh CKPT
# (LANE=1: Fold-R, Fold-AR, L1 + BN; LANE=2: the refits; no LANE: both in turn).
# Results: docs/folding.md "The option-A ResNet-20 at the current defaults".
source "$(dirname "$0")/sweep_env.sh"
ckpt=${1:?usage: bash benchmarks/fold_option_a.sh CKPT}
out=docs/results/fold-option-a
if [[ ${LANE:-0} != 2 ]]; then
  run "$ckpt" --points 0.1,0.3,0.5,0.7,0.8 --repairs data,ar --variants auto --seeds 0,1,2 \
    --out "$out"
  run "$ckpt" --points 0.1,0.3,0.5,0.7,0.8 --repairs l1-bn --variants auto --seeds 0 \
    --out "$out"
fi
if [[ ${LANE:-0} != 1 ]]; then
  run "$ckpt" --view plain --points 0.1,0.3,0.5,0.7,0.8 --repairs refit,l1-refit \
    --variants auto --seeds 0,1,2 --out "$out-refit"
fi
