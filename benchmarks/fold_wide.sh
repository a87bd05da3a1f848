#!/usr/bin/env bash
# Ward + Hartigan on every wide group (docs/folding.md "Wide groups"): cluster="wide128"
# (every group of >= 128 channels, any cut depth; k-means on narrower ones) and "wide256"
# against the default "auto" rows of benchmarks/fold_shallow.sh, 3 seeds. The rule changes
# nothing on ResNet-20/56 and LeNet-5 (no group of >= 128 channels), so it is measured on
# the VGG11-BN 1/2 and the MLP, and on an external network in benchmarks/fold_external.py.
# About 1.5 hours on one thread. (The rows in docs/results were measured with wide128 on
# every line and wide256 on the Fold-AR sparsity lines only.)
source "$(dirname "$0")/sweep_env.sh"
wide_rule_sweep wide wide128,wide256
