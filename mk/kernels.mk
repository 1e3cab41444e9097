# Kernels: native CPU library + optimizer-step benchmark. Included from the main Makefile
# (expects PY and VENV to be defined there).
#   make native          build kernels/_native/libladder_kernels.so (CMake, ~40 s on 2 cores)
#   make bench-kernels   benchmark the fused optimizer step and write
#                        docs/results/kernels-bench-<device>-<date>.{json,md}
#                        (KBENCH_SIZES=1,4,16 in Mi params; KBENCH_DEVICE / KBENCH_DATE override)

NATIVE_LIB     := kernels/_native/libladder_kernels.so
NATIVE_SOURCES := $(wildcard kernels/csrc/*.cpp) CMakeLists.txt setup.py

KBENCH_DATE   ?= $(shell date -u +%Y-%m-%d)
KBENCH_DEVICE ?= $(shell $(PY) -c "import os, torch; print(('cuda-' + torch.cuda.get_device_name(0).lower().replace(' ', '-')) if torch.cuda.is_available() else 'cpu-%dcore' % os.cpu_count())" 2>/dev/null || echo cpu)
KBENCH_OUT    := docs/results/kernels-bench-$(KBENCH_DEVICE)-$(KBENCH_DATE)
KBENCH_ARGS   ?=

.PHONY: native bench-kernels clean-native

native: $(NATIVE_LIB)

$(NATIVE_LIB): $(VENV)/.installed $(NATIVE_SOURCES)
	$(PY) setup.py -q build_ext --inplace

bench-kernels: native
	mkdir -p docs/results
	$(PY) -m pytest -q -p no:cacheprovider tests/bench/test_bench_optimizer_step.py \
	    --benchmark-only --benchmark-json=$(KBENCH_OUT).json $(KBENCH_ARGS)
	$(PY) -m kernels.bench_report $(KBENCH_OUT).json -o $(KBENCH_OUT).md --device $(KBENCH_DEVICE)

clean-native:
	rm -rf build/native $(NATIVE_LIB)
