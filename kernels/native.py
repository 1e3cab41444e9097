"""Native (C++/OpenMP) CPU backend: torch.ops.ladder_kernels.fused_adamw_multi_.

The library is built by CMake (CMakeLists.txt at the repository root) into
kernels/_native/libladder_kernels.so: run `make native` (or `python setup.py build_ext
--inplace`). Arguments are validated in kernels/__init__.py before they get here.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

LIB_DIR = Path(__file__).resolve().parent / "_native"
LIB_NAME = "libladder_kernels.so"

_lock = threading.Lock()
_loaded: Optional[bool] = None
_error: Optional[str] = None


def library_path() -> Path:
    return LIB_DIR / LIB_NAME


def _load() -> bool:
    global _loaded, _error
    if _loaded is not None:
        return _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        path = library_path()
        if not path.exists():
            _error = f"{path} not found"
            _loaded = False
            return False
        try:
            torch.ops.load_library(str(path))
            torch.ops.ladder_kernels.fused_adamw_multi_  # noqa: B018 (resolve the op)
        except Exception as exc:  # wrong torch ABI, missing symbols, ...
            _error = f"loading {path} failed: {type(exc).__name__}: {exc}"
            _loaded = False
            return False
        _loaded = True
        return True


def is_available() -> bool:
    return _load()


def load_error() -> Optional[str]:
    _load()
    return _error


def simd_path() -> Optional[str]:
    """'avx2+fma' or 'baseline': the code path the library chose for this CPU."""
    return str(torch.ops.ladder_kernels.simd_path()) if _load() else None


def _scalar(x) -> float:
    return float(x.item()) if isinstance(x, Tensor) else float(x)  # CPU tensors: no real sync


def _opt(seq, n):
    return [] if seq is None else list(seq)


def fused_adamw_multi(params, grads, exp_avgs, exp_avg_sqs, *, lr, beta1, beta2, eps,
                      weight_decay, step, anchors=None, kappas=None, extra_grads=None,
                      damping=1.0, fishers=None, fisher_scale=1.0, penalty_out=None,
                      found_inf=None, decoupled=False) -> None:
    if not _load():
        raise RuntimeError(f"native kernels unavailable ({_error}); build with `make native`")
    if found_inf is not None and _scalar(found_inf) != 0.0:
        return  # a skipped step changes nothing (CPU tensor: reading it is no device sync)
    n = len(params)
    if anchors is None and kappas is None:
        anchors = kappas = []
    elif anchors is None or kappas is None:  # entries all None on one side
        anchors = list(anchors) if anchors is not None else [None] * n
        kappas = list(kappas) if kappas is not None else [None] * n
    torch.ops.ladder_kernels.fused_adamw_multi_(
        list(params), list(grads), list(exp_avgs), list(exp_avg_sqs),
        list(anchors), list(kappas), _opt(extra_grads, n), _opt(fishers, n), penalty_out,
        float(lr), float(beta1), float(beta2), float(eps), float(weight_decay),
        _scalar(step), _scalar(damping), _scalar(fisher_scale), bool(decoupled))


def fused_adamw_step(p, g, m, v, *, lr, beta1, beta2, eps, weight_decay, step, anchor=None,
                     kappa=None, extra_grad=None, damping=1.0, fisher=None, fisher_scale=1.0,
                     penalty_out=None, found_inf=None, decoupled=False) -> None:
    fused_adamw_multi(
        [p], [g], [m], [v], lr=lr, beta1=beta1, beta2=beta2, eps=eps,
        weight_decay=weight_decay, step=step,
        anchors=None if anchor is None else [anchor], kappas=None if kappa is None else [kappa],
        extra_grads=None if extra_grad is None else [extra_grad], damping=damping,
        fishers=None if fisher is None else [fisher], fisher_scale=fisher_scale,
        penalty_out=penalty_out, found_inf=found_inf, decoupled=decoupled)
