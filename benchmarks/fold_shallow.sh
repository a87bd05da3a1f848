#!/usr/bin/env bash
# Shallow cuts (docs/folding.md "Shallow cuts of wide groups"): k-means (the default before)
# against cluster="auto" (Ward + Hartigan where a group of ≥ 256 channels keeps ≥ 70% of
# them, k-means elsewhere; the default since) and "shallow-all" (the same rule on groups of
# any width), 3 seeds, every benchmark network, Fold-AR (the data-free default), plus
# Fold-R / Fold-Naive at the VGG paper point and the refit at 10–30%. Each line resumes its
# CSV. About 2 hours on one thread; the refit rows' k-means and L1 + refit rows come from
# benchmarks/fold_refit.sh (same code path, copied into these CSVs with their commits).
source "$(dirname "$0")/sweep_env.sh"
V=${VARIANTS:-kmeans,auto,shallow-all}
run models/vgg11_bn-w0.5-cifar10.pt --ratio channel --points 0.3,0.5,0.7 --repairs ar \
  --variants "$V" --out docs/results/fold-shallow-vgg11-ratio
run models/vgg11_bn-w0.5-cifar10.pt --ratio channel --points 0.3 --repairs none,data \
  --variants auto --out docs/results/fold-shallow-vgg11-ratio
R20A=${R20A:-runs/resnet20a-cifar10.pt}
nets=(models/resnet20-cifar10.pt:resnet20 models/resnet56-avg-cifar10.pt:resnet56
      models/vgg11_bn-w0.5-cifar10.pt:vgg11 models/mlp-fashion-mnist.pt:mlp)
[ -f "$R20A" ] && nets+=("$R20A:resnet20a")
for pair in "${nets[@]}"; do
  run "${pair%%:*}" --test-images 2000 --points 0.1,0.3,0.5,0.7,0.8 --repairs ar \
    --variants "$V" --out "docs/results/fold-shallow-${pair##*:}"
done
# the VGG at 10–50% again on the full test split (the 2,000-image cells differ by < 0.5)
run models/vgg11_bn-w0.5-cifar10.pt --points 0.1,0.3,0.5 --repairs ar --variants kmeans,auto \
  --out docs/results/fold-shallow-vgg11-full
# Fold-R (BN re-estimation on 1,024 training images) on the two networks the rule touches
for pair in models/vgg11_bn-w0.5-cifar10.pt:vgg11 models/mlp-fashion-mnist.pt:mlp; do
  run "${pair%%:*}" --test-images 2000 --points 0.1,0.3,0.5 --repairs data \
    --variants kmeans,auto --out "docs/results/fold-shallow-fold-r-${pair##*:}"
done
run models/vgg11_bn-w0.5-cifar10.pt --points 0.3 --repairs data --variants kmeans,auto \
  --out docs/results/fold-shallow-fold-r-vgg11-full
refit() {
  run "$1" --view plain --test-images 2000 --points "$3" --repairs refit --variants "$4" \
    --out "docs/results/fold-shallow-refit-$2"
}
refit models/resnet20-cifar10.pt resnet20 0.1,0.3,0.5 shallow-all
refit models/vgg11_bn-w0.5-cifar10.pt vgg11 0.1,0.3 shallow-all,auto
refit models/vgg11_bn-w0.5-cifar10.pt vgg11 0.5 shallow-all
refit models/mlp-fashion-mnist.pt mlp 0.1,0.3 auto
[ -f "$R20A" ] && refit "$R20A" resnet20a 0.1,0.3,0.5 shallow-all
