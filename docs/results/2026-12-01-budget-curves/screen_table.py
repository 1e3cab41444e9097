"""The recipe screen's table: every grown arm of one seed directory against its scratch d3, with the
savings computed by engine/analysis/savings.py from the runs' final.json files.

    .venv/bin/python docs/results/2026-12-01-budget-curves/screen_table.py runs/r8/seed0 [--depth 3]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from engine.analysis.runs import rung_cost  # noqa: E402
from engine.analysis.savings import REACHED, Reach, rung_saving  # noqa: E402


def curve(rung: Path) -> list[tuple[float, float, float]]:
    """(budget, cost, val loss) of every finished budget run of a rung directory."""
    out = []
    for run in sorted(rung.glob("b*")):
        if (run / "final.json").exists():
            f = json.loads((run / "final.json").read_text())
            out.append((float(run.name[1:]), rung_cost(f), f["val_loss"]))
    return sorted(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("seed_dir")
    p.add_argument("--depth", type=int, default=3)
    a = p.parse_args()
    root, d = Path(a.seed_dir), a.depth
    scratch = curve(root / "scratch" / f"d{d}")
    _, s_cost, s_loss = scratch[-1]
    parent = rung_cost(json.loads((root / "scratch" / f"d{d - 1}" / "b1" / "final.json").read_text()))
    print(f"| recipe | loss at 0.5 | loss at 1.0 | FLOPs-to-match (of scratch) | marginal saving | standalone |")
    print("|---|---|---|---|---|---|")
    print(f"| scratch d{d} | {dict((b, l) for b, _, l in scratch)[0.5]:.4f} | {s_loss:.4f} | 1 | — | — |")
    for arm in sorted(p for p in root.iterdir() if p.name.startswith("grow-only") and (p / f"d{d}").is_dir()):
        pts = curve(arm / f"d{d}")
        if len(pts) < 2:
            continue
        s = rung_saving([(c, l) for _, c, l in pts], s_cost, s_loss, parent)
        frac = Reach(s["status"], s["fraction"]).describe()
        by = dict((b, l) for b, _, l in pts)
        ok = s["status"] == REACHED
        print(f"| {arm.name} | {by.get(0.5, float('nan')):.4f} | {by.get(1.0, float('nan')):.4f} | {frac} | "
              f"{s['marginal_saving']:.1%}{'' if ok else ' (bound)'} | {s['standalone_saving']:.1%}{'' if ok else ' (bound)'} |")


if __name__ == "__main__":
    main()
