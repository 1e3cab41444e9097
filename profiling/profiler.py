"""The profiler facade the trainer uses.

    prof = Profiler(run_dir, device, enabled=True, window_steps=20, nvml=True, flops_per_token=None)
    with prof.stage("step"):
        with prof.stage("forward"): ...
        with prof.stage("backward"): ...
    prof.step_end(step, tokens, model_flops, extra_flops=0.0)
    prof.close()

Per step it only enters/leaves stages (host clock, plus a CUDA event pair per stage on GPU) and
adds counters; every `window_steps` steps it closes a *window*: one `torch.cuda.synchronize` on
CUDA (never one per step), resolves the events, asks the sampler for the window's energy and
power/utilisation summary and appends one JSON line to RUN_DIR/profile_windows.jsonl.
`close()` flushes the last partial window, stops the sampler thread, rewrites the windows file
with MFU filled in, and writes RUN_DIR/profile_meta.json.

Window line (profile_windows.jsonl), all times in seconds:
    window, step_first, step_last, steps, t_start (since the profiler's first window), wall_s,
    timing ("cuda_events" | "perf_counter"),
    stages: {name: {inclusive_s, exclusive_s, calls}}   (device time on CUDA, host time on CPU)
    host_stages: same on the host clock (CUDA only),
    tracked_s = sum of exclusive_s, untracked_s = wall_s - tracked_s,
    tokens, model_flops, extra_flops, flops (= model + extra), achieved_flops_per_s (model FLOPs),
    mfu (model FLOPs / wall / (peak x world_size); filled in by close()),
    sampler: the sampler's window summary (energy_j, power_w_mean, per-GPU util/clock/reasons on
    NVML; cpu_time_s, rss, RAPL energy on CPU), cuda_max_memory_allocated_bytes (CUDA only).
Inclusive/exclusive/untracked are defined in profiling/timers.py; exclusive fractions plus the
untracked fraction sum to 1.

`tokens`, `model_flops` and `extra_flops` are for the whole step across all ranks (the global
batch); MFU divides by peak x world_size. Create the profiler with enabled=True on one rank per
node (rank 0): the NVML sampler then covers every GPU the process can see, i.e. the node.
"""
from __future__ import annotations

import json
import os
import platform
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from engine.runtime.jsonl import read_jsonl
from profiling import cost
from profiling.nvml import make_sampler
from profiling.timers import CudaEventTimer, HostTimer

_perf = time.perf_counter
_NULL = nullcontext()

WINDOWS_FILE = "profile_windows.jsonl"
META_FILE = "profile_meta.json"


def read_windows(run_dir) -> list[dict]:
    """The windows of RUN_DIR/profile_windows.jsonl, [] when there is none; a torn line (a run
    killed mid-write) is dropped."""
    try:
        return read_jsonl(Path(run_dir) / WINDOWS_FILE)
    except OSError:
        return []


class _Stage:
    __slots__ = ("_p", "_name")

    def __init__(self, prof: "Profiler", name: str) -> None:
        self._p = prof
        self._name = name

    def __enter__(self):
        p = self._p
        if p._t0 is None:
            p._start_window()
        p._host.push(self._name)
        if p._dev is not None:
            p._dev.push(self._name)
        return self

    def __exit__(self, *exc):
        p = self._p
        if p._dev is not None:
            p._dev.pop()
        p._host.pop()
        return False


