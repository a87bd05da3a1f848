#!/usr/bin/env bash
# Whether folding should spend its budget by measured sensitivity (allocation="sensitivity":
# each group folded alone at five depths, the output's movement on probe inputs — the
# repair's own images for Fold-R, pink noise otherwise — then the greedy budget of
# tuneless.allocation): the "sens" variant for Fold-Naive, Fold-AR and Fold-R on every
# benchmark network at 10-80%, 3 seeds, full test split, and at the VGG's paper points,
# against the default's rows (variant_sweep in sweep_env.sh). LANE=1 / LANE=2 as in
# sweep_env.sh. Results: docs/folding.md "Sensitivity allocation".
# An argument names another variant of benchmarks/fold_defaults.py, e.g. `sens75` (a floor
# of 3/4 of the uniform width): results in docs/results/fold-<variant>-*.
source "$(dirname "$0")/sweep_env.sh"
variant="${1:-sens}"
variant_sweep "docs/results/fold-$variant" "$variant"

