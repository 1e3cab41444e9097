"""Triton backend (CUDA): one fused kernel per tensor for the inherited AdamW step.

Semantics: kernels/reference.py. Every optional term is a tl.constexpr flag, so each option
combination compiles to its own branch-free kernel. ``step`` and ``damping`` may be 0-dim device
tensors: the kernel loads them itself, so a CUDA step needs no host sync (bias corrections are
then computed in fp32 on the device, as torch's capturable AdamW does).

Also runs on CPU tensors under TRITON_INTERPRET=1 (tests). Interpreter rules followed here:
bf16 is cast to fp32 explicitly after each load, no autotune, no libdevice, python float
arguments are used only in arithmetic. TRITON_INTERPRET must be set before the kernel is first
built (``_kernel()`` builds it lazily, on first use).
"""
from __future__ import annotations

import math
import os
from typing import Optional

import torch
from torch import Tensor

BLOCK = 1024
NUM_WARPS = 4

_kernel_cache = None
_import_error: Optional[str] = None


def is_importable() -> bool:
    global _import_error
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
        return True
    except Exception as exc:  # pragma: no cover - depends on the environment
        _import_error = f"{type(exc).__name__}: {exc}"
        return False


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _kernel():
    global _kernel_cache
    if _kernel_cache is not None:
        return _kernel_cache
    import triton
    import triton.language as tl

    @triton.jit
    def _fused_adamw_kernel(
        p_ptr, g_ptr, m_ptr, v_ptr, a_ptr, k_ptr, e_ptr, f_ptr, pen_ptr, step_ptr, damp_ptr,
        n_elements, decay, beta1, beta2, eps, lr, step_size, inv_bc2_sqrt, log_beta1,
        log_beta2, damping, fisher_scale,
        HAS_ANCHOR: tl.constexpr, HAS_EXTRA: tl.constexpr, HAS_FISHER: tl.constexpr,
        HAS_PEN: tl.constexpr, STEP_TENSOR: tl.constexpr, DAMP_TENSOR: tl.constexpr,
        BLOCK_SIZE: tl.constexpr,
    ):
        pid = tl.program_id(0).to(tl.int64)
        offs = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = offs < n_elements
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_FISHER:
            f = tl.load(f_ptr + offs, mask=mask, other=0.0)
            tl.store(f_ptr + offs, f + fisher_scale * (g * g), mask=mask)
        p = tl.load(p_ptr + offs, mask=mask, other=0.0)
        gp = g
        if HAS_ANCHOR:
            a = tl.load(a_ptr + offs, mask=mask, other=0.0)
            k = tl.load(k_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            d = p - a
            kd = k * d
            gp = gp + kd
            if HAS_PEN:
                tl.atomic_add(pen_ptr, 0.5 * tl.sum(kd * d, axis=0))
        if HAS_EXTRA:
            gp = gp + tl.load(e_ptr + offs, mask=mask, other=0.0)
        if DAMP_TENSOR:
            gp = gp * tl.load(damp_ptr).to(tl.float32)
        else:
            gp = gp * damping
        if STEP_TENSOR:
            s = tl.load(step_ptr).to(tl.float32)
            bc1 = 1.0 - tl.exp(s * log_beta1)
            bc2 = 1.0 - tl.exp(s * log_beta2)
            ss = lr / bc1
            ib2 = 1.0 / tl.sqrt(bc2)
        else:
            ss = step_size
            ib2 = inv_bc2_sqrt
        m = tl.load(m_ptr + offs, mask=mask, other=0.0)
        v = tl.load(v_ptr + offs, mask=mask, other=0.0)
        m = m + (1.0 - beta1) * (gp - m)
        v = beta2 * v + (1.0 - beta2) * (gp * gp)
        p = p * decay - ss * m / (tl.sqrt(v) * ib2 + eps)
        tl.store(m_ptr + offs, m, mask=mask)
        tl.store(v_ptr + offs, v, mask=mask)
        tl.store(p_ptr + offs, p, mask=mask)

    _kernel_cache = _fused_adamw_kernel
    return _kernel_cache


def _check_device(p: Tensor) -> None:
    if p.device.type != "cuda" and not interpreted():
        raise RuntimeError(f"triton backend: tensors on {p.device} need CUDA, or "
                           "TRITON_INTERPRET=1 for CPU tensors")


def fused_adamw_step(p, g, m, v, *, lr, beta1, beta2, eps, weight_decay, step, anchor=None,
                     kappa=None, extra_grad=None, damping=1.0, fisher=None, fisher_scale=1.0,
                     penalty_out=None) -> None:
    n = p.numel()
    if n == 0:
        return
    _check_device(p)
    step_tensor = isinstance(step, Tensor)
    damp_tensor = isinstance(damping, Tensor)
    if step_tensor:
        step_size, inv_bc2 = 0.0, 0.0
    else:
        step_size = lr / (1.0 - beta1 ** step)
        inv_bc2 = 1.0 / math.sqrt(1.0 - beta2 ** step)
    has_anchor = anchor is not None
    has_pen = has_anchor and penalty_out is not None
    dummy = p
    grid = (triton_cdiv(n, BLOCK),)
    _kernel()[grid](
        p, g, m, v,
        anchor if has_anchor else dummy, kappa if has_anchor else dummy,
        extra_grad if extra_grad is not None else dummy,
        fisher if fisher is not None else dummy,
        penalty_out if has_pen else dummy,
        step if step_tensor else dummy, damping if damp_tensor else dummy,
        n, float(1.0 - lr * weight_decay), float(beta1), float(beta2), float(eps), float(lr),
        float(step_size), float(inv_bc2), float(math.log(beta1)) if beta1 > 0 else -1e30,
        float(math.log(beta2)) if beta2 > 0 else -1e30,
        1.0 if damp_tensor else float(damping), float(fisher_scale),
        HAS_ANCHOR=has_anchor, HAS_EXTRA=extra_grad is not None, HAS_FISHER=fisher is not None,
        HAS_PEN=has_pen, STEP_TENSOR=step_tensor, DAMP_TENSOR=damp_tensor, BLOCK_SIZE=BLOCK,
        num_warps=NUM_WARPS,
    )


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _at(seq, i):
    return None if seq is None else seq[i]


def fused_adamw_multi(params, grads, exp_avgs, exp_avg_sqs, *, lr, beta1, beta2, eps,
                      weight_decay, step, anchors=None, kappas=None, extra_grads=None,
                      damping=1.0, fishers=None, fisher_scale=1.0, penalty_out=None) -> None:
    # One launch per tensor (no host sync between them). A pointer-table multi-tensor kernel
    # would cut launches for groups of many small tensors; see the report in the repo history.
    for i in range(len(params)):
        fused_adamw_step(
            params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], lr=lr, beta1=beta1, beta2=beta2,
            eps=eps, weight_decay=weight_decay, step=step, anchor=_at(anchors, i),
            kappa=_at(kappas, i), extra_grad=_at(extra_grads, i), damping=damping,
            fisher=_at(fishers, i), fisher_scale=fisher_scale, penalty_out=penalty_out)
