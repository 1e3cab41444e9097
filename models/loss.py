"""The loss head's soft-capped cross-entropy without a chain of fp32 [B, T, V] tensors.

The eager chain `z.float() -> z / cap -> tanh -> * cap -> cross_entropy` keeps four fp32 copies
of the logits alive plus log_softmax's: at nanochat's d20 shape (32 x 2048 tokens per device
batch, vocab 32768) one fp32 copy is 8.6 GB, so the chain alone needs ~40 GB. This function
keeps only the logits as they came out of lm_head (bf16 under autocast) and the per-row
log-sum-exp; the fp32 soft-capped logits exist one chunk of rows at a time, in the forward and
again (recomputed) in the backward. Peak fp32: a few chunks of CHUNK_ELEMS elements.

Gradient of loss_i = lse_i - y_i[t_i] with y = cap * tanh(z / cap):
    dL/dz = (softmax(y) - onehot(t)) * (1 - tanh(z / cap)^2)
"""
from __future__ import annotations

import torch

IGNORE_INDEX = -1
CHUNK_ELEMS = 1 << 25  # 128 MB of fp32 per temporary; rows per chunk = CHUNK_ELEMS // vocab


def _rows_per_chunk(vocab: int) -> int:
    return max(1, CHUNK_ELEMS // vocab)


class _SoftcapCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, targets, cap):
        n = z.size(0)
        valid = targets != IGNORE_INDEX
        safe = torch.where(valid, targets, 0)
        lse = torch.empty(n, dtype=torch.float32, device=z.device)
        picked = torch.empty(n, dtype=torch.float32, device=z.device)
        rows = _rows_per_chunk(z.size(1))
        for s in range(0, n, rows):
            y = cap * torch.tanh(z[s:s + rows].float() / cap)
            lse[s:s + rows] = torch.logsumexp(y, dim=-1)
            picked[s:s + rows] = y.gather(1, safe[s:s + rows, None]).squeeze(1)
        ctx.save_for_backward(z, safe, valid, lse)
        ctx.cap = cap
        return torch.where(valid, lse - picked, 0.0)

    @staticmethod
    def backward(ctx, grad):
        z, safe, valid, lse = ctx.saved_tensors
        cap = ctx.cap
        scale = torch.where(valid, grad.float(), 0.0)
        gz = torch.empty_like(z)
        rows = _rows_per_chunk(z.size(1))
        for s in range(0, z.size(0), rows):
            th = torch.tanh(z[s:s + rows].float() / cap)
            g = torch.exp(th * cap - lse[s:s + rows, None])  # softmax of the capped logits
            g.scatter_add_(1, safe[s:s + rows, None], torch.full_like(lse[s:s + rows, None], -1.0))
            g.mul_(scale[s:s + rows, None]).mul_(1.0 - th * th)
            gz[s:s + rows] = g
        return gz, None, None


def softcap_cross_entropy(z: torch.Tensor, targets: torch.Tensor, cap: float, reduction: str = "mean"):
    """Cross-entropy of `cap * tanh(z / cap)` against targets (IGNORE_INDEX ignored), z [..., V] in
    any float dtype; the same values as F.cross_entropy on the fp32 capped logits."""
    per_token = _SoftcapCrossEntropy.apply(z.reshape(-1, z.size(-1)), targets.reshape(-1), float(cap))
    if reduction == "none":
        return per_token.view(targets.shape)
    if reduction == "sum":
        return per_token.sum()
    if reduction == "mean":
        return per_token.sum() / (targets != IGNORE_INDEX).sum()
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
