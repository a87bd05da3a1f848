#!/usr/bin/env bash
# Ward + Hartigan on every wide group (docs/folding.md "Wide groups"): cluster="wide128"
# (every group of >= 128 channels, any cut depth; k-means on narrower ones) and "wide256"
# against the default "auto" rows of benchmarks/fold_shallow.sh, 3 seeds. The rule changes
# nothing on ResNet-20/56 and LeNet-5 (no group of >= 128 channels), so it is measured on
# the VGG11-BN 1/2 and the MLP, and on an external network in benchmarks/fold_external.py.
# Each line resumes its CSV; about 1.5 hours on one thread.
source "$(dirname "$0")/sweep_env.sh"
VGG=models/vgg11_bn-w0.5-cifar10.pt
MLP=models/mlp-fashion-mnist.pt
# the paper-code comparison of issue 17: channel ratio 0.3 / 0.5 / 0.7, full test split
run $VGG --ratio channel --points 0.3,0.5,0.7 --repairs ar,none,data --variants wide128 \
  --out docs/results/fold-wide-vgg11-ratio
run $MLP --test-images 2000 --points 0.1,0.3,0.5,0.7,0.8 --repairs ar --variants wide128,wide256 \
  --out docs/results/fold-wide-mlp
run $VGG --test-images 2000 --points 0.1,0.3,0.5,0.7,0.8 --repairs ar --variants wide128,wide256 \
  --out docs/results/fold-wide-vgg11
run $VGG --view plain --test-images 2000 --points 0.1,0.3 --repairs refit --variants wide128 \
  --out docs/results/fold-wide-refit-vgg11
run $MLP --view plain --test-images 2000 --points 0.1,0.3 --repairs refit --variants wide128 \
  --out docs/results/fold-wide-refit-mlp
run $MLP --test-images 2000 --points 0.1,0.3,0.5 --repairs data --variants wide128 \
  --out docs/results/fold-wide-fold-r-mlp
