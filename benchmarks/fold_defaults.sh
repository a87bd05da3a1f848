#!/usr/bin/env bash
# Regenerates docs/results/fold-defaults-*.{csv,md}: the 3-seed sweep that chose the fold
# defaults (benchmarks/fold_defaults.py; docs/folding.md "Defaults"). Each command resumes
# its CSV, so an interrupted run continues. About 4 hours on one thread of this CPU.
source "$(dirname "$0")/sweep_env.sh"
sweep() { python benchmarks/fold_defaults.py "$@"; }
ALL=paper-order,no-stats,unfused,unfused-no-stats,unfused-no-stats-n10,no-stats-n10
FOUR=paper-order,no-stats,unfused-no-stats,unfused-no-stats-n10
# VGG11-BN at the uniform channel ratios of the paper-code comparison (issue 17)
sweep models/vgg11_bn-w0.5-cifar10.pt --ratio channel --points 0.3,0.5,0.7 \
  --repairs none,ar,data --variants "$ALL" --out docs/results/fold-defaults-vgg11
sweep models/resnet20-cifar10.pt --repairs ar,data --variants "$FOUR" \
  --out docs/results/fold-defaults-resnet20
sweep models/resnet20-cifar10.pt --repairs none --variants paper-order,no-stats \
  --out docs/results/fold-defaults-resnet20
sweep models/resnet56-avg-cifar10.pt --repairs ar,data --variants paper-order,unfused-no-stats \
  --out docs/results/fold-defaults-resnet56
sweep models/mlp-fashion-mnist.pt --repairs ar,data \
  --variants paper-order,no-stats,unfused-no-stats --out docs/results/fold-defaults-mlp
# Fold-DIR's cost (issue 17: < 90 s on ResNet-56 at equal accuracy): DeepInversion images
# × steps, and a shorter schedule at twice the learning rate
sweep models/resnet56-avg-cifar10.pt --repairs dir --points 0.5 \
  --variants default,dir-i64-s50,dir-s25,dir-s50-lr02 --out docs/results/fold-dir-cost-resnet56
sweep models/resnet56-avg-cifar10.pt --repairs dir --points 0.3,0.7 --variants default,dir-s50-lr02 \
  --out docs/results/fold-dir-cost-resnet56
# coarse-to-fine DeepInversion (rows measured at commit 623c902, where the option existed):
#   sweep models/resnet56-avg-cifar10.pt --repairs dir --points 0.5 --variants dir-c50,dir-c75 \
#     --out docs/results/fold-dir-cost-resnet56
sweep models/resnet20-cifar10.pt --repairs dir --variants dir-s50-lr02,default \
  --out docs/results/fold-dir-cost-resnet20
# Measured, not adopted, code removed again (run these at commit d4c1ec2, where the variants
# exist; docs/folding.md "Two more ideas"): Ward + Hartigan on single-producer groups only
# ("auto"), and data-free activation-aware features ("act", "act-pre", "act-param").
#   sweep models/resnet20-cifar10.pt --repairs ar,data --variants auto --out docs/results/fold-auto-resnet20
#   sweep models/resnet56-avg-cifar10.pt --repairs ar,data --variants auto --out docs/results/fold-auto-resnet56
#   sweep models/resnet20-cifar10.pt --repairs ar --variants act,act-pre --seeds 0 --out docs/results/fold-act-resnet20
#   sweep models/resnet20-cifar10.pt --repairs ar --variants act-param --seeds 0,1 --out docs/results/fold-act-resnet20
#   sweep models/vgg11_bn-w0.5-cifar10.pt --ratio channel --repairs ar --variants act,act-param --seeds 0 --out docs/results/fold-act-vgg11
# LeNet-5's data-free default (no BN: Fold-Naive with measured widths) at 10-80%, against the
# Torch-Pruning rows of docs/results/fold-fashion-mnist.md (issue 17's third target)
sweep models/lenet5-fashion-mnist.pt --repairs none --variants default \
  --points 0.1,0.3,0.5,0.6,0.7,0.8 --out docs/results/fold-default-naive-lenet5
