"""The one reader of run directories for analysis: what a finished run's files say, read without
anything else of this project. A run directory holds run.json (the configuration and machine),
metrics.jsonl (one line per optimizer step, evaluations on the steps that evaluated) and
final.json (written last: its presence means the run finished)."""
from __future__ import annotations

import json
from pathlib import Path


def full_budget(rung: dict) -> dict:
    """The final dict of a rung's largest budget run (for a scratch rung: its full budget)."""
    return max(rung["runs"], key=lambda r: r["budget_frac"])


def rung_cost(final: dict) -> float:
    """A run's FLOPs: training, plus the Fisher its penalty used, plus the penalty's own work."""
    return final["flops"] + final.get("fisher_flops", 0.0) + final.get("penalty_flops", 0.0)


def last_eval(run: Path) -> dict:
    evals = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"val_loss"' in l]
    return evals[-1] if evals else {}
