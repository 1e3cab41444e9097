# Training-throughput benchmark. Included from the main Makefile (expects PY and VENV there;
# `native` comes from mk/kernels.mk).
#   make bench-train    time one whole cpu-tiny training step (d2..d4, 8 x 256 tokens, fp32):
#                       plain vs inherited (penalty + ARS + online Fisher) and an fp32 matmul probe,
#                       then write docs/results/train-bench-<device>-<date>.{json,md}
#   TBENCH_THREADS=N    torch threads (default: torch's own / OMP_NUM_THREADS)
#   TBENCH_NOTE="..."   a note for the markdown header (e.g. "machine loaded by other jobs")
#   TBENCH_DEVICE / TBENCH_DATE override the file name; TBENCH_ARGS go to pytest.

TBENCH_DATE   ?= $(shell date -u +%Y-%m-%d)
TBENCH_DEVICE ?= $(shell $(PY) -c "import os, torch; print(('cuda-' + torch.cuda.get_device_name(0).lower().replace(' ', '-')) if torch.cuda.is_available() else 'cpu-%dcore' % os.cpu_count())" 2>/dev/null || echo cpu)
TBENCH_OUT    := docs/results/train-bench-$(TBENCH_DEVICE)-$(TBENCH_DATE)
TBENCH_THREADS ?=
TBENCH_NOTE   ?=
TBENCH_ARGS   ?=

.PHONY: bench-train

bench-train: native
	mkdir -p docs/results
	LADDER_BENCH_THREADS=$(TBENCH_THREADS) $(PY) -m pytest -q -p no:cacheprovider tests/bench/test_bench_train_step.py \
	    --benchmark-only --benchmark-json=$(TBENCH_OUT).json $(TBENCH_ARGS)
	$(PY) -m launch.train_bench $(TBENCH_OUT).json -o $(TBENCH_OUT).md --device $(TBENCH_DEVICE) \
	    $(if $(TBENCH_NOTE),--note "$(TBENCH_NOTE)")
