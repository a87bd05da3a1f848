#!/usr/bin/env bash
# Fold-DIR: statistics matching on the DeepInversion images ("dir-match", repair "dir"'s
# default since it was measured) against the paper's BN re-estimation on the same images
# ("dir-cached"), at four DeepInversion schedules (default = 100 steps at lr 0.1; 50 / 25 /
# 12 steps at lr 0.2), plus Fold-AR and L1 pruning + the same matching, on every benchmark
# network, 3 seeds, 2,000 test images (docs/folding.md "Fold-DIR with statistics
# matching"). Each line resumes its CSV; about 1.5 h on one thread (ResNet-56 half of it).
# The images are synthesised once per (network, seed, schedule) and shared by the rows.
source "$(dirname "$0")/sweep_env.sh"
for pair in models/resnet20-cifar10.pt:resnet20 models/vgg11_bn-w0.5-cifar10.pt:vgg11 \
            models/mlp-fashion-mnist.pt:mlp models/resnet56-avg-cifar10.pt:resnet56; do
  out="docs/results/fold-dir-match-${pair##*:}"
  case "${pair##*:}" in resnet20|resnet56)  # the first probe (seed 0; 25 steps at lr 0.1)
    run "${pair%%:*}" --test-images 2000 --points 0.3,0.5,0.7 --seeds 0 --out "$out" \
      --repairs dir-cached,dir-match,l1-dir-match --variants default,dir-s50-lr02,dir-s25 ;;
  esac
  run "${pair%%:*}" --test-images 2000 --points 0.1,0.3,0.5,0.7,0.8 --repairs dir-match,dir-cached \
    --variants dir-s25-lr02,dir-s12-lr02,dir-s50-lr02,default --out "$out"
  run "${pair%%:*}" --test-images 2000 --points 0.1,0.3,0.5,0.7,0.8 --repairs ar,l1-dir-match \
    --variants dir-s25-lr02 --out "$out"
  run "${pair%%:*}" --test-images 2000 --points 0.1,0.3,0.5,0.7,0.8 --repairs l1-dir-match \
    --variants dir-s50-lr02 --seeds 0 --out "$out"
done
