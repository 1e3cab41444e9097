"""Fused optimizer-step kernels: AdamW + inheritance penalty + ARS damping + online Fisher.

Public API
----------
fused_adamw_step(p, g, m, v, *, lr, beta1, beta2, eps, weight_decay, step, anchor=None,
                 kappa=None, extra_grad=None, damping=1.0, fisher=None, fisher_scale=1.0,
                 penalty_out=None, found_inf=None, decoupled=False)
fused_adamw_multi(params, grads, exp_avgs, exp_avg_sqs, *, ..., anchors=None, kappas=None,
                  extra_grads=None, damping=1.0, fishers=None, fisher_scale=1.0, penalty_out=None,
                  found_inf=None, decoupled=False)
available_backends() -> list[str]
backend_for(device) -> str
last_backend() -> str | None        (the backend used by the most recent call)

Semantics: see kernels/reference.py (the ground truth). Three backends, dispatched by device:
``reference`` (PyTorch), ``native`` (C++/OpenMP CPU op, built with ``make native``) and
``triton`` (CUDA; also runs under TRITON_INTERPRET=1). ``LADDER_KERNEL=reference|native|triton``
forces one; forcing one that cannot run is an error. Without a forced backend, a device whose
fast backend is missing (the CPU without the native library, CUDA without Triton) runs the
reference and warns once.

Name collision: the PyPI distribution ``kernels`` (Hugging Face's kernel hub) also provides a
top-level package ``kernels``. This project runs from the repository root and is *not* installed
into site-packages (setup.py has packages=[]), so inside this project ``import kernels`` resolves
to this directory first. If the other distribution is installed we warn once (see
``_check_name_collision``).
"""
from __future__ import annotations

import importlib.metadata as _md
import numbers
import os
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from . import reference

__all__ = [
    "fused_adamw_step", "fused_adamw_multi", "available_backends", "backend_for",
    "last_backend", "BACKENDS",
]

BACKENDS = ("reference", "native", "triton")
_HERE = Path(__file__).resolve().parent
_last_backend: Optional[str] = None
_warned_native_missing = False
_warned_triton_missing = False
_collision_warned = False


# --------------------------------------------------------------------------------------------
# Name collision with the PyPI distribution "kernels"
# --------------------------------------------------------------------------------------------
def _check_name_collision(metadata=_md) -> Optional[str]:
    """Warn once if a *different* distribution named ``kernels`` is installed.

    ``metadata`` is injectable for tests (anything with ``distribution(name)``). Returns the
    warning text (or None when there is nothing to warn about).
    """
    global _collision_warned
    try:
        dist = metadata.distribution("kernels")
    except Exception:  # PackageNotFoundError or a broken metadata dir: nothing to report
        return None
    try:
        other = Path(dist.locate_file("kernels")).resolve()
    except Exception:
        other = Path(str(getattr(dist, "_path", "?")))
    if other == _HERE:
        return None  # that distribution *is* us (should not happen: we install no packages)
    msg = (
        f"A different distribution named 'kernels' (version {dist.version}) is installed at "
        f"{other}. Inside this project `import kernels` means the project's own package at "
        f"{_HERE} (the repository root comes first on sys.path); the installed one is shadowed "
        "here. Import it from outside the repository if you need it."
    )
    if not _collision_warned:
        _collision_warned = True
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    return msg


_check_name_collision()


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------
def _native_ok() -> bool:
    from . import native
    return native.is_available()


def _triton_ok(device_type: str) -> bool:
    from . import triton_adamw
    if not triton_adamw.is_importable():
        return False
    if device_type == "cuda":
        return True
    return device_type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") == "1"


def available_backends() -> list:
    """Backends that can run on at least one device of this machine, in preference order."""
    out = ["reference"]
    if _native_ok():
        out.append("native")
    if _triton_ok("cuda" if torch.cuda.is_available() else "cpu"):
        out.append("triton")
    return out


def _warn_once_triton_missing() -> None:
    """CUDA without an importable Triton: the step still runs, on the slower reference (like the
    CPU without the native library), and says so once."""
    global _warned_triton_missing
    if _warned_triton_missing:
        return
    _warned_triton_missing = True
    from . import triton_adamw
    warnings.warn("kernels: Triton is not importable here "
                  f"({triton_adamw.import_error()}); the CUDA optimizer step uses the slower "
                  "PyTorch reference. Install it with `pip install triton` (a CUDA build of "
                  "torch normally brings its own).", RuntimeWarning, stacklevel=4)


