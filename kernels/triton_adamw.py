"""Triton backend (CUDA): fused kernels for the inherited AdamW step.

Laid out like Liger-Kernel's ops: module-level ``@triton.jit`` functions, one per kernel, then the
host functions that launch them.

    _adamw_update            the step on one block of elements (device function)
    _adamw_block             one block of a tensor: unmasked when full, masked at the tail
    _table_ptr               one operand's pointer read from the multi-tensor address table
    _fused_adamw_kernel      one tensor (fused_adamw_step)
    _fused_adamw_multi_kernel  several tensors of one kind, walked through the table
                             (fused_adamw_multi: one launch per kind of tensor in the group)

The arguments they share are defined once: ``Hyper`` (the float hyperparameters, a runtime
tuple), ``Flags`` (the optional terms, one ``tl.constexpr`` tuple, so each option combination
compiles to its own branch-free kernel) and, inside the kernels, the operand tuple ``ops`` (p, g,
m, v, anchor, kappa, extra, fisher) and ``dev`` (penalty, step, damping, found_inf pointers).
Pointers stay separate kernel arguments: the launcher proves each one's 16-byte alignment, which
is what the vectorised loads rest on (tests/kernels/test_triton_ptx.py).

Semantics: kernels/reference.py (the decoupled penalty form too: DECOUPLED). ``step``,
``damping`` and ``found_inf`` may be 0-dim device tensors: the kernel loads them itself, so a CUDA
step needs no host sync (bias corrections are then computed in fp32 on the device, as torch's
capturable AdamW does).

Triton is optional: without it this module still imports (the kernels stay plain functions and
every entry point raises, naming the import error). Also runs on CPU tensors under
TRITON_INTERPRET=1 (tests). Interpreter rules followed here: bf16 is cast to fp32 explicitly after
each load, no autotune, no libdevice, python float arguments are used only in arithmetic.
``triton.jit`` chooses between the compiler and the interpreter when it decorates, so
TRITON_INTERPRET must be set before this module is imported; a change afterwards is an error.
"""
from __future__ import annotations

import itertools
import math
import os
from collections import OrderedDict
from typing import NamedTuple, Optional

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


def is_importable() -> bool:
    return triton is not None


def import_error() -> Optional[str]:
    """Why ``import triton`` failed here, or None."""
    return _import_error


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# The mode the kernels below were decorated in (see the module docstring).
_INTERPRETED_AT_IMPORT = interpreted()


def _jit(fn):
    # Without triton the kernels stay plain (never launched) functions, so the module imports;
    # the annotations are strings (__future__ annotations), so ``tl`` is not needed for that.
    return triton.jit(fn) if triton is not None else fn


class Hyper(NamedTuple):
    """The float arguments of both kernels (one runtime tuple argument, ``hp``)."""
    decay: float          # 1 - lr * weight_decay
    beta1: float
    beta2: float
    eps: float
    lr: float
    step_size: float      # lr / bias_correction1 (a python step; 0 with a tensor step)
    inv_bc2_sqrt: float   # 1 / sqrt(bias_correction2) (likewise)
    log_beta1: float      # for the bias corrections of a tensor step, computed on the device
    log_beta2: float
    damping: float        # 1.0 when damping is a tensor (loaded by the kernel instead)
    fisher_scale: float


class Flags(NamedTuple):
    """Which optional terms a kernel variant has (one ``tl.constexpr`` argument, ``F``)."""
    HAS_ANCHOR: bool   # the inheritance penalty: anchor and kappa given
    HAS_EXTRA: bool    # an extra gradient term (the subspace penalty's)
    HAS_FISHER: bool   # accumulate fisher += fisher_scale * g^2
    HAS_PEN: bool      # accumulate the penalty's value into penalty_out
    STEP_TENSOR: bool  # step is a 0-dim device tensor
    DAMP_TENSOR: bool  # damping is a 0-dim device tensor
    HAS_SKIP: bool     # found_inf given: nonzero makes the step a no-op
    DECOUPLED: bool    # the anchor pull after the update instead of kappa*(p - A) in the gradient


