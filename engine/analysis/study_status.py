"""A study's progress read from its directory alone (`launch/study.py --status --out OUT`): the
protocol's status and tuned values, then per phase (OUT/tune, OUT/seed<k>) how many runs finished
and, for each run under way, its step, its pace over its last logged steps, the time its remaining
steps take at that pace, and when it last wrote (a run not written for long was interrupted: rerun
the study's command). Runs the study has not started are not known here (a bracket may still
extend), so no total is promised. Reads files only; safe beside a running study.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from engine.analysis.runs import run_progress


def _duration(seconds: float) -> str:
    m = round(seconds / 60)
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{m} min"


def _phases(out: Path) -> list[Path]:
    """OUT/tune first, then OUT/seed<k> in seed order."""
    seeds = sorted((p for p in out.glob("seed*") if p.is_dir() and p.name[4:].isdigit()), key=lambda p: int(p.name[4:]))
    return [p for p in [out / "tune"] if p.is_dir()] + seeds


def _run_line(p: dict, out: Path, now: float) -> str:
    metrics = p["run"] / "metrics.jsonl"
    since = now - metrics.stat().st_mtime if metrics.exists() else None
    left = ""
    if p["s_per_step"] is not None and p["total_steps"]:
        left = f", ~{_duration((p['total_steps'] - p['step']) * p['s_per_step'])} left at {p['s_per_step']:.2f} s/step"
    wrote = "" if since is None else f"; last written {_duration(since)} ago"
    return f"  {p['run'].relative_to(out)}: step {p['step']}/{p['total_steps']}{left}{wrote}"


def read_study_protocol(out) -> dict:
    """OUT/protocol.json of the study in `out`; a directory without one is refused by name."""
    path = Path(out) / "protocol.json"
    if not path.is_file():
        raise ValueError(f"{out} holds no study (no protocol.json): give the --out of a study")
    return json.loads(path.read_text())


def study_status(out) -> list[str]:
    """The status lines of the study in `out` (module docstring); a directory without a study's
    protocol.json is refused by name."""
    out = Path(out)
    protocol = read_study_protocol(out)
    settings = protocol["settings"]
    lines = [f"study {out}: {protocol['status']}; depths {settings['depths']}, recipes "
             f"{', '.join(settings['recipes'])}, tuning seed {settings['tune_seed']}, measured seeds "
             f"{', '.join(map(str, settings['seeds']))}"]
    tuned = protocol.get("tuned")
    if tuned:
        lines.append("  tuned: scratch " + ", ".join(f"d{d} x{m:g}" for d, m in tuned["scratch_lr_mult"].items())
                     + "; " + "; ".join(f"{r} " + ", ".join(f"d{d} x{m:g}" for d, m in per.items())
                                        for r, per in tuned["inherit_lr_mult"].items()))
    now = time.time()
    for phase in _phases(out):
        progress = [run_progress(r.parent) for r in sorted(phase.rglob("run.json"))]
        going = [p for p in progress if not p["finished"]]
        lines.append(f"{phase.name}: {len(progress) - len(going)} run(s) finished, {len(going)} under way or "
                     f"interrupted")
        lines += [_run_line(p, out, now) for p in going]
    if (out / "report.md").is_file():
        lines.append(f"report: {out / 'report.md'}")
    return lines
