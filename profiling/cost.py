"""Cost arithmetic: FLOPs, MFU, peak FLOP/s, GPU-hours, dollars, energy, ladder projections.

Pure functions (except the peak probes, which time a matmul once per process and cache it). A
device's name is engine.runtime.distributed.device_name, the one the run's own files record.
Conventions:
- FLOPs are training FLOPs (forward + backward), as `GPTConfig.flops_per_token` counts them.
- MFU = achieved FLOP/s / (peak FLOP/s per device x devices), with the *model* FLOPs only
  (extra work such as Fisher passes is reported beside it, not inside it, so MFU stays
  comparable between arms).
- Peak FLOP/s of a GPU: the vendor's dense bf16 tensor-core figure (no sparsity). On CPU there is
  no useful spec number, so the practical fp32 peak is measured by a matmul probe.
"""
from __future__ import annotations

import math
import time
from functools import lru_cache
from typing import Iterable

import torch

from engine.runtime.distributed import device_name
from models.config import model_config

DEFAULT_PRICE_PER_GPU_HOUR = 3.0  # $; nanochat's 8xH100 node is ~$24/hour
NANOCHAT_NODE_GPUS = 8
H100_SXM_TDP_W = 700.0  # board power limit; an upper bound used only for projected energy
J_PER_KWH = 3.6e6

# Dense bf16 tensor-core peaks (vendor spec sheets, without sparsity), matched against the NVML /
# torch device name. Order matters: the first rule whose substrings all occur wins.
PEAK_TABLE: tuple[tuple[tuple[str, ...], float, str], ...] = (
    (("H100", "PCIE"), 756e12, "H100 PCIe dense bf16 (spec)"),
    (("H100", "NVL"), 835e12, "H100 NVL dense bf16 (spec)"),
    (("H100",), 989e12, "H100 SXM dense bf16 (spec)"),
    (("H200",), 989e12, "H200 dense bf16 (spec)"),
    (("H800",), 989e12, "H800 SXM dense bf16 (spec)"),
    (("A100",), 312e12, "A100 dense bf16 (spec)"),
)


def model_flops(flops_per_token: float, tokens: float) -> float:
    """Training FLOPs of the model on `tokens` tokens: flops_per_token * tokens."""
    return float(flops_per_token) * float(tokens)


def stage_flops(model: float, fisher: float = 0.0, penalty: float = 0.0) -> dict[str, float]:
    """FLOPs per stage and their total. `model` covers forward+backward of the training steps;
    `fisher` the extra passes that estimate Omega; `penalty` the penalty's elementwise work."""
    out = {"model": float(model), "fisher": float(fisher), "penalty": float(penalty)}
    out["total"] = out["model"] + out["fisher"] + out["penalty"]
    return out


def achieved_flops_per_s(flops: float, seconds: float) -> float | None:
    """FLOP/s over a wall-clock interval (None for an empty interval)."""
    return float(flops) / seconds if seconds and seconds > 0 else None


def mfu(flops: float, seconds: float, peak_flops_per_s: float | None, n_devices: int = 1) -> float | None:
    """Model FLOPs utilisation: (flops / seconds) / (peak_flops_per_s * n_devices).

    None when the peak is unknown or the interval is empty."""
    if not peak_flops_per_s or not seconds or seconds <= 0 or n_devices < 1:
        return None
    return float(flops) / seconds / (float(peak_flops_per_s) * n_devices)


def gpu_hours(wall_seconds: float, n_gpus: int = 1) -> float:
    """Device-hours: wall seconds x devices / 3600."""
    return float(wall_seconds) * n_gpus / 3600.0


def dollars(gpu_hours_: float, price_per_gpu_hour: float = DEFAULT_PRICE_PER_GPU_HOUR) -> float:
    """Rental cost of `gpu_hours_` GPU-hours at `price_per_gpu_hour` dollars each."""
    return float(gpu_hours_) * float(price_per_gpu_hour)


def kwh(joules: float) -> float:
    """Joules -> kilowatt-hours (1 kWh = 3.6e6 J)."""
    return float(joules) / J_PER_KWH


def peak_from_name(name: str) -> tuple[float | None, str]:
    """(peak dense-bf16 FLOP/s, how it was obtained) for a GPU name; (None, reason) if unknown."""
    up = (name or "").upper()
    for needles, peak, label in PEAK_TABLE:
        if all(n in up for n in needles):
            return peak, f"spec table: {label}"
    return None, f"no spec entry for device name {name!r}"


