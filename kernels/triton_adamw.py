"""Triton backend (CUDA): fused kernels for the inherited AdamW step.

fused_adamw_step: one launch of a single fused kernel. fused_adamw_multi: one launch of a
multi-tensor kernel per kind of tensor in the group (address table on the device).

Semantics: kernels/reference.py (the decoupled penalty form too: DECOUPLED). Every optional term is a tl.constexpr flag, so each option
combination compiles to its own branch-free kernel. ``step``, ``damping`` and ``found_inf`` may be
0-dim device tensors: the kernel loads them itself, so a CUDA step needs no host sync (bias corrections are
then computed in fp32 on the device, as torch's capturable AdamW does).

Also runs on CPU tensors under TRITON_INTERPRET=1 (tests). Interpreter rules followed here:
bf16 is cast to fp32 explicitly after each load, no autotune, no libdevice, python float
arguments are used only in arithmetic. TRITON_INTERPRET must be set before the kernel is first
built (``_kernel()`` builds it lazily, on first use).
"""
from __future__ import annotations

import itertools
import math
import os
from collections import OrderedDict
from typing import Optional

import torch
from torch import Tensor

BLOCK = 1024
NUM_WARPS = 4

try:
    import triton
    import triton.language as tl
except Exception as _exc:  # pragma: no cover - depends on the environment
    triton = tl = None
    _import_error: Optional[str] = f"{type(_exc).__name__}: {_exc}"
else:
    _import_error = None

_kernel_cache = None


