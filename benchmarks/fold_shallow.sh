#!/usr/bin/env bash
# cluster="auto" (Ward + Hartigan on shallow cuts, k ≥ 0.7·n; k-means on deeper ones)
# against the k-means default, data-free Fold-AR, 3 seeds, every benchmark network, in one
# run per network (docs/folding.md "Shallow cuts"). Each command resumes its CSV.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
V=${VARIANTS:-default,auto}
python benchmarks/fold_defaults.py models/vgg11_bn-w0.5-cifar10.pt --ratio channel \
  --points 0.3,0.5,0.7 --repairs ar --variants "$V" --script benchmarks/fold_shallow.sh \
  --out docs/results/fold-shallow-vgg11-ratio
sweep() {
  python benchmarks/fold_defaults.py --test-images 2000 --points 0.1,0.3,0.5,0.7,0.8 \
    --repairs ar --variants "$V" --script benchmarks/fold_shallow.sh "$@"
}
sweep models/resnet20-cifar10.pt --out docs/results/fold-shallow-resnet20
sweep models/resnet56-avg-cifar10.pt --out docs/results/fold-shallow-resnet56
sweep models/vgg11_bn-w0.5-cifar10.pt --out docs/results/fold-shallow-vgg11
sweep models/mlp-fashion-mnist.pt --out docs/results/fold-shallow-mlp
sweep models/lenet5-fashion-mnist.pt --out docs/results/fold-shallow-lenet5
R20A=${R20A:-runs/resnet20a-cifar10.pt}
if [ -f "$R20A" ]; then sweep "$R20A" --out docs/results/fold-shallow-resnet20a; fi
