"""Profiling test helpers: the sampler threads alive, a run's profile windows, a pynvml stand-in."""
from __future__ import annotations

import json
import threading
import types
from pathlib import Path

from profiling.profiler import WINDOWS_FILE


def sampler_threads():
    return [t for t in threading.enumerate() if t.name == "profiling-sampler"]


def read_profile_windows(d: Path):
    return [json.loads(line) for line in (d / WINDOWS_FILE).read_text().splitlines()]


def fake_pynvml(fail_after: int | None = None, gpus: int = 2, energy_step_mj: int = 1000):
    """A pynvml stand-in. Every query counts; after `fail_after` queries everything raises."""
    nv = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    state = {"calls": 0, "energy": [10_000] * gpus, "shutdown": 0, "init": 0}

    def q(fn):
        def wrapped(*a):
            state["calls"] += 1
            if fail_after is not None and state["calls"] > fail_after:
                raise NVMLError("GPU is lost")
            return fn(*a)
        return wrapped

    def energy(h):
        state["energy"][h] += energy_step_mj
        return state["energy"][h]

    nv.NVMLError = NVMLError
    nv.NVML_CLOCK_SM = 1
    nv.nvmlClocksEventReasonGpuIdle = 1
    nv.nvmlClocksEventReasonSwPowerCap = 4
    nv.nvmlInit = lambda: state.__setitem__("init", state["init"] + 1)
    nv.nvmlShutdown = lambda: state.__setitem__("shutdown", state["shutdown"] + 1)
    nv.nvmlDeviceGetCount = lambda: gpus
    nv.nvmlDeviceGetHandleByIndex = lambda i: i
    nv.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    nv.nvmlDeviceGetTotalEnergyConsumption = q(energy)
    nv.nvmlDeviceGetPowerUsage = q(lambda h: 350_000)
    nv.nvmlDeviceGetUtilizationRates = q(lambda h: types.SimpleNamespace(gpu=90, memory=40))
    nv.nvmlDeviceGetMemoryInfo = q(lambda h: types.SimpleNamespace(used=2 ** 30, total=80 * 2 ** 30))
    nv.nvmlDeviceGetClockInfo = q(lambda h, c: 1980)
    nv.nvmlDeviceGetCurrentClocksEventReasons = q(lambda h: 4)
    nv._state = state
    return nv