def backend_for(device) -> str:
    """Backend that a call with tensors on ``device`` would use (honours LADDER_KERNEL)."""
    global _warned_native_missing
    dev = torch.device(device)
    forced = os.environ.get("LADDER_KERNEL", "").strip().lower()
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"LADDER_KERNEL={forced!r}: expected one of {BACKENDS}")
        if forced == "native":
            if dev.type != "cpu":
                raise RuntimeError(f"LADDER_KERNEL=native but the tensors are on {dev}: the "
                                   "native backend is CPU only")
            if not _native_ok():
                from . import native
                raise RuntimeError("LADDER_KERNEL=native but the native library is not "
                                   f"available ({native.load_error()}); build it with "
                                   "`make native`")
        if forced == "triton" and not _triton_ok(dev.type):
            raise RuntimeError(f"LADDER_KERNEL=triton but Triton cannot run on {dev} here "
                               "(needs an importable triton and CUDA, or TRITON_INTERPRET=1 "
                               "for CPU tensors)")
        return forced
    if dev.type == "cuda":
        if _triton_ok("cuda"):
            return "triton"
        _warn_once_triton_missing()
        return "reference"
    if dev.type == "cpu":
        if _native_ok():
            return "native"
        if not _warned_native_missing:
            _warned_native_missing = True
            from . import native
            warnings.warn("kernels: the native CPU optimizer step is not built "
                          f"({native.load_error()}); using the slower PyTorch reference. "
                          "Build it with `make native` (or `python setup.py build_ext "
                          "--inplace`).", RuntimeWarning, stacklevel=3)
        return "reference"
    return "reference"


def last_backend() -> Optional[str]:
    """Name of the backend used by the most recent fused_adamw_* call (for run metadata)."""
    return _last_backend


def _bump_versions(*groups) -> None:
    """Native/Triton write through raw pointers: bump autograd version counters like an
    in-place torch op would (so a tensor saved for backward is detected as modified)."""
    ts = [t for grp in groups if grp is not None for t in grp if t is not None]
    if ts:
        torch.autograd.graph.increment_version(ts)


def _impl(backend: str):
    if backend == "reference":
        return reference
    if backend == "native":
        from . import native
        return native
    if backend == "triton":
        from . import triton_adamw
        return triton_adamw
    raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}")


# --------------------------------------------------------------------------------------------
# Validation (before any compute)
# --------------------------------------------------------------------------------------------
def _desc(t: Tensor) -> str:
    return f"shape={tuple(t.shape)}, dtype={t.dtype}, device={t.device}"


def _check_tensor(name: str, t, ref: Optional[Tensor], dtypes) -> None:
    # fast path (the common, valid case): a handful of attribute reads
    if (isinstance(t, Tensor) and t.dtype in dtypes and t.layout is torch.strided
            and (ref is None or (t.shape == ref.shape and t.device == ref.device))
            and t.is_contiguous()):
        return
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name}: dtype {t.dtype} not supported, expected one of "
                        f"{[str(d) for d in dtypes]} ({_desc(t)})")
    if ref is not None:
        if t.shape != ref.shape:
            raise ValueError(f"{name}: shape {tuple(t.shape)} does not match p's shape "
                             f"{tuple(ref.shape)}")
        if t.device != ref.device:
            raise ValueError(f"{name}: device {t.device} does not match p's device {ref.device}")
    if t.layout != torch.strided:
        raise ValueError(f"{name}: must be a dense strided tensor, got layout {t.layout}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: must be contiguous, got strides {t.stride()} ({_desc(t)})")


_F32 = (torch.float32,)
_F32_BF16 = (torch.float32, torch.bfloat16)


