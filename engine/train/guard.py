"""The non-finite-step guard: a step whose loss or gradient holds a NaN or Inf is skipped and
counted, and `max_nonfinite` consecutive ones stop the run with a clear message.

Two ways to read the verdict (`host_sync`, chosen by the trainer):

- "step": the host reads the step's [loss, bad-gradient flag] before the optimizer step and
  simply does not call it on a bad step. One host sync per step: free on CPU, where every
  tensor is already on the host (the default there).
- "lagged": no per-step host sync (the default on CUDA). The verdict stays on the device as
  `found_inf`, which the optimizer kernels take (ours and torch's fused AdamW alike): a bad step
  is a no-op decided on the device, so no NaN ever reaches the weights or the moments. Its
  values are copied to pinned host memory without waiting and read one step later, after the
  next step's forward and backward are queued, so the GPU always has work while the host
  waits. Host-side bookkeeping of a skipped step (the optimizer's step count, ARS's window
  count) is then undone, before the next optimizer step uses it. Evaluation, checkpoint and
  final steps are read at once (they sync anyway), so a checkpoint always holds settled state.

Both modes give the same run bitwise on CPU (tests/test_reliability.py), ARS aside: lagged runs
ARS on the device (engine/ars.ARSDevice), whose jitter stream differs from the host one.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from engine.runtime.distributed import local

HOST_SYNC_MODES = ("auto", "step", "lagged")


def resolve_host_sync(mode: str, device: torch.device, adamw_impl: str) -> str:
    """'auto' -> 'lagged' on CUDA, 'step' elsewhere. apex's Adam kernel takes no skip flag, so
    apex steps keep the per-step read."""
    if mode not in HOST_SYNC_MODES:
        raise ValueError(f"--host-sync must be one of {HOST_SYNC_MODES}, got {mode!r}")
    if mode == "lagged" and adamw_impl == "apex":
        raise ValueError("--host-sync lagged cannot run with --adamw-impl apex (apex's Adam kernel has no "
                         "device-side skip flag); use --host-sync step or another --adamw-impl")
    if mode == "auto":
        return "lagged" if device.type == "cuda" and adamw_impl != "apex" else "step"
    return mode


def step_flags(loss_sum: Tensor, params) -> Tensor:
    """[loss, 1 if any local gradient holds a NaN or Inf else 0] on the device, no sync."""
    grads = [local(p.grad) for p in params if p.grad is not None]
    if grads:
        norms = torch._foreach_norm(grads)  # one fused pass; a NaN or Inf anywhere makes its norm non-finite
        bad = (~torch.isfinite(torch.stack(norms))).any().to(loss_sum.dtype)
    else:
        bad = torch.zeros_like(loss_sum)
    return torch.stack([loss_sum, bad])


def found_inf(flags: Tensor) -> Tensor:
    """The optimizer kernels' skip flag (0-dim fp32: nonzero = skip) from step_flags (reduced)."""
    return ((~torch.isfinite(flags[0])) | (flags[1] > 0)).to(torch.float32)


class DeviceValues:
    """Small device tensor copied to host memory without waiting; `read()` waits only for it."""

    def __init__(self, values: Tensor):
        if values.device.type == "cuda":
            self.host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self.host.copy_(values, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host, self.event = values, None

    def read(self) -> list[float]:
        if self.event is not None:
            self.event.synchronize()
        return self.host.tolist()


class NonFiniteGuard:
    """Counts skipped steps and consecutive non-finite ones; stops the run past `max_nonfinite`."""

    def __init__(self, max_nonfinite: int, skipped: int = 0):
        self.max_nonfinite = max_nonfinite
        self.consecutive = 0
        self.skipped = skipped

    def judge(self, loss: float, bad_grads: float) -> str | None:
        """None for a good step, else what was non-finite ('loss' or 'gradient')."""
        if math.isfinite(loss) and not bad_grads:
            self.consecutive = 0
            return None
        self.consecutive += 1
        self.skipped += 1
        return "loss" if not math.isfinite(loss) else "gradient"

    def stop_message(self, step: int, loss: float, what: str) -> str | None:
        """The run-stopping message once `max_nonfinite` consecutive steps were bad, else None."""
        if self.consecutive < self.max_nonfinite:
            return None
        return (f"{self.consecutive} consecutive steps with a non-finite loss or gradient at step {step} "
                f"(max_nonfinite={self.max_nonfinite}; last loss {loss}, non-finite {what}); "
                f"stopping: lower the learning rate or check the data")
