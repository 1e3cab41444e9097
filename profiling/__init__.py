"""Profiling for ladder runs: per-stage time, FLOPs/MFU, energy and cost.

- `Profiler` (profiling/profiler.py): the facade the trainer uses; writes
  RUN_DIR/profile_windows.jsonl and RUN_DIR/profile_meta.json.
- profiling/timers.py: nested inclusive/exclusive stage timers (host clock, CUDA events).
- profiling/nvml.py: background samplers (NVML on GPUs; CPU time, RSS, RAPL otherwise).
- profiling/cost.py: FLOPs, MFU, peak FLOP/s, GPU-hours, dollars, kWh, ladder projections.
- profiling/report.py: `python -m profiling.report RUN_DIR` -> profile.json, profile.md, PNG;
  `build_profile(run_dir)` and `write_report(run_dir)`. It reads finished runs and sits in the
  analysis layer, above the trainer, so this package does not import it: import profiling.report.
"""
from profiling.profiler import META_FILE, WINDOWS_FILE, Profiler

__all__ = ["Profiler", "WINDOWS_FILE", "META_FILE"]