def _check_scalars(lr, beta1, beta2, eps, weight_decay, step, damping, fisher_scale, device):
    for name, val in (("lr", lr), ("beta1", beta1), ("beta2", beta2), ("eps", eps),
                      ("weight_decay", weight_decay), ("fisher_scale", fisher_scale)):
        if isinstance(val, bool) or not isinstance(val, numbers.Real):
            raise TypeError(f"{name}: expected a python float, got {type(val).__name__} "
                            f"({val!r})")
    if not (0.0 <= beta1 < 1.0):
        raise ValueError(f"beta1: expected 0 <= beta1 < 1, got {beta1}")
    if not (0.0 <= beta2 < 1.0):
        raise ValueError(f"beta2: expected 0 <= beta2 < 1, got {beta2}")
    if eps < 0:
        raise ValueError(f"eps: expected eps >= 0, got {eps}")
    if lr < 0:
        raise ValueError(f"lr: expected lr >= 0, got {lr}")
    if isinstance(step, Tensor):
        if step.dim() != 0:
            raise ValueError(f"step: a tensor step must be 0-dim, got shape {tuple(step.shape)}")
        if step.device != device:
            raise ValueError(f"step: tensor on {step.device}, expected the parameters' device "
                             f"{device}")
        if step.dtype == torch.bool or step.is_complex():
            raise TypeError(f"step: tensor dtype {step.dtype} not supported (integer or float)")
        if step.device.type == "cpu" and float(step) < 1:  # no host sync on accelerators
            raise ValueError(f"step: expected step >= 1 (already incremented), got {float(step)}")
    elif isinstance(step, bool) or not isinstance(step, numbers.Real):
        raise TypeError(f"step: expected an int >= 1 or a 0-dim tensor, got "
                        f"{type(step).__name__} ({step!r})")
    elif step < 1:
        raise ValueError(f"step: expected step >= 1 (already incremented), got {step}")
    if isinstance(damping, Tensor):
        if damping.dim() != 0 or damping.dtype != torch.float32:
            raise ValueError(f"damping: a tensor damping must be a 0-dim float32 tensor, got "
                             f"{_desc(damping)}")
        if damping.device != device:
            raise ValueError(f"damping: tensor on {damping.device}, expected the parameters' "
                             f"device {device}")
    elif isinstance(damping, bool) or not isinstance(damping, numbers.Real):
        raise TypeError(f"damping: expected a float or a 0-dim float32 tensor, got "
                        f"{type(damping).__name__} ({damping!r})")


def _check_one(sfx, p, g, m, v, anchor, kappa, extra_grad, fisher):
    n = lambda base: f"{base}{sfx}"  # noqa: E731
    _check_tensor(n("p"), p, None, _F32)
    _check_tensor(n("g"), g, p, _F32_BF16)
    _check_tensor(n("m"), m, p, _F32)
    _check_tensor(n("v"), v, p, _F32)
    if (anchor is None) != (kappa is None):
        given, missing = ("anchor", "kappa") if kappa is None else ("kappa", "anchor")
        raise ValueError(f"{given}{sfx} was given without {missing}{sfx}: anchor and kappa "
                         "must be given together")
    if anchor is not None:
        _check_tensor(n("anchor"), anchor, p, _F32)
        _check_tensor(n("kappa"), kappa, p, _F32_BF16)
    if extra_grad is not None:
        _check_tensor(n("extra_grad"), extra_grad, p, _F32)
    if fisher is not None:
        _check_tensor(n("fisher"), fisher, p, _F32)
    # in-place outputs must not alias each other
    outs = [t for t in (p, m, v, fisher) if t is not None and t.numel() > 0]
    ptrs = [t.data_ptr() for t in outs]
    if len(set(ptrs)) != len(ptrs):
        raise ValueError(f"p{sfx}, m{sfx}, v{sfx} (and fisher{sfx}) must be distinct tensors")


def _check_scalar_tensor(name, t, device, what):
    """penalty_out and found_inf: optional 1-element float32 tensors on the parameters' device."""
    if t is None:
        return
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor ({what}), got {type(t).__name__}")
    if t.dtype != torch.float32 or t.numel() != 1:
        raise ValueError(f"{name}: expected a 1-element float32 tensor ({what}), got {_desc(t)}")
    if t.device != device:
        raise ValueError(f"{name}: device {t.device} does not match the parameters' device {device}")


def _check_decoupled(decoupled):
    if not isinstance(decoupled, bool):
        raise TypeError(f"decoupled: expected a bool, got {type(decoupled).__name__} ({decoupled!r})")


def _check_penalty_out(penalty_out, device):
    _check_scalar_tensor("penalty_out", penalty_out, device, "the penalty accumulator")