@lru_cache(maxsize=None)
def _probe(device_str: str, n: int, reps: int, dtype_name: str) -> float:
    dev = torch.device(device_str)
    dtype = getattr(torch, dtype_name)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dev, dtype)
    b = torch.randn(n, n, generator=g).to(dev, dtype)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda *a: None)
    a @ b  # warm-up (threads, kernels)
    sync()
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best


def measure_matmul_peak(device="cpu", n: int = 1024, reps: int = 5, dtype: str = "float32") -> float:
    """Practical peak FLOP/s from the best of `reps` n x n @ n x n matmuls (2 n^3 FLOPs each).
    Cached per process and arguments."""
    return _probe(str(device), int(n), int(reps), dtype)


def peak_flops(device) -> dict:
    """{'name', 'peak_flops_per_s', 'source', 'dtype'} for a torch device.

    GPU: the spec table by name; unknown GPUs fall back to a bf16 4096^3 matmul probe.
    CPU: an fp32 1024^3 matmul probe ("measured by probe")."""
    device = torch.device(device)
    dev_type = device.type
    name = device_name(device)
    if dev_type == "cuda":
        peak, src = peak_from_name(name)
        if peak is not None:
            return {"name": name, "peak_flops_per_s": peak, "source": src, "dtype": "bfloat16 dense"}
        p = measure_matmul_peak(device, n=4096, reps=5, dtype="bfloat16")
        return {"name": name, "peak_flops_per_s": p, "dtype": "bfloat16",
                "source": f"measured by probe (best of 5 bf16 4096^3 matmuls); {src}"}
    p = measure_matmul_peak("cpu", n=1024, reps=5, dtype="float32")
    return {"name": name, "peak_flops_per_s": p, "dtype": "float32",
            "source": "measured by probe (best of 5 fp32 1024^3 matmuls, cached per process)"}


# ------------------------------------------------------------------------------------------
# the seeds' ladder (nanochat d10..d20 at ratio 8 on 8xH100)
# ------------------------------------------------------------------------------------------


def ladder_flops(preset: str = "nanochat", depths: Iterable[int] = range(10, 21), ratio: float = 8.0) -> list[dict]:
    """Per rung: scaling params N, FLOPs/token, tokens = ratio * N and FLOPs = FLOPs/token * tokens."""
    out = []
    for d in depths:
        c = model_config(preset, int(d))
        n = c.scaling_params
        tokens = ratio * n
        out.append({"depth": int(d), "scaling_params": n, "flops_per_token": c.flops_per_token,
                    "tokens": tokens, "flops": c.flops_per_token * tokens})
    return out


def project_cost(flops: float, mfu_: float, peak_flops_per_s: float = 989e12, n_gpus: int = NANOCHAT_NODE_GPUS,
                 price_per_gpu_hour: float = DEFAULT_PRICE_PER_GPU_HOUR, watts_per_gpu: float = H100_SXM_TDP_W) -> dict:
    """Time and money to run `flops` at utilisation `mfu_` on `n_gpus` GPUs of peak `peak_flops_per_s`.

    gpu_seconds = flops / (mfu * peak); wall = gpu_seconds / n_gpus; energy = gpu_seconds * watts."""
    if mfu_ <= 0 or peak_flops_per_s <= 0:
        raise ValueError("mfu and peak must be positive")
    gpu_s = float(flops) / (mfu_ * peak_flops_per_s)
    gh = gpu_s / 3600.0
    return {"flops": float(flops), "mfu": mfu_, "peak_flops_per_s": peak_flops_per_s, "n_gpus": n_gpus,
            "gpu_hours": gh, "wall_hours": gh / n_gpus, "dollars": dollars(gh, price_per_gpu_hour),
            "price_per_gpu_hour": price_per_gpu_hour, "watts_per_gpu": watts_per_gpu,
            "energy_kwh": kwh(gpu_s * watts_per_gpu)}


def project_ladder(mfu_: float, fraction: float = 1.0, preset: str = "nanochat", depths: Iterable[int] = range(10, 21),
                   ratio: float = 8.0, **kw) -> dict:
    """The seeds' ladder from scratch (fraction=1) or at `fraction` of its FLOPs (e.g. the measured
    inherit/scratch FLOPs ratio), projected with `project_cost`."""
    rungs = ladder_flops(preset, depths, ratio)
    total = sum(r["flops"] for r in rungs) * fraction
    out = project_cost(total, mfu_, **kw)
    out.update({"preset": preset, "depths": [r["depth"] for r in rungs], "ratio": ratio,
                "fraction_of_scratch_flops": fraction, "rungs": rungs})
    return out
