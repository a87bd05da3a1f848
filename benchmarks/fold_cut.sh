#!/usr/bin/env bash
# cluster="auto" with a deeper cut threshold (docs/folding.md "Shallow cuts of wide
# groups"): Ward + Hartigan on groups of >= 256 channels that keep >= 60% ("cut60") or 50%
# ("cut50") of them, against the default's 70% (the "auto" rows of benchmarks/fold_shallow.sh
# and fold_defaults.sh, same script and protocol), 3 seeds. Only networks with a group of
# >= 256 channels can change: the VGG11-BN 1/2, the MLP, and the external EfficientNet-Lite0
# (benchmarks/fold_external.py --variants cut60). Each line resumes its CSV.
source "$(dirname "$0")/sweep_env.sh"
VGG=models/vgg11_bn-w0.5-cifar10.pt
MLP=models/mlp-fashion-mnist.pt
# the paper-code comparison of issue 17: channel ratio 0.3 / 0.5 / 0.7, full test split
run $VGG --ratio channel --points 0.3,0.5,0.7 --repairs ar,none,data --variants cut60,cut50 \
  --out docs/results/fold-cut-vgg11-ratio
run $VGG --test-images 2000 --points 0.1,0.3,0.5,0.7,0.8 --repairs ar --variants cut60,cut50 \
  --out docs/results/fold-cut-vgg11
run $MLP --test-images 2000 --points 0.1,0.3,0.5,0.7,0.8 --repairs ar --variants cut60,cut50 \
  --out docs/results/fold-cut-mlp
run $VGG --view plain --test-images 2000 --points 0.1,0.3 --repairs refit --variants cut60 \
  --out docs/results/fold-cut-refit-vgg11
run $MLP --test-images 2000 --points 0.1,0.3,0.5 --repairs data --variants cut60 \
  --out docs/results/fold-cut-fold-r-mlp
run $VGG --test-images 2000 --points 0.1,0.3,0.5 --repairs data --variants cut60 \
  --out docs/results/fold-cut-fold-r-vgg11
