"""The non-finite-step guard and the host sync: a step whose loss or gradient holds a NaN or Inf
is skipped and counted, and `max_nonfinite` consecutive ones stop the run with a clear message.

Two ways to read each step's verdict (`host_sync`); `HostSync` is the one place they differ:

- "step": the host reads the step's [loss, bad-gradient flag] before the optimizer step and
  simply does not call it on a bad step. One host sync per step: free on CPU, where every
  tensor is already on the host (the default there). ARS runs on the host (engine/inherit/ars.ARS).
- "lagged": no per-step host sync (the default on CUDA). The verdict stays on the device as
  `found_inf`, which the optimizer kernels take (ours and torch's fused AdamW alike): a bad step
  is a no-op decided on the device, so no NaN ever reaches the weights, the moments or the
  Fisher. Its values are copied to pinned host memory without waiting and read one step later,
  after the next step's forward and backward are queued, so the GPU always has work while the
  host waits. Host-side bookkeeping of a skipped step (the optimizer's step count, ARS's window
  count) is then undone, before the next optimizer step uses it. Evaluation, checkpoint and
  final steps are read at once (they sync anyway), so a checkpoint always holds settled state.
  ARS runs on the device (engine/inherit/ars.ARSDevice).

Both modes give the same run bitwise on CPU (tests/engine/train/test_guard.py), ARS aside: the device
ARS's jitter stream differs from the host one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.inherit.ars import ARS, ARSDevice
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


@dataclass
class StepRecord:
    """One optimizer step whose verdict may not be read yet: what its metrics line says, and its
    device values ([loss, bad-gradient flag, penalty or a filler, damping when it is a device
    tensor]) in one small copy."""

    step: int  # 1-based
    lr: float
    lr_mult: float
    tokens: int  # consumed after this step
    dt: float  # host seconds the step took to launch (and run, when nothing is lagged)
    values: DeviceValues
    host_damping: float | None  # the ARS factor when it is a host float (not among `values`)
    has_penalty: bool
    fishing: bool  # the step accumulated the online Fisher (if it was not skipped)
    teacher_weight: float = 0.0  # the distillation weight of the step (> 0: the teacher ran; its FLOPs count)

    def read(self) -> tuple[float, float, float | None, float]:
        """(loss, bad-gradient flag, penalty or None, ARS damping); waits for the copy only."""
        loss, bad_grads, penalty, *damping = self.values.read()
        return loss, bad_grads, penalty if self.has_penalty else None, damping[0] if damping else self.host_damping


@dataclass
class UpdatePlan:
    """How the optimizer step runs: at all (`apply`), with which device skip flag, which damping."""

    apply: bool
    found_inf: Tensor | None
    damping: float | Tensor


class HostSync:
    """When the host reads each step's verdict, "step" or "lagged" (module docstring), and the ARS
    that goes with it. The trainer asks it, per step: `previous()` (a lagged step to settle now),
    `plan(...)` (how to run this step's update) and `hold(...)` (settle now or next step); and after
    a skipped step, `undo_skipped()`."""

    def __init__(self, mode: str, optimizer, *, ars_mode: str, seed: int, device: torch.device):
        self.mode = mode
        self.lagged = mode == "lagged"
        self.optimizer = optimizer
        self.ars = None
        if ars_mode != "off":  # lagged never reads the loss on the host: its ARS runs on the device
            self.ars = (ARSDevice(mode=ars_mode, seed=seed, device=device) if self.lagged
                        else ARS(mode=ars_mode, seed=seed))
        self.pending: StepRecord | None = None

    def previous(self) -> StepRecord | None:
        """The lagged step before this one, to settle now: its flags were computed before this
        step's forward, and its host counts must be right before this step's update uses them."""
        record, self.pending = self.pending, None
        return record

    def plan(self, flags: Tensor, lr: float, timed) -> UpdatePlan:
        """From the step's reduced `step_flags`: lagged lets the device skip a bad step; step reads
        the flags and leaves the optimizer out on a bad step. `timed(name)` times the ARS update."""
        if self.lagged:
            skip = found_inf(flags)  # a bad step becomes a no-op on the device
            with timed("ars"):
                damping = self.ars.update(flags[0], lr, ok=skip == 0) if self.ars is not None else 1.0
            return UpdatePlan(True, skip, damping)
        loss, bad_grads = flags.tolist()  # one host read per step (free on CPU)
        good, damping = math.isfinite(loss) and not bad_grads, 1.0
        if good and self.ars is not None:
            with timed("ars"):
                damping = self.ars.update(loss, lr)
        return UpdatePlan(good, None, damping)

    def hold(self, record: StepRecord, read_now: bool) -> StepRecord | None:
        """The record to settle now, or None when lagged keeps it for the next step (`read_now`:
        an evaluation or checkpoint step, which syncs anyway)."""
        if self.lagged and not read_now:
            self.pending = record
            return None
        return record

    def undo_skipped(self) -> None:
        """A skipped step's host bookkeeping: lagged counted it (optimizer step, ARS window) before
        its verdict was known; step never ran it."""
        if self.lagged:
            self.optimizer.unstep()
            if self.ars is not None:
                self.ars.rollback()
