#!/usr/bin/env bash
# Whether folding should first balance each channel's ReLU scale symmetry (balance=True,
# tuneless.rescale): the "balance" variant for Fold-Naive ("none"), Fold-AR ("ar") and
# Fold-R ("data") on every benchmark network at 10-80%, 3 seeds, full test split, and at
# the VGG's paper points, against the default's rows (variant_sweep in sweep_env.sh).
# LANE=1 / LANE=2 as in sweep_env.sh. Results: docs/folding.md "Balanced channel scales".
source "$(dirname "$0")/sweep_env.sh"
variant_sweep docs/results/fold-balance balance
