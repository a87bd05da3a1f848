#!/usr/bin/env bash
# Smooth training + SVD (METHODS.md §2): train ResNet-20 plain and with each penalty, then
# compare SVD / magnitude / structured L1 / Fold-AR at 30-80% of parameters removed.
#
#   benchmarks/smooth.sh train   # the λ sweep (long: one ResNet-20 run per line, 1 thread each)
#   benchmarks/smooth.sh bench   # the comparison table from the chosen checkpoints
#
# λ is relative (--smooth-relative): the penalty at initialisation equals λ, against an initial
# cross-entropy of ≈ 2.4 (docs/results/penalty_overhead.md lists the matching raw λ). The
# penalty decays far more slowly than the cross-entropy (ResNet-20 d1: 5228 at init, 4245 after
# 3 of 18 epochs), so late in training λ = 1 is larger than the task loss. On the Fashion-MNIST
# MLP (3 epochs) relative λ 0.3-3 cost at most 0.3 pt of dense accuracy.
# Pick, per penalty, the largest λ whose dense accuracy is within 0.5 pt of plain, and point
# D1/D2/NUC at those checkpoints for the bench (or set them in the environment).
set -euo pipefail
cd "$(dirname "$0")/.."

ARCH=${ARCH:-resnet20}
EPOCHS=${EPOCHS:-18}
OUT=${OUT:-models/smooth}
LAMBDAS=${LAMBDAS:-"0.3 1 3"}
NUC_EVERY=${NUC_EVERY:-1}

train() {
    mkdir -p "$OUT"
    tuneless train "$ARCH" -o "$OUT/$ARCH-plain.pt" --epochs "$EPOCHS" --threads 1
    for lam in $LAMBDAS; do
        for kind in d1 d2; do
            tuneless train "$ARCH" -o "$OUT/$ARCH-$kind-rel$lam.pt" --epochs "$EPOCHS" \
                --threads 1 --smooth "$kind" --smooth-lambda "$lam" --smooth-relative
        done
        tuneless train "$ARCH" -o "$OUT/$ARCH-nuc-rel$lam.pt" --epochs "$EPOCHS" --threads 1 \
            --smooth nuc --smooth-lambda "$lam" --smooth-relative --smooth-every "$NUC_EVERY"
    done
}

bench() {
    # defaults: the committed ResNet-20s at the chosen λ (plain: models/, penalties:
    # models/smooth/; the largest relative λ of {0.3, 1} within 0.5 pt of plain)
    PLAIN=${PLAIN:-models/$ARCH-cifar10.pt}
    D1=${D1:-$OUT/$ARCH-cifar10-d1-rel1.pt}
    D2=${D2:-$OUT/$ARCH-cifar10-d2-rel0.3.pt}
    NUC=${NUC:-$OUT/$ARCH-cifar10-nuc-rel0.3.pt}
    tuneless bench smooth --plain "$PLAIN" --d1 "$D1" --d2 "$D2" --nuc "$NUC" \
        --methods svd,magnitude,prune-l1,fold-ar --sparsities 0.3,0.5,0.7,0.8 \
        --name "smooth-$ARCH" --threads 1
    python benchmarks/penalty_overhead.py --checkpoint "$PLAIN" --checkpoint "$D1" \
        --checkpoint "$D2" --checkpoint "$NUC"
}

case "${1:-}" in
    train) train ;;
    bench) bench ;;
    *) echo "usage: $0 train|bench" >&2; exit 2 ;;
esac
