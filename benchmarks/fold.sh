#!/usr/bin/env bash
# Regenerates docs/results/fold-{fashion-mnist,cifar10,vgg11,resnet56}.* (the folding
# benchmark of issue 4: every method of `tuneless bench fold` at 10-80% removed) and the
# fold-speed tables. Run from the repository root with the machine otherwise idle. Expect
# hours on this CPU: DeepInversion and the full 10,000-image test split per cell; each step
# resumes its CSV (--resume), so an interrupted run continues where it stopped. Extra
# arguments go to every `tuneless bench fold`.
set -euo pipefail
cd "$(dirname "$0")/.."
bench() { tuneless bench fold "$@" --threads 2 --out docs/results --resume "${extra[@]}"; }
extra=("$@")
bench models/mlp-fashion-mnist.pt models/lenet5-fashion-mnist.pt --name fold-fashion-mnist
bench models/resnet20-cifar10.pt --name fold-cifar10
bench models/vgg11_bn-w0.5-cifar10.pt --name fold-vgg11
bench models/resnet56-avg-cifar10.pt --name fold-resnet56
for t in 1 2; do
  tuneless bench fold-speed --threads "$t" --models resnet56,resnet18,vgg11_bn-4096 \
    --sklearn-max-n 0 --out docs/results --name "fold-speed-${t}threads"
done
