#!/usr/bin/env bash
# Regenerates docs/results/fold* (the folding benchmark of issue 4). One thread; run from the
# repository root. Checkpoints that do not exist yet are skipped. Expect hours on this CPU
# for the CIFAR models (DeepInversion and the full 10,000-image test split).
set -euo pipefail
cd "$(dirname "$0")/.."
ckpts=()
for f in models/mlp-fashion-mnist.pt models/lenet5-fashion-mnist.pt models/resnet20-cifar10.pt \
         models/resnet56-cifar10.pt models/vgg11_bn-cifar10.pt; do
  [[ -f "$f" ]] && ckpts+=("$f")
done
# Fashion-MNIST models: full test split.
fm=(); cf=()
for f in "${ckpts[@]}"; do [[ "$f" == *fashion* ]] && fm+=("$f") || cf+=("$f"); done
if (( ${#fm[@]} )); then
  tuneless bench fold "${fm[@]}" --threads 1 --name fold-fashion-mnist "$@"
fi
if (( ${#cf[@]} )); then
  tuneless bench fold "${cf[@]}" --threads 1 --name fold-cifar10 "$@"
fi
tuneless bench fold-speed --threads 1
