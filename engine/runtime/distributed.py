"""Process group, device and FSDP2 in one place. The model never sees any of this (torchtitan's
rule): `shard_model` wraps an untouched GPT from outside.

The same script runs as `python ...` (one process, no process group) or under `torchrun` (world
size from the environment): NCCL on CUDA, gloo on CPU. FSDP2 is applied whenever world size > 1.
"""
from __future__ import annotations

import datetime
import os
import platform
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None  # None when running as a single process without a process group
    mesh: object | None = None  # DeviceMesh when world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def device_name(dev: torch.device) -> str:
    """Human-readable device name for run metadata, profiles and benchmark tables: the GPU's name,
    or the CPU model and its core count."""
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    model = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


DEVICES = ("auto", "cpu", "cuda")  # --device


def resolve_device(pref: str) -> torch.device:
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if pref not in DEVICES:
        raise ValueError(f"--device must be auto, cpu or cuda; got {pref!r}")
    if pref == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but torch.cuda.is_available() is False")
    return torch.device(pref)


def init_distributed(device_pref: str = "auto") -> DistEnv:
    """Read torchrun's environment; start the process group once (idempotent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world == 1:
        return DistEnv(rank, local_rank, 1, device, None)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    from torch.distributed.device_mesh import init_device_mesh  # multi-process runs only

    # Pass the device type explicitly: on a machine that also has GPUs a CPU run must get a CPU mesh.
    mesh = init_device_mesh(device.type, (world,))
    return DistEnv(rank, local_rank, world, device, backend, mesh)


def shard_model(model: torch.nn.Module, env: DistEnv, bf16: bool) -> torch.nn.Module:
    """FSDP2: fully_shard each block, then the root (torchtitan's recipe). On CUDA with bf16 the
    policy keeps fp32 master weights, computes in bf16 and reduces gradients in fp32."""
    if env.world_size == 1:
        return model
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # multi-process runs only

    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
          else MixedPrecisionPolicy())
    for block in model.blocks:
        fully_shard(block, mesh=env.mesh, mp_policy=mp)
    fully_shard(model, mesh=env.mesh, mp_policy=mp)
    return model


def resolve_compile(flag: bool | None, device: torch.device) -> bool:
    """--compile / --no-compile; unset: on for CUDA, off on CPU. On CUDA the eager blocks launch
    a kernel per elementwise op (rotary, norms, ReLU^2, residual adds) and the compiled ones fuse
    them; on CPU compilation costs minutes of the 2 cores and the CPU runs are pinned bitwise to
    eager results."""
    return device.type == "cuda" if flag is None else bool(flag)


def compile_blocks(model: torch.nn.Module, **compile_kwargs) -> torch.nn.Module:
    """torch.compile each block in place, before FSDP2 shards it (torchtitan's order): one
    compiled graph per block is reused by every layer (same shapes), FSDP2's all-gather and
    reduce-scatter hooks stay outside the graphs, and `Module.compile` keeps parameter names
    (no `_orig_mod.` prefix), so checkpoints, growth and penalties see the same state dict.
    The loss head stays eager: models/loss.py already keeps it to one bf16 [B, T, V] tensor."""
    for block in model.blocks:
        block.compile(**compile_kwargs)
    return model


def local(t: torch.Tensor) -> torch.Tensor:
    """The rank-local storage of a (possibly DTensor) tensor; in-place updates on it update the
    parameter. FSDP2 parameters are DTensors sharded on dim 0."""
    return t._local_tensor if hasattr(t, "_local_tensor") else t


def shard_like(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a full (unsharded) tensor, laid out exactly as `param` is."""
    if not hasattr(param, "device_mesh"):
        return full.to(param.device)
    from torch.distributed.tensor import distribute_tensor  # only sharded (DTensor) parameters get here

    return distribute_tensor(full.to(local(param).device), param.device_mesh, param.placements).to_local()


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """Gather a DTensor to a full tensor on every rank (a no-op for plain tensors)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """In-place sum over ranks (NCCL needs the tensor on the GPU; gloo takes CPU tensors)."""
    if env.distributed:
        x = t.to(env.device) if env.backend == "nccl" and t.device.type != "cuda" else t
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        if x is not t:
            t.copy_(x)
    return t


def barrier(env: DistEnv):
    if env.distributed:
        dist.barrier()


def broadcast_object(obj, env: DistEnv, src: int = 0):
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def destroy(env: DistEnv):
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()
