"""Install the project's dependencies and build the native CPU kernels in place.

    pip install -e .                      # deps from requirements.txt + native build (if torch is
                                          # already installed in the target environment)
    python setup.py build_ext --inplace   # native build only (what `make native` runs)

Why ``packages=[]``: the project's Python code (kernels/, engine/, models/, ...) runs from the
repository root, like nanochat. Our top-level package ``kernels`` has the same name as the PyPI
distribution ``kernels`` (Hugging Face's kernel hub); installing ours into site-packages would
silently shadow theirs (or be shadowed by it) for every other project in the environment. So we
install no top-level packages at all; inside the repository ``import kernels`` finds ours first
(sys.path[0] / pytest's ``pythonpath = ["."]``), and kernels/__init__.py warns once if the other
distribution is also installed.

The native library (kernels/_native/libladder_kernels.so) is built with CMake
(CMakeLists.txt) against the torch of the *target* environment, found via
torch.utils.cmake_prefix_path. Under pip's build isolation torch is not importable from the
build environment, so we ask the target interpreter in a subprocess with the isolation
variables removed. If torch is not installed yet (fresh machine, pip installs the deps after the
build), the native build is skipped with a message: run ``make native`` afterwards.
The library is CPU-only: a CUDA build of torch is fine and nvcc is never needed.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
NATIVE_DIR = ROOT / "kernels" / "_native"
BUILD_DIR = ROOT / "build" / "native"

_TORCH_PROBE = r"""
import json, torch, torch.utils
print(json.dumps({
    "prefix": torch.utils.cmake_prefix_path,
    "root": __import__("os").path.dirname(torch.__file__),
    "cuda": torch.version.cuda,
    "abi": int(torch._C._GLIBCXX_USE_CXX11_ABI),
    "version": torch.__version__,
}))
"""


def read_requirements() -> list:
    reqs = []
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            reqs.append(line)
    return reqs


def probe_torch():
    """torch facts from the target interpreter, outside pip's build isolation; None if absent."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME", "PIP_BUILD_TRACKER")}
    try:
        out = subprocess.run([sys.executable, "-c", _TORCH_PROBE], env=env, cwd=str(ROOT), capture_output=True,
                             text=True, timeout=300)
    except Exception:
        return None
    if out.returncode != 0:
        return None
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except Exception:
        return None


def build_native(jobs: int | None = None, verbose: bool = False) -> Path:
    """Configure + build with CMake; returns the library path. Raises on failure."""
    cmake = shutil.which("cmake")
    if cmake is None:
        raise RuntimeError("cmake not found: install it (apt-get install cmake, or pip install "
                           "cmake) to build the native kernels")
    info = probe_torch()
    if info is None:
        raise RuntimeError("torch is not importable from this interpreter "
                           f"({sys.executable}); install torch first, then run `make native`")
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    args = [cmake, "-S", str(ROOT), "-B", str(BUILD_DIR), "-DCMAKE_BUILD_TYPE=Release",
            f"-DCMAKE_PREFIX_PATH={info['prefix']}"]
    # A CUDA build of torch makes find_package(Torch) look for the CUDA toolkit; without nvcc
    # it aborts. This library is CPU-only, so link torch_cpu/c10 directly in that case.
    if info.get("cuda") and shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"):
        args += ["-DLADDER_FIND_TORCH=OFF", f"-DLADDER_TORCH_ROOT={info['root']}",
                 f"-DLADDER_CXX11_ABI={info['abi']}"]
    else:
        args += ["-DLADDER_FIND_TORCH=ON"]
    if shutil.which("ninja"):
        args += ["-G", "Ninja"] if not (BUILD_DIR / "CMakeCache.txt").exists() else []
    run = lambda cmd: subprocess.run(cmd, check=True, cwd=str(ROOT),  # noqa: E731
                                     stdout=None if verbose else subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
    try:
        run(args)
        run([cmake, "--build", str(BUILD_DIR), "-j", str(jobs or os.cpu_count() or 2)])
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"native build failed: {' '.join(exc.cmd)}\n{exc.stdout or ''}")
    lib = NATIVE_DIR / "libladder_kernels.so"
    if not lib.exists():
        raise RuntimeError(f"native build finished but {lib} is missing")
    return lib


class CMakeBuild(build_ext):
    """build_ext that runs CMake and always writes into kernels/_native (in place).

    Nothing is copied into build_lib: the project is used from the repository root, and
    placing kernels/_native/... into a wheel would create a top-level `kernels` package in
    site-packages (the collision explained at the top of this file).
    """

    def run(self):
        # `python setup.py build_ext --inplace` (what `make native` runs) fails loudly; pip
        # installs (editable or not) only warn, so a fresh machine can install the deps first.
        editable = bool(getattr(self, "editable_mode", False))
        strict = (os.environ.get("LADDER_NATIVE_REQUIRED", "0") == "1"
                  or (self.inplace and not editable))
        try:
            lib = build_native(verbose=bool(self.verbose > 1))
            print(f"[ladder] native kernels built: {lib}")
        except RuntimeError as exc:
            if strict:
                raise
            print(f"[ladder] WARNING: native kernels not built: {exc}\n"
                  "[ladder] the PyTorch reference will be used on CPU; run `make native` "
                  "once torch is installed.", file=sys.stderr)

    def get_outputs(self):
        return []

    def get_output_mapping(self):  # setuptools editable installs
        return {}


class NativeDistribution(Distribution):
    """A platform distribution (it builds a native library) with no setuptools Extension."""

    def has_ext_modules(self):
        return True


setup(
    name="ladder",
    version="0.1.0",
    description="Performance-first trainer for GPT ladders (runs from the repository root)",
    python_requires=">=3.10",
    # No top-level packages on purpose: see the module docstring (`kernels` name collision).
    packages=[],
    py_modules=[],
    install_requires=read_requirements(),
    # No setuptools Extension: NativeDistribution makes setuptools run build_ext anyway, and
    # CMakeBuild builds the real thing with CMake.
    distclass=NativeDistribution,
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
