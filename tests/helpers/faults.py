"""Faults injected into the code under test: a full disk's OSError, token ids overwritten in place
in a data cache file, non-finite losses and gradients in chosen training steps."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import torch

from models.gpt import GPT


def enospc(path="somewhere") -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def overwrite_tokens(path: Path, at: int, values, dtype=np.uint16):
    a = np.memmap(path, dtype=dtype, mode="r+")
    a[at: at + len(values)] = values
    a.flush()
    del a


class InfGrad(torch.autograd.Function):
    """Identity forward; an Inf gradient backward (a finite loss with an overflowed gradient)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


def inject_nonfinite(monkeypatch, bad_steps: set[int], kind: str = "nan-loss"):
    """Make the training forward of the 1-based optimizer steps in `bad_steps` non-finite
    (accumulation 1 in these tests: one training forward per step)."""
    orig = GPT.forward
    calls = {"n": 0}

    def forward(self, idx, targets=None, reduction="mean"):
        out = orig(self, idx, targets, reduction)
        if self.training and targets is not None:
            calls["n"] += 1
            if calls["n"] in bad_steps:
                if kind == "nan-loss":
                    return out * float("nan")
                if kind == "inf-loss":
                    return out + float("inf")
                return InfGrad.apply(out)
        return out

    monkeypatch.setattr(GPT, "forward", forward)
    return calls
