#!/usr/bin/env bash
# Regenerates docs/results/fold-peers-*.{csv,md,png}: default folding side by side with
# Torch-Pruning's criteria (no fine-tuning, with and without BN re-estimation on the same
# images) and with L1 + the same repairs, at 10-80% removed on every benchmark network
# (issue 17). Needs the bench extra (torch-pruning). Each step resumes its CSV. Several
# hours on one thread of this CPU; extra arguments go to every `tuneless bench fold`.
set -euo pipefail
cd "$(dirname "$0")/.."
extra=("$@")
S=0.1,0.3,0.5,0.6,0.7,0.8
TP=tp-l1,tp-l2,tp-bn,tp-taylor,tp-l1-bn,tp-l2-bn,tp-bn-bn,tp-taylor-bn
OURS=fold-ar,fold-dir,prune-l1-dir,fold-r,prune-l1-bn,fold-refit,prune-l1-refit
bench() { tuneless bench fold "$@" --threads 1 --out docs/results --sparsities "$S" --resume "${extra[@]}"; }
bench models/resnet20-cifar10.pt --name fold-peers-resnet20 --methods "$OURS,$TP,fold-ar-paper,fold-r-paper"
bench models/resnet56-avg-cifar10.pt --name fold-peers-resnet56 --methods "$OURS,$TP"
bench models/vgg11_bn-w0.5-cifar10.pt --name fold-peers-vgg11 --methods "$OURS,$TP"
bench models/mlp-fashion-mnist.pt --name fold-peers-mlp --methods "fold-ar,fold-dir,prune-l1-dir,fold-r,prune-l1-bn,fold-refit,prune-l1-refit,tp-l1,tp-l2,tp-taylor"
