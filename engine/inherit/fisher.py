"""Diagonal empirical Fisher information Omega (method.md section 3).

    Omega_i = mean over K batches of (dL_b / dW_i)^2,   L_b = batch-mean cross-entropy.

Two modes:
- post-hoc (`posthoc_fisher`): K extra forward/backward passes after the rung's training; their
  FLOPs are returned so the caller can add them to the rung's cost (method.md section 6).
- online (`OnlineFisher`): the optimizer kernel accumulates `fisher += fisher_scale * g^2`
  during the last K steps of the rung's own training (engine/train/trainer.py), no extra passes.
  This class owns the fp32 buffers and the count of steps that accumulated (a step skipped for a
  non-finite loss or gradient accumulates nothing); `result()` is the mean over the steps seen.
  `accumulate_` is the reference (torch) accumulation the kernel must match.

Names are `named_parameters()` names, as growth (engine/inherit/growth.py) expects them.
"""
from __future__ import annotations

import contextlib
from typing import Iterable

import torch
from torch import Tensor, nn

# accumulated inside the parent's last steps, or computed after it on fresh batches
FISHER_MODES = ("online", "posthoc")


def posthoc_fisher(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[dict[str, Tensor], int]:
    """Post-hoc diagonal Fisher (method.md section 3): mean over the K given (x, y) batches of the
    squared gradient of `model(x, y)` (the batch-mean cross-entropy). Returns ({name: fp32
    tensor}, flops) with flops = config.flops_per_token * (tokens in the K batches), i.e. the
    forward+backward training FLOPs of those passes.

    Uses `loss.backward()` (not autograd.grad) so FSDP's gradient hooks still run; existing
    `.grad`s are stashed and restored, so calling this does not disturb an optimizer's state."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    stashed = [p.grad for _, p in params]
    acc: list[Tensor | None] = [None] * len(params)
    k = 0
    tokens = 0
    try:
        for x, y in batches:
            for _, p in params:
                p.grad = None
            ctx = (
                torch.autocast(device_type=x.device.type, dtype=autocast_dtype)
                if autocast_dtype is not None
                else contextlib.nullcontext()
            )
            with ctx:
                loss = model(x, y)
            loss.backward()
            for i, (_, p) in enumerate(params):
                g = p.grad
                if g is None:  # parameter unused by the loss: its Fisher is 0
                    continue
                sq = g.detach().float().square()
                acc[i] = sq if acc[i] is None else acc[i].add_(sq)
            k += 1
            tokens += x.numel()
    finally:
        for (_, p), g in zip(params, stashed):
            p.grad = g
    if k == 0:
        raise ValueError("posthoc_fisher needs at least one batch")
    out = {}
    for (n, p), a in zip(params, acc):
        out[n] = a.div_(k) if a is not None else torch.zeros(p.shape, dtype=torch.float32, device=p.device)
    config = getattr(model, "config", None)
    flops = int(config.flops_per_token) * tokens if config is not None else 0
    return out, flops


class OnlineFisher:
    """Online diagonal Fisher accumulated inside the optimizer step (method.md section 3).

    Protocol for the optimizer (over the last K steps of a rung):
        of = OnlineFisher(num_steps=K); of.begin(model.named_parameters())
        each step: kernel does  buffers()[i] += fisher_scale * g_i^2   (g = the raw loss gradient
                   of the step: before ARS scaling, gradient clipping and the penalty gradient),
                   then calls of.step_done()   (or use of.accumulate_(grads) as the reference)
        end:       omega = of.result()
    `fisher_scale` is 1/K, so after exactly K steps the buffers already hold the mean; if fewer
    steps were accumulated (a step among the last K skipped, a rung that ended early), `result()`
    rescales by K/steps so it is still the mean over the steps actually seen. The buffers may be
    FSDP2 DTensors (`begin` on sharded parameters); the kernel then takes their local shards."""

    def __init__(self, num_steps: int):
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.num_steps = int(num_steps)
        self.names: list[str] = []
        self._buffers: list[Tensor] = []
        self.steps_accumulated = 0

    def begin(self, named_params: Iterable[tuple[str, Tensor]]) -> "OnlineFisher":
        """Allocate zeroed fp32 buffers shaped like each parameter (aligned with the given order)."""
        self.names, self._buffers = [], []
        for n, p in named_params:
            self.names.append(n)
            self._buffers.append(torch.zeros_like(p, dtype=torch.float32, memory_format=torch.contiguous_format))
        self.steps_accumulated = 0
        return self

    @property
    def fisher_scale(self) -> float:
        """The factor the kernel multiplies g^2 by (1/K)."""
        return 1.0 / self.num_steps

    def buffers(self) -> list[Tensor]:
        return self._buffers

    def named_buffers(self) -> dict[str, Tensor]:
        """{name: buffer}, the buffers themselves (the kernel accumulates into them in place)."""
        return dict(zip(self.names, self._buffers))

    def step_done(self) -> None:
        """Call once per optimizer step after the kernel accumulated into `buffers()`."""
        self.steps_accumulated += 1

    @torch.no_grad()
    def accumulate_(self, grads: Iterable[Tensor | None]) -> None:
        """Reference accumulation: buffers[i] += fisher_scale * grads[i]^2 (fp32), then step_done()."""
        s = self.fisher_scale
        for buf, g in zip(self._buffers, grads, strict=True):
            if g is not None:
                buf.addcmul_(g.float(), g.float(), value=s)
        self.step_done()

    def result(self) -> dict[str, Tensor]:
        """{name: Omega} (fp32 tensors; fresh copies, safe to keep after the buffers are freed)."""
        if self.steps_accumulated == 0:
            raise RuntimeError("OnlineFisher.result() before any step was accumulated")
        fix = self.num_steps / self.steps_accumulated
        return {n: (b * fix if fix != 1.0 else b.clone()) for n, b in zip(self.names, self._buffers)}

    def state_dict(self) -> dict:
        return {
            "num_steps": self.num_steps,
            "steps_accumulated": self.steps_accumulated,
            "names": list(self.names),
            "buffers": [b.clone() for b in self._buffers],
        }

    def load_state_dict(self, state: dict) -> None:
        if state["names"] != self.names and self.names:
            raise ValueError("OnlineFisher state was saved for different parameters")
        self.num_steps = int(state["num_steps"])
        self.steps_accumulated = int(state["steps_accumulated"])
        self.names = list(state["names"])
        if self._buffers and len(self._buffers) == len(state["buffers"]):
            for b, s in zip(self._buffers, state["buffers"]):  # in place: the kernel may hold references
                b.copy_(s)
        else:
            self._buffers = [s.clone().float() for s in state["buffers"]]
