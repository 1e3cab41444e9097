# Two commands: `make miniseries` (set up, then run the main job on CPU with the built-in corpus)
# and `make test` (set up, then run the test suite). Both create .venv and install what is missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# A CPU-only machine gets the CPU build of torch (an unpinned `torch` would pull a multi-GB CUDA
# build); a machine with an NVIDIA driver gets the default CUDA build. Override: make TORCH_SPEC=...
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
PYTEST_ARGS ?=

.PHONY: venv corpus test miniseries study train bench clean-venv
venv: $(VENV)/.installed
# The `packages` corpus (engine/data/sources.py): pinned pure-Python wheels, checked by hash, unpacked
# into $(VENV)/corpus and never imported; the same bytes on every machine.
corpus: $(VENV)/corpus/.installed

$(VENV)/.installed: requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/corpus/.installed: requirements-corpus.txt | $(VENV)/.installed
	rm -rf $(VENV)/corpus
	$(PY) -m pip install -q --no-deps --no-compile --only-binary :all: --require-hashes \
		--target $(VENV)/corpus -r requirements-corpus.txt
	touch $@

include mk/kernels.mk
include mk/bench.mk
include mk/gpu.mk
include mk/compat.mk

test: venv corpus native
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests --benchmark-disable --durations=15 $(PYTEST_ARGS)

miniseries: venv corpus native
	$(PY) launch/miniseries.py

study: venv corpus native
	$(PY) launch/study.py

train: venv native
	$(PY) launch/train.py --depth 2 --preset cpu-tiny --steps 200 --out runs/train-d2

bench: venv native bench-kernels bench-train

clean-venv:
	rm -rf $(VENV)
