"""Causal self-attention kernels: flash-attn when it can run, else torch's SDPA.

Layout everywhere in this module: q, k, v are [batch, seq, heads, head_dim] (flash-attn's
layout); SDPA wants [batch, heads, seq, head_dim], so it is transposed around the call.

Order of preference on CUDA: FA3 (`flash_attn_interface`, Hopper only), FA2 (`flash_attn`),
SDPA (which has its own flash/cuDNN kernels on GPU). On CPU: SDPA. `LADDER_ATTENTION` forces one
of `fa3|fa2|sdpa`; forcing a backend that cannot run is an error, never a silent fallback.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

BACKENDS = ("fa3", "fa2", "sdpa")


@dataclass(frozen=True)
class AttentionBackend:
    name: str
    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _sdpa(q, k, v):
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
    return out.transpose(1, 2)


def _load_fa3():
    mod = importlib.import_module("flash_attn_interface")

    def fa3(q, k, v):
        out = mod.flash_attn_func(q, k, v, causal=True)
        return out[0] if isinstance(out, tuple) else out  # some FA3 builds also return the LSE

    return fa3


def _load_fa2():
    mod = importlib.import_module("flash_attn")

    def fa2(q, k, v):
        return mod.flash_attn_func(q, k, v, causal=True)

    return fa2


def _try(loader):
    try:
        return loader()
    except Exception:  # ImportError, or a build that fails to load its CUDA library
        return None


def select_backend(device: torch.device | str, dtype: torch.dtype = torch.float32) -> AttentionBackend:
    """Pick the attention backend for a device (and compute dtype; flash-attn is fp16/bf16 only)."""
    device = torch.device(device)
    forced = os.environ.get("LADDER_ATTENTION", "").strip().lower()
    if forced and forced not in BACKENDS:
        raise ValueError(f"LADDER_ATTENTION={forced!r}; expected one of {BACKENDS}")
    flash_ok = device.type == "cuda" and dtype in (torch.bfloat16, torch.float16)
    hopper = flash_ok and torch.cuda.get_device_capability(device)[0] == 9
    candidates = [forced] if forced else (["fa3"] if hopper else []) + (["fa2"] if flash_ok else []) + ["sdpa"]
    for name in candidates:
        if name == "sdpa":
            return AttentionBackend("sdpa", _sdpa)
        if not flash_ok:
            raise RuntimeError(f"LADDER_ATTENTION={name} needs CUDA with bf16/fp16 compute; got {device.type}/{dtype}")
        fn = _try(_load_fa3 if name == "fa3" else _load_fa2)
        if fn is not None:
            return AttentionBackend(name, fn)
        if forced:
            raise RuntimeError(f"LADDER_ATTENTION={name} but its module could not be imported")
    raise AssertionError("unreachable: sdpa is always a candidate")


SDPA = AttentionBackend("sdpa", _sdpa)
