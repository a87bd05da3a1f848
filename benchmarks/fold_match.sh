#!/usr/bin/env bash
# Statistics matching (repair="match", tuneless.bn_match) against plain BN re-estimation
# (Fold-R, "data"), for folding and for L1 pruning at the same widths, on every benchmark
# network, 3 seeds, 1,024 training images in the checkpoint's training view, 2,000 test
# images (docs/folding.md "Statistics matching"). Each line resumes its CSV; ~30 min on one
# thread. The off-domain case is benchmarks/fold_external.py (fold-match, l1-match).
source "$(dirname "$0")/sweep_env.sh"
for pair in models/resnet20-cifar10.pt:resnet20 models/vgg11_bn-w0.5-cifar10.pt:vgg11 \
            models/mlp-fashion-mnist.pt:mlp models/resnet56-avg-cifar10.pt:resnet56; do
  run "${pair%%:*}" --test-images 2000 --points 0.1,0.3,0.5,0.7,0.8 \
    --repairs data,match,l1-bn,l1-match --variants default --out "docs/results/fold-match-${pair##*:}"
done
