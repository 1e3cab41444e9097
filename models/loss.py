"""The loss head's soft-capped cross-entropy without a chain of fp32 [B, T, V] tensors.

The eager chain `z.float() -> z / cap -> tanh -> * cap -> cross_entropy` keeps four fp32 copies
of the logits alive plus log_softmax's: at nanochat's d20 shape (32 x 2048 tokens per device
batch, vocab 32768) one fp32 copy is 8.6 GB, so the chain alone needs ~40 GB. This function
keeps only the logits as they came out of lm_head (bf16 under autocast) and the per-row
log-sum-exp; the fp32 soft-capped logits exist one chunk of rows at a time, in the forward and
again (recomputed) in the backward. Peak fp32: a few chunks of CHUNK_ELEMS elements.

Gradient of loss_i = lse_i - y_i[t_i] with y = cap * tanh(z / cap):
    dL/dz = (softmax(y) - onehot(t)) * (1 - tanh(z / cap)^2)

With a teacher (knowledge inheritance: Qin et al. 2022, "Knowledge Inheritance for Pre-trained
Language Models"), row i's loss is (1 - w) CE_i + w KL(p_T,i || softmax(y_i)) with p_T the softmax
of the teacher's capped logits; the KL's gradient in y is softmax(y) - p_T, so the target of the
same formula becomes the soft distribution (1 - w) onehot(t) + w p_T:
    dL/dz = (softmax(y) - (1 - w) onehot(t) - w p_T) * (1 - tanh(z / cap)^2)
"""
from __future__ import annotations

import torch

IGNORE_INDEX = -1
CHUNK_ELEMS = 1 << 25  # 128 MB of fp32 per temporary; rows per chunk = CHUNK_ELEMS // vocab


def _rows_per_chunk(vocab: int) -> int:
    return max(1, CHUNK_ELEMS // vocab)


class _SoftcapCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, targets, cap, teacher, weight):
        n = z.size(0)
        valid = targets != IGNORE_INDEX
        safe = torch.where(valid, targets, 0)
        lse = torch.empty(n, dtype=torch.float32, device=z.device)
        loss = torch.empty(n, dtype=torch.float32, device=z.device)
        teacher_lse = torch.empty(n if teacher is not None else 0, dtype=torch.float32, device=z.device)
        rows = _rows_per_chunk(z.size(1))
        for s in range(0, n, rows):
            y = cap * torch.tanh(z[s:s + rows].float() / cap)
            lse[s:s + rows] = torch.logsumexp(y, dim=-1)
            loss[s:s + rows] = lse[s:s + rows] - y.gather(1, safe[s:s + rows, None]).squeeze(1)
            if teacher is not None:  # KL(p_T || p) = sum p_T (log p_T - log p), p_T summing to 1
                t = teacher[s:s + rows].float()
                teacher_lse[s:s + rows] = torch.logsumexp(t, dim=-1)
                p_t = torch.exp(t - teacher_lse[s:s + rows, None])
                kl = (p_t * (t - y)).sum(-1) - teacher_lse[s:s + rows] + lse[s:s + rows]
                loss[s:s + rows] = (1.0 - weight) * loss[s:s + rows] + weight * kl
        ctx.save_for_backward(z, safe, valid, lse, teacher, teacher_lse)
        ctx.cap, ctx.weight = cap, weight
        return torch.where(valid, loss, 0.0)

    @staticmethod
    def backward(ctx, grad):
        z, safe, valid, lse, teacher, teacher_lse = ctx.saved_tensors
        cap, weight = ctx.cap, ctx.weight
        scale = torch.where(valid, grad.float(), 0.0)
        gz = torch.empty_like(z)
        rows = _rows_per_chunk(z.size(1))
        for s in range(0, z.size(0), rows):
            th = torch.tanh(z[s:s + rows].float() / cap)
            g = torch.exp(th * cap - lse[s:s + rows, None])  # softmax of the capped logits
            g.scatter_add_(1, safe[s:s + rows, None], torch.full_like(lse[s:s + rows, None], weight - 1.0))
            if teacher is not None:
                g.sub_(weight * torch.exp(teacher[s:s + rows].float() - teacher_lse[s:s + rows, None]))
            g.mul_(scale[s:s + rows, None]).mul_(1.0 - th * th)
            gz[s:s + rows] = g
        return gz, None, None, None, None


def softcap_cross_entropy(z: torch.Tensor, targets: torch.Tensor, cap: float, reduction: str = "mean",
                          teacher: torch.Tensor | None = None, teacher_weight: float = 0.0):
    """Cross-entropy of `cap * tanh(z / cap)` against targets (IGNORE_INDEX ignored), z [..., V] in
    any float dtype; the same values as F.cross_entropy on the fp32 capped logits. With `teacher`
    (capped logits of z's shape, no gradient), each token's loss is (1 - w) CE + w KL(teacher || model),
    w = teacher_weight in [0, 1]."""
    if teacher is not None and (teacher.shape != z.shape or not 0.0 <= teacher_weight <= 1.0):
        raise ValueError(f"teacher logits {tuple(teacher.shape)} must match the model's {tuple(z.shape)} and the "
                         f"teacher weight must be in [0, 1], got {teacher_weight}")
    flat_teacher = teacher.detach().reshape(-1, z.size(-1)) if teacher is not None else None
    per_token = _SoftcapCrossEntropy.apply(z.reshape(-1, z.size(-1)), targets.reshape(-1), float(cap), flat_teacher,
                                           float(teacher_weight) if teacher is not None else 0.0)
    if reduction == "none":
        return per_token.view(targets.shape)
    if reduction == "sum":
        return per_token.sum()
    if reduction == "mean":
        return per_token.sum() / (targets != IGNORE_INDEX).sum()
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
