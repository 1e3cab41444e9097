"""Profiling for ladder runs: per-stage time, FLOPs/MFU, energy and cost.

- `Profiler` (profiling/profiler.py): the facade the trainer uses; writes
  RUN_DIR/profile_windows.jsonl and RUN_DIR/profile_meta.json.
- profiling/timers.py: nested inclusive/exclusive stage timers (host clock, CUDA events).
- profiling/nvml.py: background samplers (NVML on GPUs; CPU time, RSS, RAPL otherwise).
- profiling/cost.py: FLOPs, MFU, peak FLOP/s, GPU-hours, dollars, kWh, ladder projections.
This package is a low layer the trainer uses: it imports nothing above engine/runtime. The
report that reads finished runs' profile files lives with the analysis, above the trainer:
engine/analysis/profile_report.py (`python -m engine.analysis.profile_report RUN_DIR`).
"""
from profiling.profiler import META_FILE, WINDOWS_FILE, Profiler

__all__ = ["Profiler", "WINDOWS_FILE", "META_FILE"]
