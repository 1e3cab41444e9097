"""Reference (PyTorch) implementation of the fused inherited AdamW step: the ground truth.

Every other backend (native C++, Triton) is tested against these functions. They take
*already validated* arguments (see ``kernels.__init__._check_*``); call them through
``kernels.fused_adamw_step`` / ``kernels.fused_adamw_multi`` unless you know what you do.

Semantics, elementwise, in this order (all arithmetic in fp32):

    fisher += fisher_scale * g*g                      (raw loss gradient, if fisher given)
    d = p - anchor                                    (if anchor given)
    penalty_out += 0.5 * sum(kappa * d*d)             (at p BEFORE the update, if given)
    g' = damping * (g + kappa*d + extra_grad)         (terms present only when given)
    p *= 1 - lr*weight_decay
    m = beta1*m + (1-beta1)*g'
    v = beta2*v + (1-beta2)*g'^2
    p -= (lr / (1-beta1^step)) * m / (sqrt(v)/sqrt(1-beta2^step) + eps)

which is exactly torch.optim.AdamW (decoupled weight decay) applied to g'.

``decoupled=True`` (the penalty's decoupled form, method.md section 4): kappa*d is NOT added to
g'; the anchor pull is applied after the AdamW update instead, like decoupled weight decay, to
the updated p:

    p -= min(lr * kappa, 1) * (p - anchor)

so kappa is then a pull per unit of learning rate (lambda_d * Omega/mean_M(Omega) on inherited
coordinates, gamma_d on new ones). The clamp at 1 means the pull never overshoots the anchor
(with lr*kappa <= 1 it is exactly the formula). The ARS damping does not scale the pull (it is
not part of the gradient); penalty_out is 0.5*sum(kappa*d*d) at p before the update either way.

``found_inf`` (optional 0-dim float32 tensor, torch's fused-AdamW convention): when nonzero the
whole step is a no-op (p, m, v, fisher and penalty_out are left untouched). It lets a trainer
skip a step with a non-finite loss or gradient without reading the flag on the host.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

Number = Union[int, float]


def _bias_corrections(step, beta1: float, beta2: float, device: torch.device):
    """Return (step_size_factor = 1/bc1, 1/sqrt(bc2)) as python floats or 0-dim fp32 tensors."""
    if isinstance(step, Tensor):
        s = step.to(device=device, dtype=torch.float64)
        bc1 = 1.0 - torch.pow(torch.tensor(beta1, dtype=torch.float64, device=device), s)
        bc2 = 1.0 - torch.pow(torch.tensor(beta2, dtype=torch.float64, device=device), s)
        return (1.0 / bc1).to(torch.float32), torch.rsqrt(bc2).to(torch.float32)
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    return 1.0 / bc1, 1.0 / math.sqrt(bc2)


@torch.no_grad()
def fused_adamw_step(
    p: Tensor, g: Tensor, m: Tensor, v: Tensor, *,
    lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, step,
    anchor: Optional[Tensor] = None, kappa: Optional[Tensor] = None,
    extra_grad: Optional[Tensor] = None, damping=1.0,
    fisher: Optional[Tensor] = None, fisher_scale: float = 1.0,
    penalty_out: Optional[Tensor] = None, found_inf: Optional[Tensor] = None,
    decoupled: bool = False,
) -> None:
    if p.numel() == 0:
        return
    if found_inf is not None:
        if found_inf.device.type == "cpu":  # reading a CPU tensor is no device sync
            if float(found_inf) != 0.0:
                return
        else:  # no host sync: step copies, keep the originals where found_inf says so
            _gated_step(p, g, m, v, found_inf, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                        weight_decay=weight_decay, step=step, anchor=anchor, kappa=kappa,
                        extra_grad=extra_grad, damping=damping, fisher=fisher,
                        fisher_scale=fisher_scale, penalty_out=penalty_out, decoupled=decoupled)
            return
    g32 = g.float()
    if fisher is not None:
        fisher.addcmul_(g32, g32, value=float(fisher_scale))
    gp = g32  # never modified in place below
    if anchor is not None:
        k32 = kappa.float()
        d = p - anchor
        kd = k32 * d
        if penalty_out is not None:
            penalty_out.add_(0.5 * (kd * d).sum(dtype=torch.float32).reshape(penalty_out.shape))
        if not decoupled:
            gp = gp + kd
    if extra_grad is not None:
        gp = gp + extra_grad
    if isinstance(damping, Tensor):
        gp = gp * damping.to(torch.float32)
    elif damping != 1.0:
        gp = gp * float(damping)

    p.mul_(1.0 - lr * weight_decay)
    m.lerp_(gp, 1.0 - beta1)
    v.mul_(beta2).addcmul_(gp, gp, value=1.0 - beta2)
    inv_bc1, inv_bc2_sqrt = _bias_corrections(step, beta1, beta2, p.device)
    denom = (v.sqrt() * inv_bc2_sqrt).add_(eps)
    if isinstance(inv_bc1, Tensor):
        p.sub_(m / denom * (lr * inv_bc1))
    else:
        p.addcdiv_(m, denom, value=-lr * inv_bc1)
    if anchor is not None and decoupled:
        p.sub_((k32 * lr).clamp_(max=1.0) * (p - anchor))


def gated(found_inf: Tensor, outs: Sequence[Tensor], run) -> None:
    """Apply an in-place update to `outs` only where `found_inf` is zero, with no host read:
    `run(copies)` updates copies of `outs`, which are then kept or dropped with torch.where.
    (Memory: one copy of each output; for the reference and torch-op paths, not the kernels.)"""
    work = [t.clone() for t in outs]
    run(work)
    keep = found_inf.reshape(()) != 0
    for t, w in zip(outs, work):
        t.copy_(torch.where(keep, t, w))


def _gated_step(p, g, m, v, found_inf, *, fisher, penalty_out, **kw) -> None:
    outs = [t for t in (p, m, v, fisher, penalty_out) if t is not None]

    def run(work):
        wp, wm, wv = work[:3]
        wf = work[3] if fisher is not None else None
        wpen = work[-1] if penalty_out is not None else None
        fused_adamw_step(wp, g, wm, wv, fisher=wf, penalty_out=wpen, **kw)

    gated(found_inf, outs, run)


def _at(seq, i):
    return None if seq is None else seq[i]


@torch.no_grad()
def fused_adamw_multi(
    params: Sequence[Tensor], grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor], exp_avg_sqs: Sequence[Tensor], *,
    lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, step,
    anchors=None, kappas=None, extra_grads=None, damping=1.0,
    fishers=None, fisher_scale: float = 1.0, penalty_out: Optional[Tensor] = None,
    found_inf: Optional[Tensor] = None, decoupled: bool = False,
) -> None:
    for i in range(len(params)):
        fused_adamw_step(
            params[i], grads[i], exp_avgs[i], exp_avg_sqs[i],
            lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, step=step,
            anchor=_at(anchors, i), kappa=_at(kappas, i), extra_grad=_at(extra_grads, i),
            damping=damping, fisher=_at(fishers, i), fisher_scale=fisher_scale,
            penalty_out=penalty_out, found_inf=found_inf, decoupled=decoupled,
        )
