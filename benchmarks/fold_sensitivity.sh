#!/usr/bin/env bash
# Whether folding should spend its budget by measured sensitivity (allocation="sensitivity":
# each group folded alone at five depths, the output's movement on probe inputs — the
# repair's own images for Fold-R, pink noise otherwise — then the greedy budget of
# tuneless.allocation): the "sens" variant for Fold-Naive, Fold-AR and Fold-R on every
# benchmark network at 10-80%, 3 seeds, full test split, and at the VGG's paper points,
# against the default's rows (variant_sweep in sweep_env.sh). LANE=1 / LANE=2 as in
# sweep_env.sh. Results: docs/folding.md "Sensitivity allocation".
source "$(dirname "$0")/sweep_env.sh"
variant_sweep docs/results/fold-sens sens
