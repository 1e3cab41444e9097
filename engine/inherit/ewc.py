"""The EWC scale of the penalty's lambda (method.md section 4).

Omega (engine/inherit/fisher.py) is the square of a *batch-mean* gradient, smaller than the
per-token Fisher F by a factor r. EWC's Laplace view gives, in the grown rung's per-token-mean
units, lambda_EWC = (D_parent / D_child) * r, with D_parent the tokens the parent trained on and
D_child the grown rung's tokens.

r is measured on the parent at growth (`fisher_ratio`), on a few fresh batches of the size the
carried Omega was accumulated over:
- sum_i Omega_i is estimated by the mean over the batches of ||G_b||^2, G_b the gradient of the
  batch-mean cross-entropy (exactly what the Fisher accumulates, summed over coordinates);
- sum_i F_i by the mean of ||g_t||^2 over single tokens t sampled uniformly from the same batches,
  g_t the gradient of that one token's cross-entropy (its sequence cut after the token: the model
  is causal, so the cut changes nothing of g_t);
- r = sum F / sum Omega: one scalar, the ratio of the two Fisher masses over every parameter.
Tokens of one sequence are correlated, so r is well below the tokens per batch (method.md reports
~730 on cpu-tiny d2 with 2,048-token batches). The measurement's FLOPs are the forward+backward
FLOPs of every token it reads; the caller adds them to the penalty's Fisher cost.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

EWC = "ewc"  # the lambda setting that asks for lambda_EWC instead of a number
R_BATCHES = 4  # fresh batches r is measured on
R_TOKENS_PER_BATCH = 16  # single-token gradients per batch


def lam_is_on(lam) -> bool:
    """Whether a lambda setting (a number or EWC) asks for the Fisher-weighted term at all."""
    if isinstance(lam, str):
        return lam == EWC
    return lam > 0


def ewc_lambda(parent_tokens: float, child_tokens: float, r: float) -> float:
    """lambda_EWC = (D_parent / D_child) * r (method.md section 4)."""
    if parent_tokens <= 0 or child_tokens <= 0:
        raise ValueError(f"EWC lambda needs positive token counts, got D_parent={parent_tokens}, "
                         f"D_child={child_tokens}")
    return parent_tokens / child_tokens * r


def _grad_sq_norm(params: list[Tensor]) -> float:
    return sum(float(p.grad.detach().double().square().sum()) for p in params if p.grad is not None)


def _batch_grad_sq_norm(model: nn.Module, params: list[Tensor], x: Tensor, y: Tensor, micro_batch: int) -> float:
    """||grad of the batch-mean cross-entropy||^2, the batch taken in micro-batches."""
    for p in params:
        p.grad = None
    n = x.size(0)
    for i in range(0, n, micro_batch):
        xc, yc = x[i:i + micro_batch], y[i:i + micro_batch]
        (model(xc, yc) * (xc.size(0) / n)).backward()
    return _grad_sq_norm(params)


def _token_grad_sq_norm(model: nn.Module, params: list[Tensor], x: Tensor, y: Tensor, row: int, pos: int) -> float:
    """||grad of one token's cross-entropy||^2: the sequence cut after the token, every other target ignored."""
    for p in params:
        p.grad = None
    target = torch.full((1, pos + 1), -1, dtype=y.dtype, device=y.device)
    target[0, pos] = y[row, pos]
    model(x[row:row + 1, :pos + 1], target).backward()
    return _grad_sq_norm(params)


def fisher_ratio(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], *, micro_batch: int,
                 tokens_per_batch: int = R_TOKENS_PER_BATCH, seed: int = 0) -> tuple[float, dict, float]:
    """(r, facts, FLOPs): r = mean single-token ||g_t||^2 over mean batch ||G_b||^2 (module
    docstring), facts for the growth record, FLOPs of the passes. Existing `.grad`s are restored."""
    params = [p for p in model.parameters() if p.requires_grad]
    stashed = [p.grad for p in params]
    gen = torch.Generator().manual_seed(seed)
    batch_sq, token_sq, tokens_read, batch_tokens = [], [], 0, 0
    try:
        for x, y in batches:
            batch_sq.append(_batch_grad_sq_norm(model, params, x, y, micro_batch))
            batch_tokens, tokens_read = x.numel(), tokens_read + x.numel()
            for _ in range(tokens_per_batch):
                row = int(torch.randint(x.size(0), (1,), generator=gen))
                pos = int(torch.randint(x.size(1), (1,), generator=gen))
                token_sq.append(_token_grad_sq_norm(model, params, x, y, row, pos))
                tokens_read += pos + 1
    finally:
        for p, g in zip(params, stashed):
            p.grad = g
    if not batch_sq:
        raise ValueError("fisher_ratio needs at least one batch")
    omega_mass, fisher_mass = sum(batch_sq) / len(batch_sq), sum(token_sq) / len(token_sq)
    r = fisher_mass / omega_mass
    facts = {"r": r, "r_batches": len(batch_sq), "r_tokens": len(token_sq), "r_batch_tokens": batch_tokens,
             "per_token_fisher_mass": fisher_mass, "batch_fisher_mass": omega_mass}
    config = getattr(model, "config", None)
    flops = float(config.flops_per_token) * tokens_read if config is not None else 0.0
    return r, facts, flops
