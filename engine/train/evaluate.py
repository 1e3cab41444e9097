"""Validation loss and bits per byte on a fixed held-out set.

bits per byte = sum of per-token loss (nats) / (ln 2 * sum of the target tokens' UTF-8 bytes),
special tokens (0 bytes) excluded from both sums, as nanochat computes it: unlike loss per token
it does not depend on the tokenizer, so rungs and runs with different vocabularies compare.

`val_loss_se` is the standard error of val_loss from the spread of the per-window mean losses
(tokens of one window are correlated, so the window, not the token, is the independent unit).
It is the noise of the *set*; arms are compared on the same set, so their differences are
measured with less noise than this.
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from engine.data import val_batches
from engine.runtime.distributed import DistEnv, all_reduce_sum


def val_set_tokens(max_tokens: int, seq_len: int, batch_size: int, world_size: int) -> int:
    """Largest token count <= max_tokens that makes a whole number of batches per rank: under
    FSDP every rank must run the same number of forward passes (each one all-gathers)."""
    per_round = seq_len * batch_size * world_size
    rounds = max(1, max_tokens // per_round)
    return rounds * per_round


@torch.no_grad()
def evaluate(model, val_tokens, token_bytes: torch.Tensor, *, seq_len: int, batch_size: int, max_tokens: int,
             env: DistEnv, autocast=nullcontext) -> dict:
    was_training = model.training
    model.eval()
    n = val_set_tokens(max_tokens, seq_len, batch_size, env.world_size)
    if len(val_tokens) < n + 1:
        raise ValueError(f"validation split has {len(val_tokens)} tokens; evaluation needs {n + 1} "
                         f"(eval_tokens={max_tokens}, seq_len={seq_len}, batch={batch_size}, world={env.world_size})")
    # loss, tokens, loss on bytes>0, bytes, windows, sum and sum of squares of per-window mean loss
    sums = torch.zeros(7, dtype=torch.float64, device=env.device)
    tb = token_bytes.to(env.device)
    # n + 1 tokens make exactly n / seq_len windows of seq_len + 1 (val_batches' cut)
    for x, y in val_batches(val_tokens, seq_len, batch_size, n + 1, rank=env.rank, world_size=env.world_size):
        x, y = x.to(env.device), y.to(env.device)
        with autocast():
            loss = model(x, y, reduction="none").double()
        nbytes = tb[y]
        sums[0] += loss.sum()
        sums[1] += y.numel()
        sums[2] += (loss * (nbytes > 0)).sum()
        sums[3] += nbytes.sum()
        window_mean = loss.mean(dim=-1)
        sums[4] += window_mean.numel()
        sums[5] += window_mean.sum()
        sums[6] += (window_mean * window_mean).sum()
    all_reduce_sum(sums, env)
    model.train(was_training)
    loss_sum, tokens, loss_bytes, nbytes, windows, wsum, wsq = sums.tolist()
    var = max(0.0, wsq / windows - (wsum / windows) ** 2) * windows / max(1.0, windows - 1)
    return {"val_loss": loss_sum / tokens, "val_bpb": loss_bytes / (math.log(2) * nbytes), "val_tokens": int(tokens),
            "val_loss_se": math.sqrt(var / windows)}
