# The GPU machine's stack, tested on this CPU machine. Included from the main Makefile; not part
# of `make test`.
#   make compat          create $(COMPAT_VENV) with the device's Python, torch and triton (below)
#                        plus requirements.txt, then run in it: every project module imported,
#                        the Triton kernels under TRITON_INTERPRET=1 against the reference, and
#                        the kernels compiled to PTX for sm_90. Fails if any of them is skipped.
#   make clean-compat    remove $(COMPAT_VENV)
# The device runs Python 3.12, torch 2.11 (CUDA 13) and triton 3.6. PyPI has no CPU build of torch
# 2.11 for x86_64, only the CUDA 13 one, and the CPU index is not reachable here; that wheel and its
# nvidia-* libraries install and import on a machine without a GPU, so the venv gets the device's
# own torch: 5.1 GB on disk (measured 2026-12-05: ~2.6 min to create, the first time). Python 3.12
# comes from pyenv where the machine has it (this one does); Debian 12 packages only 3.11.

COMPAT_VENV   ?= .venv-compat
COMPAT_TORCH  ?= torch==2.11.0
COMPAT_TRITON ?= triton==3.6.0
COMPAT_PYVER  ?= 3.12
# The first python$(COMPAT_PYVER) that runs: on PATH, else one that pyenv installed (pyenv's shim
# refuses to run a version that is not selected, hence the direct path).
COMPAT_PYTHON ?= $(shell for p in python$(COMPAT_PYVER) $$(pyenv root 2>/dev/null)/versions/$(COMPAT_PYVER).*/bin/python$(COMPAT_PYVER); do "$$p" -c "" >/dev/null 2>&1 && { command -v "$$p"; break; }; done)
COMPAT_PY     := $(COMPAT_VENV)/bin/python
COMPAT_JUNIT  := $(COMPAT_VENV)/compat-junit.xml
COMPAT_TESTS  ?= tests/kernels/test_module_imports.py tests/kernels/test_triton_ptx.py \
                 tests/kernels/test_triton_adamw.py::test_triton_interpreter_vs_reference \
                 tests/kernels/test_decoupled.py::test_triton_decoupled_under_the_interpreter_matches_reference \
                 tests/kernels/test_decoupled.py::test_triton_multi_tensor_decoupled_under_the_interpreter_matches_reference \
                 tests/kernels/test_kernels.py::test_cuda_without_triton_warns_once_and_uses_the_reference

.PHONY: compat clean-compat

$(COMPAT_VENV)/.installed: requirements.txt mk/compat.mk
	@test -n "$(COMPAT_PYTHON)" || { echo "make compat: no Python $(COMPAT_PYVER) found on PATH or" \
	    "under pyenv; install one (e.g. pyenv install $(COMPAT_PYVER)) or pass COMPAT_PYTHON=/path/to/python$(COMPAT_PYVER)" >&2; exit 1; }
	test -x $(COMPAT_PY) || $(COMPAT_PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_PY) -m pip install -q "$(COMPAT_TORCH)" "$(COMPAT_TRITON)" -r requirements.txt
	touch $@

# The versions are checked, not assumed: a pip that resolved something else fails here.
compat: $(COMPAT_VENV)/.installed
	$(COMPAT_PY) -c "import sys, torch, triton; v = (sys.version.split()[0], torch.__version__, triton.__version__); \
	    print('compat: Python %s, torch %s, triton %s' % v); \
	    want = ('$(COMPAT_PYVER)', '$(COMPAT_TORCH)'.split('==')[-1], '$(COMPAT_TRITON)'.split('==')[-1]); \
	    assert v[0].startswith(want[0] + '.') and v[1].split('+')[0] == want[1] and v[2] == want[2], f'expected {want}, got {v}'"
	OMP_NUM_THREADS=1 $(COMPAT_PY) -m pytest -q -rs -p no:cacheprovider --junitxml=$(COMPAT_JUNIT) $(COMPAT_TESTS)
	$(COMPAT_PY) -c "import sys, xml.etree.ElementTree as ET; r = ET.parse('$(COMPAT_JUNIT)').getroot(); \
	    s = sum(int(t.get('skipped', 0)) for t in r.iter('testsuite')); \
	    sys.exit(f'make compat: {s} test(s) skipped: the device stack was not fully checked (see -rs above)' if s else 0)"

clean-compat:
	rm -rf $(COMPAT_VENV)
