"""The growth study's tables, computed from the runs' final.json files by engine/analysis/savings.py.

    # the scratch LR sweep: full-budget val loss per depth, LR multiplier and seed
    .venv/bin/python docs/results/2026-12-01-growth-study/study_table.py lr runs/r8 runs/r8-lr
    # every grown recipe against the scratch rungs of the same OUT, per seed and mean [95% t-interval]
    .venv/bin/python docs/results/2026-12-01-growth-study/study_table.py recipes runs/r8-lr/m2 [--depth 3]

An OUT of the miniseries holds seed<s>/ folders; runs/r8 is the preset's LR (multiplier 1), and
runs/r8-lr/m<x>/ the sweep's other multipliers. A folder seed<s>-<tag>/ (a penalty setting run with
its own OUT, run.sh's OUT=...) counts as seed s, its arms named <arm>@<tag>.

The last columns are paired: a recipe's cooled val loss minus plain grow-only's of the same seed at
the same budget (half and full), the measure least affected by seed-to-seed noise.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "2026-12-01-budget-curves"))

from engine.analysis.runs import rung_cost  # noqa: E402
from engine.analysis.savings import REACHED, Reach, mean_ci, rung_saving  # noqa: E402
from screen_table import curve  # noqa: E402  (budget, cost, val loss) of a rung's finished budget runs

BUDGETS = (0.25, 0.5, 0.75, 1.0)


def seeds(out: Path) -> list[Path]:
    return sorted(p for p in out.glob("seed*") if p.is_dir() and p.name[4:].isdigit())


def tagged_seeds(out: Path) -> list[tuple[str, str, Path]]:
    """(seed, tag or "", folder) of every seed<s>/ and seed<s>-<tag>/ folder of an OUT."""
    found = []
    for p in sorted(out.glob("seed*")):
        seed, _, tag = p.name[4:].partition("-")
        if p.is_dir() and seed.isdigit():
            found.append((seed, tag, p))
    return found


def interval(values: list[float], fmt: str) -> str:
    ci = mean_ci(values)
    if ci["lo"] is None:
        return f"{fmt.format(ci['mean'])} (1 seed)"
    return f"{fmt.format(ci['mean'])} [{fmt.format(ci['lo'])}, {fmt.format(ci['hi'])}]"


def lr_table(preset_out: Path, sweep_out: Path) -> None:
    """One row per depth and multiplier: the cooled loss at every scratch budget, per seed."""
    outs = {1.0: preset_out} | {float(p.name[1:]): p for p in sweep_out.glob("m*") if p.is_dir()}
    print("| depth | LR multiplier | seed | " + " | ".join(f"loss at {b}" for b in BUDGETS) + " |")
    print("|---|---|---|" + "---|" * len(BUDGETS))
    for d in (2, 3, 4, 5):
        for mult in sorted(outs):
            for sd in seeds(outs[mult]):
                by = {b: l for b, _, l in curve(sd / "scratch" / f"d{d}")}
                if 1.0 in by:
                    cells = " | ".join(f"{by[b]:.4f}" if b in by else "" for b in BUDGETS)
                    print(f"| d{d} | {mult:g} | {sd.name[4:]} | {cells} |")


def recipe_rows(seed_dir: Path, d: int) -> dict[str, dict]:
    """Every grown arm of one seed directory against its scratch d<d> and scratch parent."""
    scratch = curve(seed_dir / "scratch" / f"d{d}")
    if [b for b, _, _ in scratch][-1:] != [1.0]:  # scratch still training: nothing to measure against
        return {}
    _, s_cost, s_loss = scratch[-1]
    parent = rung_cost(json.loads((seed_dir / "scratch" / f"d{d - 1}" / "b1" / "final.json").read_text()))
    rows = {}
    for arm in sorted(p for p in seed_dir.iterdir() if p.name != "scratch" and (p / f"d{d}").is_dir()):
        pts = curve(arm / f"d{d}")
        if [b for b, _, _ in pts][-1:] == [1.0]:  # only finished curves: the largest budget decides a bound
            rows[arm.name] = rung_saving([(c, l) for _, c, l in pts], s_cost, s_loss, parent) | {
                "loss_half": dict((b, l) for b, _, l in pts).get(0.5), "loss_full": pts[-1][2]}
    return rows


def paired_delta(got: dict, plain: dict, key: str) -> str:
    """Mean over seeds of (recipe - plain grow-only) val loss at one budget, with its interval."""
    deltas = [g[key] - plain[s][key] for s, g in got.items()
              if s in plain and g.get(key) is not None and plain[s].get(key) is not None]
    return interval(deltas, "{:+.4f}") if deltas else ""


def recipes_table(out: Path, d: int) -> None:
    per_seed: dict[str, dict] = {}
    for seed, tag, folder in tagged_seeds(out):
        rows = recipe_rows(folder, d)
        per_seed.setdefault(seed, {}).update({f"{a}@{tag}" if tag else a: r for a, r in rows.items()})
    arms = sorted({a for rows in per_seed.values() for a in rows})
    cols = sorted(per_seed)
    plain = {s: rows["grow-only"] for s, rows in per_seed.items() if "grow-only" in rows}
    print(f"| recipe (d{d}) | " + " | ".join(f"FLOPs-to-match, seed {s}" for s in cols)
          + " | mean [95% t] | marginal saving, mean [95% t] | loss - grow-only's, at 0.5 | at 1 |")
    print("|---|" + "---|" * (len(cols) + 4))
    for arm in arms:
        got = {s: per_seed[s][arm] for s in cols if arm in per_seed[s]}
        cells = " | ".join(Reach(got[s]["status"], got[s]["fraction"]).describe() if s in got else "" for s in cols)
        exact = [g["fraction"] for g in got.values() if g["status"] == REACHED]
        if len(exact) == len(got):
            mean, saving = interval(exact, "{:.3f}"), interval([1 - f for f in exact], "{:.1%}")
        else:  # a seed known only by a bound: no mean
            mean, saving = "bound in a seed", ""
        print(f"| {arm} | {cells} | {mean} | {saving} | {paired_delta(got, plain, 'loss_half')} "
              f"| {paired_delta(got, plain, 'loss_full')} |")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="what", required=True)
    lr = sub.add_parser("lr")
    lr.add_argument("preset_out", type=Path)
    lr.add_argument("sweep_out", type=Path)
    rc = sub.add_parser("recipes")
    rc.add_argument("out", type=Path)
    rc.add_argument("--depth", type=int, default=3)
    a = p.parse_args()
    if a.what == "lr":
        lr_table(a.preset_out, a.sweep_out)
    else:
        recipes_table(a.out, a.depth)


if __name__ == "__main__":
    main()
