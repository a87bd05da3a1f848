#!/usr/bin/env bash
# A CIFAR-10 network nobody in this project trained (PyPI cifar-10-model's Keras CNN, converted
# by benchmarks/keras_cifar_cnn.py; ReLU before BatchNorm, unpadded convs, wide dense layers):
# every Torch-Pruning criterion and tuneless's rows in one `tuneless bench fold` run (seed 0),
# and the fold's defaults over 3 seeds beside L1 with each repair (fold_defaults.py), full test
# split, plain repair images (the network was trained without crops). docs/folding.md
# "A second network nobody here trained".
set -euo pipefail
K=${K:-../runs/keras-cifar-cnn.pt}  # any path: written on first use (rows key on it)
if [[ ! -f $K ]]; then mkdir -p "$(dirname "$K")"; python benchmarks/keras_cifar_cnn.py "$K"; fi
OUT=${OUT:-docs/results}
tuneless bench fold "$K" --sparsities 0.1,0.3,0.5,0.7,0.8 --methods \
  fold-naive,fold-ar,fold-r,prune-l1,prune-l1-bn,fold-refit,prune-l1-refit,tp-l1,tp-l2,tp-bn,tp-taylor,tp-l1-bn,tp-taylor-bn \
  --threads 1 --out "$OUT" --name fold-keras-cifar --resume
python benchmarks/fold_defaults.py "$K" --view plain --points 0.1,0.3,0.5,0.7,0.8 \
  --repairs ar,data,refit,none --variants default --seeds 0,1,2 --out "$OUT/fold-keras-defaults" \
  --script benchmarks/fold_keras.sh
python benchmarks/fold_defaults.py "$K" --view plain --points 0.1,0.3,0.5,0.7,0.8 \
  --repairs l1,l1-bn,l1-refit --variants auto,sens75 --seeds 0 --out "$OUT/fold-keras-defaults" \
  --script benchmarks/fold_keras.sh
