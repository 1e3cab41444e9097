"""Profiling for ladder runs: per-stage time, FLOPs/MFU, energy and cost (project issue 5).

- `Profiler` (profiling/profiler.py): the facade the trainer uses; writes
  RUN_DIR/profile_windows.jsonl and RUN_DIR/profile_meta.json.
- profiling/timers.py: nested inclusive/exclusive stage timers (host clock, CUDA events).
- profiling/nvml.py: background samplers (NVML on GPUs; CPU time, RSS, RAPL otherwise).
- profiling/cost.py: FLOPs, MFU, peak FLOP/s, GPU-hours, dollars, kWh, ladder projections.
- profiling/report.py: `python -m profiling.report RUN_DIR` -> profile.json, profile.md, PNG;
  `build_profile(run_dir)` and `write_report(run_dir)` (imported lazily: it needs matplotlib).
"""
from profiling.profiler import META_FILE, WINDOWS_FILE, Profiler

__all__ = ["Profiler", "WINDOWS_FILE", "META_FILE", "build_profile", "write_report"]


def __getattr__(name):
    if name in ("build_profile", "write_report"):
        from profiling import report

        return getattr(report, name)
    raise AttributeError(name)
