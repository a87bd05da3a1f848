#!/usr/bin/env bash
# Folding grouped convolutions on trained weights (issue 22: grouped convs fold block by
# block since 33794bd, measured until now on random weights only). The zoo's resnext20 (a
# CIFAR ResNeXt, 3x3 convs in 8 groups) is trained here first (not committed: models/ is at
# its size budget):
#   tuneless train resnext20 -o $CKPT --epochs 8 --threads 1
# then, at 10-70% of parameters, the default fold (measured widths) and uniform widths at
# the default stream share against L1 pruning (prune's default: uniform widths at the
# same stream share; and at its own measured widths, variant auto-alloc), without data (Fold-AR,
# Fold-Naive; L1) and with BN re-estimation on the same 1,024 training images (Fold-R;
# L1 + BN), 3 k-means seeds, first 5,000 test images; LANE=1 the default widths, LANE=2
# the uniform ones (two single-thread jobs side by side). LANE=3: Torch-Pruning's
# criteria beside them (tuneless bench fold, one seed). Results: docs/folding.md
# "Grouped convolutions on trained weights".
source "$(dirname "$0")/sweep_env.sh"
CKPT=${CKPT:-../runs/resnext20-cifar10.pt}
out=docs/results/fold-resnext20
lane=${LANE:-0}
if [[ $lane == 0 || $lane == 1 ]]; then
  run "$CKPT" --points 0.1,0.3,0.5,0.7 --repairs none,ar,data,l1,l1-bn --variants default \
    --seeds 0,1,2 --test-images 5000 --out "$out"
  # L1 at its own measured widths (prune(allocation="sensitivity")), the equal-terms peer
  run "$CKPT" --points 0.1,0.3,0.5,0.7 --repairs l1,l1-bn --variants auto-alloc --seeds 0 \
    --test-images 5000 --out "$out"
fi
if [[ $lane == 0 || $lane == 2 ]]; then
  run "$CKPT" --points 0.1,0.3,0.5,0.7 --repairs none,ar,data,l1,l1-bn \
    --variants streams-0.25 --seeds 0,1,2 --test-images 5000 --out "$out"
fi
if [[ $lane == 0 || $lane == 3 ]]; then
  python -m tuneless.cli bench fold "$CKPT" --threads 1 --name fold-peers-resnext20 \
    --out docs/results --sparsities 0.1,0.3,0.5,0.7 --test-subset 5000 \
    --methods fold-ar,fold-r,prune-l1-bn,tp-l1,tp-l2,tp-bn,tp-taylor,tp-l1-bn,tp-l2-bn,tp-bn-bn,tp-taylor-bn
fi
