#!/usr/bin/env bash
# Build the wheel and use it in a fresh virtual environment with only the core
# dependencies and a torch older than the one the test suite runs on (2.13.0, the CPU
# build): proves the package installs beside a user's own torch and works without extras.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip wheel --no-deps -q -w "$work/dist" .
python3 -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install -q torch==2.13.0
"$py" -m pip install -q "$work"/dist/tuneless-*.whl
cd "$work"   # not the checkout: the installed wheel must be what runs
"$work/venv/bin/tuneless" --version
"$work/venv/bin/tuneless" --help > /dev/null
"$py" - <<'PY'
import importlib.util, torch, tuneless
from tuneless.modelio import build_arch
assert importlib.util.find_spec("torchvision") is None and importlib.util.find_spec("transformers") is None
x = torch.randn(2, 3, 32, 32)
model = build_arch("resnet20").eval()
for small in (tuneless.fold(model, sparsity=0.3, example_inputs=x),
              tuneless.prune(model, sparsity=0.3, example_inputs=x),
              tuneless.svd(model, sparsity=0.3)):
    tuneless.save(small, "m.pt")
    assert torch.equal(tuneless.load("m.pt")(x), small(x))
print(f"wheel smoke test passed: tuneless {tuneless.__version__}, torch {torch.__version__}")
PY
