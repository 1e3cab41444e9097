"""The one reader of run directories for analysis: what a finished run's files say, read without
anything else of this project but the JSON-lines reader (engine.runtime.jsonl, itself stdlib only).
A run directory holds run.json (the configuration and machine), metrics.jsonl (one line per
optimizer step, evaluations on the steps that evaluated) and final.json (written last: its
presence means the run finished)."""
from __future__ import annotations

from pathlib import Path

import json
import statistics

from engine.runtime.jsonl import read_jsonl, read_jsonl_tail


def full_budget(rung: dict) -> dict:
    """The final dict of a rung's largest budget run (for a scratch rung: its full budget)."""
    return max(rung["runs"], key=lambda r: r["budget_frac"])


def rung_cost(final: dict) -> float:
    """A run's FLOPs as method.md section 6 counts them: training, plus the Fisher its penalty used,
    plus the penalty's own work (the last two absent or None for a run without them)."""
    return final["flops"] + (final.get("fisher_flops") or 0.0) + (final.get("penalty_flops") or 0.0)


def eval_records(run: Path) -> list[dict]:
    """Every metrics.jsonl line of a run that carries an evaluation, in step order (a torn last
    line, from a run killed mid-write, is skipped by the reader)."""
    return [rec for rec in read_jsonl(Path(run) / "metrics.jsonl") if "val_loss" in rec]


def last_eval(run: Path) -> dict:
    """The last metrics.jsonl line of a run that carries an evaluation, or {} when none does."""
    evals = eval_records(run)
    return evals[-1] if evals else {}


def run_progress(run: Path) -> dict:
    """How far a run (finished or not) has got, from its files alone: finished (final.json), the last
    step logged, the steps it will take (run.json) and the median seconds per step over its last
    logged steps (None before any)."""
    run = Path(run)
    meta = json.loads((run / "run.json").read_text())
    tail = read_jsonl_tail(run / "metrics.jsonl") if (run / "metrics.jsonl").exists() else []
    dts = [r["dt"] for r in tail[-100:] if isinstance(r.get("dt"), (int, float))]
    return {"run": run, "finished": (run / "final.json").exists(), "total_steps": meta.get("total_steps"),
            "step": max((r.get("step", 0) for r in tail), default=0),
            "s_per_step": statistics.median(dts) if dts else None}
