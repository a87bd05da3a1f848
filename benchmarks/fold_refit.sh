#!/usr/bin/env bash
# Regenerates docs/results/fold-refit-*.{csv,md}: fold + least-squares refit against L1
# pruning + the same refit (issue 17: fold + refit >= L1 + refit at every sparsity, every
# benchmark network), and the data-free repair "self" against L1 + the same refit on the
# same DeepInversion images (docs/folding.md "Clamp-aware refit" and "Data-free refit").
# Same per-group widths, 1,024 plain training images, first 2,000 test images; the fold
# rows take 3 seeds, L1 is deterministic. Each command resumes its CSV. About 4 hours on
# one thread of this CPU.
source "$(dirname "$0")/sweep_env.sh"
sweep() {
  python benchmarks/fold_defaults.py --view plain --test-images 2000 \
    --points 0.1,0.3,0.5,0.7,0.8 --script benchmarks/fold_refit.sh "$@"
}
refit() { sweep "$1" --repairs refit,l1-refit --variants default --out "docs/results/fold-refit-$2"; }
refit models/resnet20-cifar10.pt resnet20
refit models/vgg11_bn-w0.5-cifar10.pt vgg11
refit models/mlp-fashion-mnist.pt mlp
refit models/lenet5-fashion-mnist.pt lenet5
# the option-A ResNet-20 is not committed (models/ is at its size budget): train it first,
#   tuneless train resnet20a -o runs/resnet20a-cifar10.pt --epochs 18 --threads 1
R20A=${R20A:-runs/resnet20a-cifar10.pt}
if [ -f "$R20A" ]; then refit "$R20A" resnet20a; else echo "skipped resnet20a: no $R20A"; fi
refit models/resnet56-avg-cifar10.pt resnet56
# does another clustering close fold + refit's gap at 30%? (ResNet-20; it does not)
sweep models/resnet20-cifar10.pt --points 0.1,0.3,0.5 --repairs refit \
  --variants ward-hartigan,paper-order,no-stats --out docs/results/fold-refit-variants-resnet20
# data-free: fold + refit on DeepInversion images of the dense model, default inversion
# settings and 256 images x 50 steps at lr 0.2
self() {
  sweep "$1" --repairs self,l1-self --variants default,self-i256-s50 --out "docs/results/fold-self-$2"
}
self models/resnet20-cifar10.pt resnet20
if [ -f "$R20A" ]; then
  sweep "$R20A" --repairs self,l1-self --variants default --out docs/results/fold-self-resnet20a
fi
# VGG11-BN at the uniform channel ratios of the paper-code comparison (issue 17), full split
python benchmarks/fold_defaults.py models/vgg11_bn-w0.5-cifar10.pt --ratio channel \
  --points 0.3,0.5,0.7 --repairs self --variants default,self-i256-s50 \
  --script benchmarks/fold_refit.sh --out docs/results/fold-self-vgg11-ratio
