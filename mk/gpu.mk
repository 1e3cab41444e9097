# Device check for one CUDA GPU. Included from the main Makefile (expects PY and PYTHON there).
#   make gpu-check        environment, import smoke test, CUDA tests, optimizer-step bandwidth, nanochat
#                         d12 training (eager and compiled: tokens/s, MFU, host syncs per step, NVML
#                         energy), the token caches built in the background; 420 s budget
#   make gpu-check-quick  the same as a ~2-minute smoke run (--quick)
#   GPU_CHECK_OUT         where the report goes: $OUT when set (the device tool), else docs/results
#   GPU_CHECK_ARGS        passed on (e.g. --budget-s 300 --skip train-compiled)
# No prerequisites on purpose: no venv, no install, no native build, no network. It runs with
# .venv's python when that exists, else $(PYTHON) (python3: on the device image, the one with torch).
# docs/GPU.md: the device-tool call and how to read the report.

GPU_PY         ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
GPU_CHECK_OUT  ?= $(if $(OUT),$(OUT),docs/results)
GPU_CHECK_ARGS ?=

.PHONY: gpu-check gpu-check-quick

gpu-check:
	$(GPU_PY) launch/gpu_check.py --out-dir $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

gpu-check-quick:
	$(GPU_PY) launch/gpu_check.py --quick --out-dir $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)