@_jit
def _adamw_update(ops, dev, hp, offs, mask, F: tl.constexpr):
    p_ptr, g_ptr, m_ptr, v_ptr, a_ptr, k_ptr, e_ptr, f_ptr = ops
    pen_ptr, step_ptr, damp_ptr, skip_ptr = dev
    if F.HAS_SKIP:
        # found_inf != 0: the whole step is a no-op, decided on the device (no host sync);
        # masking every load and store also makes a skipped step move no bytes
        # (broadcast to the block before comparing: the interpreter cannot AND a scalar)
        found = tl.zeros_like(offs).to(tl.float32) + tl.load(skip_ptr)
        mask = mask & (found == 0.0)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if F.HAS_FISHER:
        f = tl.load(f_ptr + offs, mask=mask, other=0.0)
        tl.store(f_ptr + offs, f + hp.fisher_scale * (g * g), mask=mask)
    p = tl.load(p_ptr + offs, mask=mask, other=0.0)
    gp = g
    if F.HAS_ANCHOR:
        a = tl.load(a_ptr + offs, mask=mask, other=0.0)
        k = tl.load(k_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        d = p - a
        kd = k * d
        if not F.DECOUPLED:
            gp = gp + kd
        if F.HAS_PEN:
            tl.atomic_add(pen_ptr, 0.5 * tl.sum(kd * d, axis=0))
    if F.HAS_EXTRA:
        gp = gp + tl.load(e_ptr + offs, mask=mask, other=0.0)
    if F.DAMP_TENSOR:
        gp = gp * tl.load(damp_ptr).to(tl.float32)
    else:
        gp = gp * hp.damping
    if F.STEP_TENSOR:
        s = tl.load(step_ptr).to(tl.float32)
        bc1 = 1.0 - tl.exp(s * hp.log_beta1)
        bc2 = 1.0 - tl.exp(s * hp.log_beta2)
        ss = hp.lr / bc1
        ib2 = 1.0 / tl.sqrt(bc2)
    else:
        ss = hp.step_size
        ib2 = hp.inv_bc2_sqrt
    m = tl.load(m_ptr + offs, mask=mask, other=0.0)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0)
    m = m + (1.0 - hp.beta1) * (gp - m)
    v = hp.beta2 * v + (1.0 - hp.beta2) * (gp * gp)
    p = p * hp.decay - ss * m / (tl.sqrt(v) * ib2 + hp.eps)
    if F.HAS_ANCHOR:
        if F.DECOUPLED:  # the anchor pull after the update, never past the anchor
            p = p - tl.minimum(hp.lr * k, 1.0) * (p - a)
    tl.store(m_ptr + offs, m, mask=mask)
    tl.store(v_ptr + offs, v, mask=mask)
    tl.store(p_ptr + offs, p, mask=mask)


