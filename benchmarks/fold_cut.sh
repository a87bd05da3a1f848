#!/usr/bin/env bash
# cluster="auto" with a deeper cut threshold (docs/folding.md "A deeper cut threshold"):
# Ward + Hartigan on groups of >= 256 channels that keep >= 60% ("cut60", the default since
# it was measured) or 50% ("cut50") of them, against the 70% rule's rows (the "auto" rows of
# benchmarks/fold_shallow.sh and fold_defaults.sh, same script and protocol), 3 seeds. Only
# networks with a group of >= 256 channels can change: the VGG11-BN 1/2, the MLP, and the
# external EfficientNet-Lite0 (benchmarks/fold_external.py --variants cut60). (The rows in
# docs/results were measured with cut50 on the Fold-AR lines only and without the MLP's
# refit line.)
source "$(dirname "$0")/sweep_env.sh"
wide_rule_sweep cut cut60,cut50