def is_importable() -> bool:
    return triton is not None


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _kernel():
    global _kernel_cache
    if _kernel_cache is not None:
        return _kernel_cache
    # Names the kernels use must be module globals (not closure variables): the interpreter
    # re-executes kernel source against fn.__globals__, and so does the compiler's name lookup.
    @triton.jit
    def _adamw_body_fn(
        p_ptr, g_ptr, m_ptr, v_ptr, a_ptr, k_ptr, e_ptr, f_ptr, pen_ptr, step_ptr, damp_ptr,
        skip_ptr, offs, mask, decay, beta1, beta2, eps, lr, step_size, inv_bc2_sqrt, log_beta1,
        log_beta2, damping, fisher_scale,
        HAS_ANCHOR: tl.constexpr, HAS_EXTRA: tl.constexpr, HAS_FISHER: tl.constexpr,
        HAS_PEN: tl.constexpr, STEP_TENSOR: tl.constexpr, DAMP_TENSOR: tl.constexpr,
        HAS_SKIP: tl.constexpr, DECOUPLED: tl.constexpr,
    ):
        if HAS_SKIP:
            # found_inf != 0: the whole step is a no-op, decided on the device (no host sync);
            # masking every load and store also makes a skipped step move no bytes
            # (broadcast to the block before comparing: the interpreter cannot AND a scalar)
            found = tl.zeros_like(offs).to(tl.float32) + tl.load(skip_ptr)
            mask = mask & (found == 0.0)
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
            if not DECOUPLED:
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
        if HAS_ANCHOR:
            if DECOUPLED:  # the anchor pull after the update, never past the anchor
                p = p - tl.minimum(lr * k, 1.0) * (p - a)
        tl.store(m_ptr + offs, m, mask=mask)
        tl.store(v_ptr + offs, v, mask=mask)
        tl.store(p_ptr + offs, p, mask=mask)

    globals()["_adamw_body"] = _adamw_body_fn

    @triton.jit
    def _adamw_block_fn(
        p_ptr, g_ptr, m_ptr, v_ptr, a_ptr, k_ptr, e_ptr, f_ptr, pen_ptr, step_ptr, damp_ptr,
        skip_ptr, start, n, decay, beta1, beta2, eps, lr, step_size, inv_bc2_sqrt, log_beta1,
        log_beta2, damping, fisher_scale,
        HAS_ANCHOR: tl.constexpr, HAS_EXTRA: tl.constexpr, HAS_FISHER: tl.constexpr,
        HAS_PEN: tl.constexpr, STEP_TENSOR: tl.constexpr, DAMP_TENSOR: tl.constexpr,
        HAS_SKIP: tl.constexpr, DECOUPLED: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    ):
        # A full block gets a mask that is one constant for the whole block: Triton then
        # knows every lane of a 4-element group agrees and emits 16-byte ld/st.global.v4
        # (given aligned pointers). `offs < n` with an n of unknown divisibility splits the
        # block into 4-byte accesses, so only the last, partial block of a tensor uses it.
        # The body is called in each branch (not after it): a mask merged from two branches
        # loses the constancy fact.
        offs = start + tl.arange(0, BLOCK_SIZE)
        if start + BLOCK_SIZE <= n:
            _adamw_body(p_ptr, g_ptr, m_ptr, v_ptr, a_ptr, k_ptr, e_ptr, f_ptr, pen_ptr, step_ptr,
                        damp_ptr, skip_ptr, offs, tl.full([BLOCK_SIZE], 1, tl.int1), decay, beta1,
                        beta2, eps, lr, step_size, inv_bc2_sqrt, log_beta1, log_beta2, damping,
                        fisher_scale, HAS_ANCHOR, HAS_EXTRA, HAS_FISHER, HAS_PEN, STEP_TENSOR,
                        DAMP_TENSOR, HAS_SKIP, DECOUPLED)
        else:
            _adamw_body(p_ptr, g_ptr, m_ptr, v_ptr, a_ptr, k_ptr, e_ptr, f_ptr, pen_ptr, step_ptr,
                        damp_ptr, skip_ptr, offs, offs < n, decay, beta1, beta2, eps, lr,
                        step_size, inv_bc2_sqrt, log_beta1, log_beta2, damping, fisher_scale,
                        HAS_ANCHOR, HAS_EXTRA, HAS_FISHER, HAS_PEN, STEP_TENSOR, DAMP_TENSOR,
                        HAS_SKIP, DECOUPLED)

    globals()["_adamw_block"] = _adamw_block_fn

    @triton.jit
    def _table_ptr_fn(table_ptr, j, n_tensors, t, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
        # A pointer loaded from the int64 address table carries no alignment facts, so without
        # the hint every access is a 4-byte ld/st.global.b32 (PTX checked on CPU, see
        # tests/kernels/test_triton_ptx.py). ALIGNED is set by the host only when every address in the
        # table is a multiple of 16 bytes, so the hint is a checked fact, not a hope.
        ptr = tl.load(table_ptr + j * n_tensors + t).to(tl.pointer_type(DTYPE), bitcast=True)
        if ALIGNED:
            ptr = tl.multiple_of(ptr, 16)
        return ptr

    globals()["_table_ptr"] = _table_ptr_fn

    @triton.jit
    def _fused_adamw_kernel(
        p_ptr, g_ptr, m_ptr, v_ptr, a_ptr, k_ptr, e_ptr, f_ptr, pen_ptr, step_ptr, damp_ptr,
        skip_ptr, n_elements, decay, beta1, beta2, eps, lr, step_size, inv_bc2_sqrt, log_beta1,
        log_beta2, damping, fisher_scale,
        HAS_ANCHOR: tl.constexpr, HAS_EXTRA: tl.constexpr, HAS_FISHER: tl.constexpr,
        HAS_PEN: tl.constexpr, STEP_TENSOR: tl.constexpr, DAMP_TENSOR: tl.constexpr,
        HAS_SKIP: tl.constexpr, DECOUPLED: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    ):
        start = tl.program_id(0).to(tl.int64) * BLOCK_SIZE
        _adamw_block(p_ptr, g_ptr, m_ptr, v_ptr, a_ptr, k_ptr, e_ptr, f_ptr, pen_ptr, step_ptr,
                     damp_ptr, skip_ptr, start, n_elements, decay, beta1, beta2, eps, lr,
                     step_size, inv_bc2_sqrt, log_beta1, log_beta2, damping, fisher_scale,
                     HAS_ANCHOR, HAS_EXTRA, HAS_FISHER, HAS_PEN, STEP_TENSOR, DAMP_TENSOR,
                     HAS_SKIP, DECOUPLED, BLOCK_SIZE)

    @triton.jit
    def _fused_adamw_multi_kernel(
        table_ptr, n_tensors, numel_ptr, blk_tensor_ptr, blk_start_ptr, pen_ptr, step_ptr,
        damp_ptr, skip_ptr, decay, beta1, beta2, eps, lr, step_size, inv_bc2_sqrt, log_beta1, log_beta2,
        damping, fisher_scale,
        G_BF16: tl.constexpr, K_BF16: tl.constexpr, ALIGNED: tl.constexpr,
        HAS_ANCHOR: tl.constexpr, HAS_EXTRA: tl.constexpr, HAS_FISHER: tl.constexpr,
        HAS_PEN: tl.constexpr, STEP_TENSOR: tl.constexpr, DAMP_TENSOR: tl.constexpr,
        HAS_SKIP: tl.constexpr, DECOUPLED: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    ):
        # One program per BLOCK_SIZE elements of one tensor; table[j, t] holds the address of
        # operand j (p, g, m, v, anchor, kappa, extra, fisher) of tensor t.
        pid = tl.program_id(0)
        t = tl.load(blk_tensor_ptr + pid)
        # block starts are multiples of BLOCK_SIZE by construction (_group_tables)
        start = tl.multiple_of(tl.load(blk_start_ptr + pid), BLOCK_SIZE)
        n = tl.load(numel_ptr + t)
        p_ptr = _table_ptr(table_ptr, 0, n_tensors, t, tl.float32, ALIGNED)
        if G_BF16:
            g_ptr = _table_ptr(table_ptr, 1, n_tensors, t, tl.bfloat16, ALIGNED)
        else:
            g_ptr = _table_ptr(table_ptr, 1, n_tensors, t, tl.float32, ALIGNED)
        m_ptr = _table_ptr(table_ptr, 2, n_tensors, t, tl.float32, ALIGNED)
        v_ptr = _table_ptr(table_ptr, 3, n_tensors, t, tl.float32, ALIGNED)
        a_ptr = p_ptr
        k_ptr = p_ptr
        e_ptr = p_ptr
        f_ptr = p_ptr
        if HAS_ANCHOR:
            a_ptr = _table_ptr(table_ptr, 4, n_tensors, t, tl.float32, ALIGNED)
        if HAS_EXTRA:
            e_ptr = _table_ptr(table_ptr, 6, n_tensors, t, tl.float32, ALIGNED)
        if HAS_FISHER:
            f_ptr = _table_ptr(table_ptr, 7, n_tensors, t, tl.float32, ALIGNED)
        if HAS_ANCHOR and K_BF16:
            kb_ptr = _table_ptr(table_ptr, 5, n_tensors, t, tl.bfloat16, ALIGNED)
            _adamw_block(p_ptr, g_ptr, m_ptr, v_ptr, a_ptr, kb_ptr, e_ptr, f_ptr, pen_ptr,
                         step_ptr, damp_ptr, skip_ptr, start, n, decay, beta1, beta2, eps, lr,
                         step_size, inv_bc2_sqrt, log_beta1, log_beta2, damping, fisher_scale,
                         HAS_ANCHOR, HAS_EXTRA, HAS_FISHER, HAS_PEN, STEP_TENSOR, DAMP_TENSOR,
                         HAS_SKIP, DECOUPLED, BLOCK_SIZE)
        else:
            if HAS_ANCHOR:
                k_ptr = _table_ptr(table_ptr, 5, n_tensors, t, tl.float32, ALIGNED)
            _adamw_block(p_ptr, g_ptr, m_ptr, v_ptr, a_ptr, k_ptr, e_ptr, f_ptr, pen_ptr,
                         step_ptr, damp_ptr, skip_ptr, start, n, decay, beta1, beta2, eps, lr,
                         step_size, inv_bc2_sqrt, log_beta1, log_beta2, damping, fisher_scale,
                         HAS_ANCHOR, HAS_EXTRA, HAS_FISHER, HAS_PEN, STEP_TENSOR, DAMP_TENSOR,
                         HAS_SKIP, DECOUPLED, BLOCK_SIZE)

    _kernel_cache = (_fused_adamw_kernel, _fused_adamw_multi_kernel)
    return _kernel_cache


def _check_device(p: Tensor) -> None:
    if p.device.type != "cuda" and not interpreted():
        raise RuntimeError(f"triton backend: tensors on {p.device} need CUDA, or "
                           "TRITON_INTERPRET=1 for CPU tensors")


def fused_adamw_step(p, g, m, v, *, lr, beta1, beta2, eps, weight_decay, step, anchor=None,
                     kappa=None, extra_grad=None, damping=1.0, fisher=None, fisher_scale=1.0,
                     penalty_out=None, found_inf=None, decoupled=False) -> None:
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
    _kernel()[0][grid](
        p, g, m, v,
        anchor if has_anchor else dummy, kappa if has_anchor else dummy,
        extra_grad if extra_grad is not None else dummy,
        fisher if fisher is not None else dummy,
        penalty_out if has_pen else dummy,
        step if step_tensor else dummy, damping if damp_tensor else dummy,
        found_inf if found_inf is not None else dummy, n, float(1.0 - lr * weight_decay), float(beta1), float(beta2), float(eps), float(lr),
        float(step_size), float(inv_bc2), float(math.log(beta1)) if beta1 > 0 else -1e30,
        float(math.log(beta2)) if beta2 > 0 else -1e30,
        1.0 if damp_tensor else float(damping), float(fisher_scale),
        HAS_ANCHOR=has_anchor, HAS_EXTRA=extra_grad is not None, HAS_FISHER=fisher is not None,
        HAS_PEN=has_pen, STEP_TENSOR=step_tensor, DAMP_TENSOR=damp_tensor,
        HAS_SKIP=found_inf is not None, DECOUPLED=bool(decoupled and has_anchor), BLOCK_SIZE=BLOCK,
        num_warps=NUM_WARPS,
    )


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _at(seq, i):
    return None if seq is None else seq[i]


_TABLE_CACHE: "OrderedDict[tuple, tuple]" = OrderedDict()
_TABLE_CACHE_MAX = 32


def _group_tables(dev, addrs, numels):
    """(table[8, T] of addresses, numels[T], block->tensor[nb], block->start[nb], nb) on dev.

    Cached by the exact addresses and sizes (parameters and moments do not move between steps;
    grads often come back at the same addresses from the caching allocator), so a steady-state
    step builds nothing and copies nothing to the device."""
    key = (str(dev), tuple(itertools.chain.from_iterable(addrs)), tuple(numels))
    hit = _TABLE_CACHE.get(key)
    if hit is not None:
        _TABLE_CACHE.move_to_end(key)
        return hit
    nblocks = [triton_cdiv(n, BLOCK) for n in numels]
    table = torch.tensor(addrs, dtype=torch.int64)
    numel_t = torch.tensor(numels, dtype=torch.int64)
    blk_tensor = torch.repeat_interleave(torch.arange(len(numels), dtype=torch.int32),
                                         torch.tensor(nblocks))
    blk_start = torch.cat([torch.arange(b, dtype=torch.int64) * BLOCK for b in nblocks])
    if dev.type == "cuda":
        table, numel_t, blk_tensor, blk_start = (
            t.pin_memory().to(dev, non_blocking=True)
            for t in (table, numel_t, blk_tensor, blk_start))
    hit = (table, numel_t, blk_tensor, blk_start, sum(nblocks))
    _TABLE_CACHE[key] = hit
    if len(_TABLE_CACHE) > _TABLE_CACHE_MAX:
        _TABLE_CACHE.popitem(last=False)
    return hit


def _aligned(addrs) -> bool:
    """True when every address of the table is 16-byte aligned: the condition under which the
    multi-tensor kernel may promise Triton 16-byte alignment (one ld/st.global.v4 per 4 fp32).
    The caching allocator's blocks are 512-byte aligned; views with an offset (a shard of a
    flat buffer, a slice) may not be, and then the kernel is built without the hint."""
    return all(a % 16 == 0 for row in addrs for a in row)


def fused_adamw_multi(params, grads, exp_avgs, exp_avg_sqs, *, lr, beta1, beta2, eps,
                      weight_decay, step, anchors=None, kappas=None, extra_grads=None,
                      damping=1.0, fishers=None, fisher_scale=1.0, penalty_out=None,
                      found_inf=None, decoupled=False) -> None:
    """One launch per *kind* of tensor in the group (gradient dtype, kappa dtype, which optional
    operands are present): usually one or two launches for a whole parameter group. Each
    launch walks a device-side address table (multi-tensor apply)."""
    n = len(params)
    if n == 0:
        return
    _check_device(params[0])
    groups: dict = {}
    for i in range(n):
        if params[i].numel() == 0:
            continue
        a, k = _at(anchors, i), _at(kappas, i)
        key = (grads[i].dtype == torch.bfloat16, a is not None,
               a is not None and k.dtype == torch.bfloat16,
               _at(extra_grads, i) is not None, _at(fishers, i) is not None)
        groups.setdefault(key, []).append(i)
    step_tensor = isinstance(step, Tensor)
    damp_tensor = isinstance(damping, Tensor)
    if step_tensor:
        step_size, inv_bc2 = 0.0, 0.0
    else:
        step_size = lr / (1.0 - beta1 ** step)
        inv_bc2 = 1.0 / math.sqrt(1.0 - beta2 ** step)
    operands = (params, grads, exp_avgs, exp_avg_sqs, anchors, kappas, extra_grads, fishers)
    dev = params[0].device
    for (g_bf16, has_anchor, k_bf16, has_extra, has_fisher), idx in groups.items():
        if len(idx) == 1:  # no table needed
            i = idx[0]
            fused_adamw_step(
                params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], lr=lr, beta1=beta1,
                beta2=beta2, eps=eps, weight_decay=weight_decay, step=step,
                anchor=_at(anchors, i), kappa=_at(kappas, i), extra_grad=_at(extra_grads, i),
                damping=damping, fisher=_at(fishers, i), fisher_scale=fisher_scale,
                penalty_out=penalty_out, found_inf=found_inf, decoupled=decoupled)
            continue
        addrs = [[0 if seq is None or seq[i] is None else seq[i].data_ptr() for i in idx]
                 for seq in operands]
        numels = [params[i].numel() for i in idx]
        table, numel_t, blk_tensor, blk_start, nb = _group_tables(dev, addrs, numels)
        has_pen = has_anchor and penalty_out is not None
        dummy = params[idx[0]]
        _kernel()[1][(nb,)](
            table, len(idx), numel_t, blk_tensor, blk_start,
            penalty_out if has_pen else dummy, step if step_tensor else dummy,
            damping if damp_tensor else dummy, found_inf if found_inf is not None else dummy,
            float(1.0 - lr * weight_decay), float(beta1), float(beta2), float(eps), float(lr),
            float(step_size), float(inv_bc2), float(math.log(beta1)) if beta1 > 0 else -1e30,
            float(math.log(beta2)) if beta2 > 0 else -1e30,
            1.0 if damp_tensor else float(damping), float(fisher_scale),
            G_BF16=g_bf16, K_BF16=k_bf16, ALIGNED=_aligned(addrs), HAS_ANCHOR=has_anchor, HAS_EXTRA=has_extra,
            HAS_FISHER=has_fisher, HAS_PEN=has_pen, STEP_TENSOR=step_tensor,
            DAMP_TENSOR=damp_tensor, HAS_SKIP=found_inf is not None,
            DECOUPLED=bool(decoupled and has_anchor), BLOCK_SIZE=BLOCK,
            num_warps=NUM_WARPS,
        )