class Profiler:
    """Windowed stage timing + hardware sampling. See the module docstring for the contract."""

    def __init__(self, run_dir, device, enabled: bool = True, window_steps: int = 20, nvml: bool = True,
                 flops_per_token: int | None = None, *, world_size: int | None = None,
                 sample_interval_s: float = 0.25, sampler=None) -> None:
        self.enabled = bool(enabled)
        if not self.enabled:
            return
        if window_steps < 1:
            raise ValueError(f"window_steps must be >= 1, got {window_steps}")
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        self.window_steps = int(window_steps)
        self.flops_per_token = flops_per_token
        if world_size is None:
            dist = torch.distributed
            world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.world_size = int(world_size)
        self._cuda = self.device.type == "cuda"
        self._host = HostTimer()
        self._dev = CudaEventTimer(self.device) if self._cuda else None
        self._sampler = sampler if sampler is not None else make_sampler(self.device, nvml=nvml,
                                                                         interval_s=sample_interval_s)
        self._sampler.start()
        self._windows: list[dict] = []
        self._previous = read_windows(self.run_dir)  # a resumed run's earlier windows
        self._resolved_previous = False
        self._session = 1 + max((w.get("session", 0) for w in self._previous), default=0)
        self._file = None
        self._closed = False
        self._origin: float | None = None
        self._t0: float | None = None
        self._reset_counters()

    # -- per step (hot path) -----------------------------------------------------------------
    def stage(self, name: str):
        """Context manager timing `name`; nests. A shared nullcontext when disabled or closed."""
        if not self.enabled or self._closed:
            return _NULL
        return _Stage(self, name)

    def step_end(self, step: int, tokens: int, model_flops: float | None = None, extra_flops: float = 0.0) -> None:
        """Count one finished step. `model_flops` defaults to flops_per_token * tokens."""
        if not self.enabled or self._closed:
            return
        if self._t0 is None:
            self._start_window()
        if model_flops is None:
            model_flops = (self.flops_per_token or 0) * tokens
        if not self._resolved_previous:
            self._resolve_previous(step)
        if self._steps == 0:
            self._step_first = step
        self._step_last = step
        self._steps += 1
        self._tokens += tokens
        self._model_flops += model_flops
        self._extra_flops += extra_flops
        if self._steps >= self.window_steps:
            self._close_window()

    # -- windows -----------------------------------------------------------------------------
    def _reset_counters(self) -> None:
        self._steps = 0
        self._tokens = 0
        self._model_flops = 0.0
        self._extra_flops = 0.0
        self._step_first = None
        self._step_last = None

    def _sync(self) -> None:
        if self._cuda:
            torch.cuda.synchronize(self.device)

    def _start_window(self) -> None:
        self._sync()
        self._t0 = _perf()
        if self._origin is None:
            self._origin = self._t0
        self._sampler.begin()
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def _close_window(self) -> None:
        self._sync()  # the one synchronisation of the window
        t1 = _perf()
        if not self._resolved_previous:
            self._resolve_previous(None)
        t0 = self._t0
        wall = t1 - t0
        host = self._host.drain()
        stages = self._dev.drain() if self._dev is not None else host
        tracked = sum(s["exclusive_s"] for s in stages.values())
        rec: dict[str, Any] = {
            "window": len(self._previous) + len(self._windows), "session": self._session,
            "step_first": self._step_first, "step_last": self._step_last,
            "steps": self._steps, "t_start": t0 - self._origin, "wall_s": wall,
            "timing": "cuda_events" if self._cuda else "perf_counter",
            "stages": stages, "tracked_s": tracked, "untracked_s": wall - tracked,
            "tokens": self._tokens, "model_flops": self._model_flops, "extra_flops": self._extra_flops,
            "flops": self._model_flops + self._extra_flops,
            "achieved_flops_per_s": cost.achieved_flops_per_s(self._model_flops, wall), "mfu": None,
        }
        if self._cuda:
            rec["host_stages"] = host
            rec["cuda_max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            rec["sampler"] = self._sampler.window(t0, t1)
        except Exception as e:  # never let measurement kill training
            rec["sampler"] = {"kind": getattr(self._sampler, "kind", "?"), "error": repr(e), "energy_j": None}
        self._windows.append(rec)
        self._write_line(rec)
        self._reset_counters()
        self._t0 = t1  # windows tile the run: the bookkeeping above is inside the next window
        rec["close_overhead_s"] = _perf() - t1

    def _resolve_previous(self, first_step: int | None) -> None:
        """On resume, keep the earlier session's windows that end before this session's first step
        (a restart from scratch, or steps redone after the last checkpoint, drop theirs)."""
        self._resolved_previous = True
        if first_step is not None:
            self._previous = [w for w in self._previous
                              if w.get("step_last") is not None and w["step_last"] < first_step]

    def _write_line(self, rec: dict) -> None:
        if self._file is None:
            if not self._resolved_previous:
                self._resolve_previous(None)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(self.run_dir / WINDOWS_FILE, "w")
            for w in self._previous:
                self._file.write(json.dumps(w) + "\n")
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()

    @property
    def windows(self) -> list[dict]:
        """Closed windows so far (empty when disabled)."""
        return list(self._windows) if self.enabled else []

    # -- end of run --------------------------------------------------------------------------
    def close(self) -> None:
        """Flush the last window, stop the sampler, write the windows file and the meta file."""
        if not self.enabled or self._closed:
            return
        try:
            if self._t0 is not None and (self._steps > 0 or self._host.depth == 0 and self._host._acc):
                self._close_window()
        finally:
            self._closed = True
            self._sampler.stop()
            if self._file is not None:
                self._file.close()
                self._file = None
        peak = cost.peak_flops(self.device)
        if not self._resolved_previous:
            self._resolve_previous(None)
        for w in self._windows:
            w["mfu"] = cost.mfu(w["model_flops"], w["wall_s"], peak["peak_flops_per_s"], self.world_size)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.run_dir / (WINDOWS_FILE + ".tmp")
        with open(tmp, "w") as f:
            for w in self._previous + self._windows:
                f.write(json.dumps(w) + "\n")
        os.replace(tmp, self.run_dir / WINDOWS_FILE)
        meta = self.meta(peak)
        with open(self.run_dir / META_FILE, "w") as f:
            json.dump(meta, f, indent=2)

    def meta(self, peak: dict | None = None) -> dict:
        peak = peak or cost.peak_flops(self.device)
        smeta = self._sampler.meta()
        real = dict(smeta.get("real", {}))
        real["stage_timing"] = "cuda_events" if self._cuda else "perf_counter"
        return {
            "device": str(self.device), "device_type": self.device.type, "device_name": peak["name"],
            "world_size": self.world_size,
            "peak_flops_per_s": peak["peak_flops_per_s"], "peak_source": peak["source"], "peak_dtype": peak["dtype"],
            "sampler": smeta, "sampler_kind": smeta["kind"], "sampler_reason": smeta.get("reason"),
            "real": real, "window_steps": self.window_steps, "windows": len(self._previous) + len(self._windows),
            "sessions": self._session,
            "flops_per_token": self.flops_per_token,
            "definitions": {
                "inclusive_s": "time inside the stage, children included",
                "exclusive_s": "inclusive minus direct children's inclusive; exclusive times never overlap",
                "untracked_s": "window wall time outside every stage; sum(exclusive)+untracked = wall",
                "mfu": "model FLOPs / wall seconds / (peak_flops_per_s x world_size)",
                "energy_j": "NVML total-energy counter difference at window edges (GPU), "
                            "RAPL package energy (CPU) or null",
            },
            "host": platform.node(), "torch": torch.__version__, "python": platform.python_version(),
        }

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):  # a forgotten close() must not leave a polling thread behind
        try:
            if self.enabled and not self._closed:
                self._sampler.stop()
        except Exception:
            pass