@_jit
def _adamw_block(ops, dev, hp, start, n, F: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    # A full block gets a mask that is one constant for the whole block: Triton then knows every
    # lane of a 4-element group agrees and emits 16-byte ld/st.global.v4 (given aligned
    # pointers). `offs < n` with an n of unknown divisibility splits the block into 4-byte
    # accesses, so only the last, partial block of a tensor uses it. The update is called in
    # each branch (not after it): a mask merged from two branches loses the constancy fact.
    offs = start + tl.arange(0, BLOCK_SIZE)
    if start + BLOCK_SIZE <= n:
        _adamw_update(ops, dev, hp, offs, tl.full([BLOCK_SIZE], 1, tl.int1), F)
    else:
        _adamw_update(ops, dev, hp, offs, offs < n, F)


@_jit
def _table_ptr(table_ptr, j, n_tensors, t, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    # A pointer loaded from the int64 address table carries no alignment facts, so without the
    # hint every access is a 4-byte ld/st.global.b32 (PTX checked on CPU, see
    # tests/kernels/test_triton_ptx.py). ALIGNED is set by the host only when every address in the
    # table is a multiple of 16 bytes, so the hint is a checked fact, not a hope.
    ptr = tl.load(table_ptr + j * n_tensors + t).to(tl.pointer_type(DTYPE), bitcast=True)
    if ALIGNED:
        ptr = tl.multiple_of(ptr, 16)
    return ptr


@_jit
def _fused_adamw_kernel(p_ptr, g_ptr, m_ptr, v_ptr, a_ptr, k_ptr, e_ptr, f_ptr,
                        pen_ptr, step_ptr, damp_ptr, skip_ptr, n_elements, hp,
                        F: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    start = tl.program_id(0).to(tl.int64) * BLOCK_SIZE
    _adamw_block((p_ptr, g_ptr, m_ptr, v_ptr, a_ptr, k_ptr, e_ptr, f_ptr),
                 (pen_ptr, step_ptr, damp_ptr, skip_ptr), hp, start, n_elements, F, BLOCK_SIZE)


@_jit
def _fused_adamw_multi_kernel(table_ptr, n_tensors, numel_ptr, blk_tensor_ptr, blk_start_ptr,
                              pen_ptr, step_ptr, damp_ptr, skip_ptr, hp,
                              G_BF16: tl.constexpr, K_BF16: tl.constexpr, ALIGNED: tl.constexpr,
                              F: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    # One program per BLOCK_SIZE elements of one tensor; table[j, t] holds the address of
    # operand j (p, g, m, v, anchor, kappa, extra, fisher) of tensor t.
    pid = tl.program_id(0)
    t = tl.load(blk_tensor_ptr + pid)
    # block starts are multiples of BLOCK_SIZE by construction (_group_tables)
    start = tl.multiple_of(tl.load(blk_start_ptr + pid), BLOCK_SIZE)
    n = tl.load(numel_ptr + t)
    dev = (pen_ptr, step_ptr, damp_ptr, skip_ptr)
    p_ptr = _table_ptr(table_ptr, 0, n_tensors, t, tl.float32, ALIGNED)
    if G_BF16:
        g_ptr = _table_ptr(table_ptr, 1, n_tensors, t, tl.bfloat16, ALIGNED)
    else:
        g_ptr = _table_ptr(table_ptr, 1, n_tensors, t, tl.float32, ALIGNED)
    m_ptr = _table_ptr(table_ptr, 2, n_tensors, t, tl.float32, ALIGNED)
    v_ptr = _table_ptr(table_ptr, 3, n_tensors, t, tl.float32, ALIGNED)
    # absent operands point at p: never dereferenced (their flag is off), but typed pointers
    a_ptr = p_ptr
    k_ptr = p_ptr
    e_ptr = p_ptr
    f_ptr = p_ptr
    if F.HAS_ANCHOR:
        a_ptr = _table_ptr(table_ptr, 4, n_tensors, t, tl.float32, ALIGNED)
    if F.HAS_EXTRA:
        e_ptr = _table_ptr(table_ptr, 6, n_tensors, t, tl.float32, ALIGNED)
    if F.HAS_FISHER:
        f_ptr = _table_ptr(table_ptr, 7, n_tensors, t, tl.float32, ALIGNED)
    # a bf16 kappa is a pointer of another type: its own call, not a reassignment of k_ptr
    # (a variable must keep one type across the branches)
    if F.HAS_ANCHOR and K_BF16:
        kb_ptr = _table_ptr(table_ptr, 5, n_tensors, t, tl.bfloat16, ALIGNED)
        _adamw_block((p_ptr, g_ptr, m_ptr, v_ptr, a_ptr, kb_ptr, e_ptr, f_ptr), dev, hp,
                     start, n, F, BLOCK_SIZE)
    else:
        if F.HAS_ANCHOR:
            k_ptr = _table_ptr(table_ptr, 5, n_tensors, t, tl.float32, ALIGNED)
        _adamw_block((p_ptr, g_ptr, m_ptr, v_ptr, a_ptr, k_ptr, e_ptr, f_ptr), dev, hp,
                     start, n, F, BLOCK_SIZE)


# --------------------------------------------------------------------------------------------
# Host side: the launch arguments both kernels share, built once per call
# --------------------------------------------------------------------------------------------
def _check_launchable(p: Tensor) -> None:
    if triton is None:
        raise RuntimeError(f"triton backend: triton is not importable here ({_import_error})")
    if interpreted() != _INTERPRETED_AT_IMPORT:
        raise RuntimeError(
            "triton backend: TRITON_INTERPRET changed after kernels.triton_adamw was imported "
            f"(now {os.environ.get('TRITON_INTERPRET', '0')!r}); set it before the first import")
    if p.device.type != "cuda" and not interpreted():
        raise RuntimeError(f"triton backend: tensors on {p.device} need CUDA, or "
                           "TRITON_INTERPRET=1 for CPU tensors")


def _hyper(*, lr, beta1, beta2, eps, weight_decay, step, damping, fisher_scale) -> Hyper:
    if isinstance(step, Tensor):  # the kernel computes the bias corrections from log(beta)
        step_size, inv_bc2 = 0.0, 0.0
    else:
        step_size = lr / (1.0 - beta1 ** step)
        inv_bc2 = 1.0 / math.sqrt(1.0 - beta2 ** step)
    log = lambda b: float(math.log(b)) if b > 0 else -1e30  # noqa: E731 (exp(s * -1e30) = 0)
    return Hyper(decay=float(1.0 - lr * weight_decay), beta1=float(beta1), beta2=float(beta2),
                 eps=float(eps), lr=float(lr), step_size=float(step_size),
                 inv_bc2_sqrt=float(inv_bc2), log_beta1=log(beta1), log_beta2=log(beta2),
                 damping=1.0 if isinstance(damping, Tensor) else float(damping),
                 fisher_scale=float(fisher_scale))


def _flags(*, has_anchor, has_extra, has_fisher, penalty_out, step, damping, found_inf,
           decoupled) -> Flags:
    return Flags(HAS_ANCHOR=has_anchor, HAS_EXTRA=has_extra, HAS_FISHER=has_fisher,
                 HAS_PEN=has_anchor and penalty_out is not None,
                 STEP_TENSOR=isinstance(step, Tensor), DAMP_TENSOR=isinstance(damping, Tensor),
                 HAS_SKIP=found_inf is not None, DECOUPLED=bool(decoupled and has_anchor))


def _dev_args(flags: Flags, dummy: Tensor, penalty_out, step, damping, found_inf) -> tuple:
    """(penalty, step, damping, found_inf) pointers; an absent one is ``dummy`` (never read)."""
    return (penalty_out if flags.HAS_PEN else dummy, step if flags.STEP_TENSOR else dummy,
            damping if flags.DAMP_TENSOR else dummy, found_inf if flags.HAS_SKIP else dummy)


def fused_adamw_step(p, g, m, v, *, lr, beta1, beta2, eps, weight_decay, step, anchor=None,
                     kappa=None, extra_grad=None, damping=1.0, fisher=None, fisher_scale=1.0,
                     penalty_out=None, found_inf=None, decoupled=False) -> None:
    n = p.numel()
    if n == 0:
        return
    _check_launchable(p)
    flags = _flags(has_anchor=anchor is not None, has_extra=extra_grad is not None,
                   has_fisher=fisher is not None, penalty_out=penalty_out, step=step,
                   damping=damping, found_inf=found_inf, decoupled=decoupled)
    hp = _hyper(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, step=step,
                damping=damping, fisher_scale=fisher_scale)
    ops = [t if t is not None else p for t in (anchor, kappa, extra_grad, fisher)]
    _fused_adamw_kernel[(triton_cdiv(n, BLOCK),)](
        p, g, m, v, *ops, *_dev_args(flags, p, penalty_out, step, damping, found_inf), n, hp,
        F=flags, BLOCK_SIZE=BLOCK, num_warps=NUM_WARPS)


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
    _check_launchable(params[0])
    groups: dict = {}
    for i in range(n):
        if params[i].numel() == 0:
            continue
        a, k = _at(anchors, i), _at(kappas, i)
        key = (grads[i].dtype == torch.bfloat16, a is not None,
               a is not None and k.dtype == torch.bfloat16,
               _at(extra_grads, i) is not None, _at(fishers, i) is not None)
        groups.setdefault(key, []).append(i)
    hp = _hyper(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, step=step,
                damping=damping, fisher_scale=fisher_scale)
    operands = (params, grads, exp_avgs, exp_avg_sqs, anchors, kappas, extra_grads, fishers)
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
        table, numel_t, blk_tensor, blk_start, nb = _group_tables(
            params[0].device, addrs, [params[i].numel() for i in idx])
        flags = _flags(has_anchor=has_anchor, has_extra=has_extra, has_fisher=has_fisher,
                       penalty_out=penalty_out, step=step, damping=damping,
                       found_inf=found_inf, decoupled=decoupled)
        _fused_adamw_multi_kernel[(nb,)](
            table, len(idx), numel_t, blk_tensor, blk_start,
            *_dev_args(flags, params[idx[0]], penalty_out, step, damping, found_inf), hp,
            G_BF16=g_bf16, K_BF16=k_bf16, ALIGNED=_aligned(addrs), F=flags,
            BLOCK_SIZE=BLOCK, num_warps=NUM_WARPS)