def _check_found_inf(found_inf, device):
    _check_scalar_tensor("found_inf", found_inf, device, "nonzero = skip the step")


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------
def fused_adamw_step(p, g, m, v, *, lr, beta1, beta2, eps, weight_decay, step,
                     anchor=None, kappa=None, extra_grad=None, damping=1.0,
                     fisher=None, fisher_scale=1.0, penalty_out=None, found_inf=None,
                     decoupled=False, backend=None) -> None:
    """One fused inherited-AdamW step on one tensor, in place (see kernels/reference.py).
    ``found_inf`` (0-dim float32 device tensor): nonzero makes the step a no-op, decided on
    the device. ``decoupled``: the anchor pull after the update instead of kappa*(p - A) in the
    gradient (kernels/reference.py).

    ``backend`` (not part of the stable API) bypasses dispatch, for tests and benchmarks.
    """
    global _last_backend
    _check_one("", p, g, m, v, anchor, kappa, extra_grad, fisher)
    _check_decoupled(decoupled)
    _check_scalars(lr, beta1, beta2, eps, weight_decay, step, damping, fisher_scale, p.device)
    _check_penalty_out(penalty_out, p.device)
    _check_found_inf(found_inf, p.device)
    be = backend or backend_for(p.device)
    impl = _impl(be)
    with torch.no_grad():
        impl.fused_adamw_step(p, g, m, v, lr=float(lr), beta1=float(beta1), beta2=float(beta2),
                              eps=float(eps), weight_decay=float(weight_decay), step=step,
                              anchor=anchor, kappa=kappa, extra_grad=extra_grad,
                              damping=damping, fisher=fisher, fisher_scale=float(fisher_scale),
                              penalty_out=penalty_out, found_inf=found_inf, decoupled=decoupled)
    if be != "reference":
        _bump_versions((p, m, v, fisher, penalty_out))
    _last_backend = be


def _opt_list(name, seq, n):
    if seq is None:
        return None
    seq = list(seq)
    if len(seq) != n:
        raise ValueError(f"{name}: has {len(seq)} entries, expected {n} (one per parameter)")
    return None if all(t is None for t in seq) else seq


def fused_adamw_multi(params, grads, exp_avgs, exp_avg_sqs, *, lr, beta1, beta2, eps,
                      weight_decay, step, anchors=None, kappas=None, extra_grads=None,
                      damping=1.0, fishers=None, fisher_scale=1.0, penalty_out=None,
                      found_inf=None, decoupled=False, backend=None) -> None:
    """Fused inherited-AdamW step over a parameter group (one native call / few launches).

    Optional lists may be None or contain None per tensor. Works on plain local tensors
    (e.g. FSDP2 local shards: pass ``p.to_local()``-style tensors).
    """
    global _last_backend
    params, grads, exp_avgs, exp_avg_sqs = map(list, (params, grads, exp_avgs, exp_avg_sqs))
    n = len(params)
    for name, seq in (("grads", grads), ("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)):
        if len(seq) != n:
            raise ValueError(f"{name}: has {len(seq)} entries, expected {n} (one per parameter)")
    anchors = _opt_list("anchors", anchors, n)
    kappas = _opt_list("kappas", kappas, n)
    extra_grads = _opt_list("extra_grads", extra_grads, n)
    fishers = _opt_list("fishers", fishers, n)
    if n == 0:
        return
    at = lambda s, i: None if s is None else s[i]  # noqa: E731
    dev = params[0].device if isinstance(params[0], Tensor) else None
    for i in range(n):
        _check_one(f"[{i}]", params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], at(anchors, i),
                   at(kappas, i), at(extra_grads, i), at(fishers, i))
        if params[i].device != dev:
            raise ValueError(f"p[{i}]: device {params[i].device} differs from p[0]'s {dev}: "
                             "one call per device")
    _check_scalars(lr, beta1, beta2, eps, weight_decay, step, damping, fisher_scale, dev)
    _check_decoupled(decoupled)
    _check_penalty_out(penalty_out, dev)
    _check_found_inf(found_inf, dev)
    be = backend or backend_for(dev)
    impl = _impl(be)
    with torch.no_grad():
        impl.fused_adamw_multi(params, grads, exp_avgs, exp_avg_sqs, lr=float(lr),
                               beta1=float(beta1), beta2=float(beta2), eps=float(eps),
                               weight_decay=float(weight_decay), step=step, anchors=anchors,
                               kappas=kappas, extra_grads=extra_grads, damping=damping,
                               fishers=fishers, fisher_scale=float(fisher_scale),
                               penalty_out=penalty_out, found_inf=found_inf, decoupled=decoupled)
    if be != "reference":
        _bump_versions(params, exp_avgs, exp_avg_sqs, fishers, (penalty_out,))
    _last_backend = be
