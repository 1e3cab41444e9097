# Device check for a lent GPU. Included from the main Makefile (expects PY and PYTHON there).
#   make gpu-check      environment, CUDA tests, optimizer-step bandwidth, a short nanochat-shape
#                       training run (eager and compiled, with a checkpoint and a resume), NVML
#                       energy; writes docs/results/gpu-check-<device>-<date>.md (~8 min on one H100)
#   GPU_CHECK_ARGS      passed on (e.g. --depth 12 --steps 40 --data 'parquet:DIR/*.parquet')
# Uses .venv's python when it exists, else $(PYTHON): no install step, so it runs offline on a
# machine with torch, triton and nvidia-ml-py preinstalled (it names anything else that is missing).

GPU_PY         ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
GPU_CHECK_ARGS ?=

.PHONY: gpu-check

gpu-check:
	$(GPU_PY) launch/gpu_check.py $(GPU_CHECK_ARGS)
