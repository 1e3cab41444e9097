"""The growth study's tables, computed from the runs' final.json files by engine/analysis/savings.py.

    # the scratch LR sweep: full-budget val loss per depth, LR multiplier and seed
    .venv/bin/python docs/results/2026-12-01-growth-study/study_table.py lr runs/r8 runs/r8-lr
    # every grown recipe against the scratch rungs of the same OUT, per seed and mean [95% t-interval]
    .venv/bin/python docs/results/2026-12-01-growth-study/study_table.py recipes runs/r8-lr/m2 [--depth 3]
    # saving against growth factor per rung, the scratch reference point, and a marked projection
    .venv/bin/python docs/results/2026-12-01-growth-study/study_table.py factor runs/r8-lr/m0.5 --depths 3,4

An OUT of the miniseries holds seed<s>/ folders; runs/r8 is the preset's LR (multiplier 1), and
runs/r8-lr/m<x>/ the sweep's other multipliers. A folder seed<s>-<tag>/ (a penalty setting run with
its own OUT, run.sh's OUT=...) counts as seed s, its arms named <arm>@<tag>.

The last columns are paired: a recipe's FLOPs-to-match, and its cooled val loss at half and full
budget, minus plain grow-only's of the same seed: the measures least affected by seed-to-seed noise
(the scratch baseline's own spread cancels).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "2026-12-01-budget-curves"))

from engine.analysis.runs import read_jsonl, rung_cost  # noqa: E402
from engine.analysis.savings import REACHED, Reach, mean_ci, rung_saving  # noqa: E402
from screen_table import curve  # noqa: E402  (budget, cost, val loss) of a rung's finished budget runs
from models.config import model_config  # noqa: E402

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
    arms = sorted(p for p in seed_dir.iterdir() if p.name != "scratch" and (p / f"d{d}").is_dir())
    scratch = curve(seed_dir / "scratch" / f"d{d}")
    # a folder of scratch runs only (a sweep point run.sh put beside the recipes with OUT=...), or
    # scratch still training: nothing to measure
    if not arms or [b for b, _, _ in scratch][-1:] != [1.0]:
        return {}
    _, s_cost, s_loss = scratch[-1]
    parent = rung_cost(json.loads((seed_dir / "scratch" / f"d{d - 1}" / "b1" / "final.json").read_text()))
    rows = {}
    for arm in arms:
        pts = curve(arm / f"d{d}")
        if [b for b, _, _ in pts][-1:] == [1.0]:  # only finished curves: the largest budget decides a bound
            rows[arm.name] = rung_saving([(c, l) for _, c, l in pts], s_cost, s_loss, parent) | {
                "loss_half": dict((b, l) for b, _, l in pts).get(0.5), "loss_full": pts[-1][2]}
    return rows


def paired_delta(got: dict, plain: dict, key: str) -> str:
    """Mean over seeds of (recipe - plain grow-only) at one key (a budget's val loss, or the
    FLOPs-to-match fraction), with its interval."""
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
          + " | mean [95% t] | marginal saving, mean [95% t] | FLOPs-to-match - grow-only's | "
          "loss - grow-only's, at 0.5 | at 1 |")
    print("|---|" + "---|" * (len(cols) + 5))
    for arm in arms:
        got = {s: per_seed[s][arm] for s in cols if arm in per_seed[s]}
        cells = " | ".join(Reach(got[s]["status"], got[s]["fraction"]).describe() if s in got else "" for s in cols)
        exact = [g["fraction"] for g in got.values() if g["status"] == REACHED]
        if len(exact) == len(got):
            mean, saving = interval(exact, "{:.3f}"), interval([1 - f for f in exact], "{:.1%}")
        else:  # a seed known only by a bound: no mean
            mean, saving = "bound in a seed", ""
        reached = {sd: g for sd, g in got.items() if g["status"] == REACHED}
        plain_reached = {sd: g for sd, g in plain.items() if g["status"] == REACHED}
        print(f"| {arm} | {cells} | {mean} | {saving} | {paired_delta(reached, plain_reached, 'fraction')} "
              f"| {paired_delta(got, plain, 'loss_half')} "
              f"| {paired_delta(got, plain, 'loss_full')} |")


def reference_point(seed_dir: Path, d: int) -> float | None:
    """The fraction of scratch d<d>'s full-budget FLOPs at which its stable (undecayed) run first
    evaluates at or below its parent's full-budget loss: what a grown rung that starts where its
    parent ended and then learns at scratch's pace would save (#13's calibration point)."""
    parent = seed_dir / "scratch" / f"d{d - 1}" / "b1" / "final.json"
    full = seed_dir / "scratch" / f"d{d}" / "b1" / "final.json"
    if not (parent.exists() and full.exists()):
        return None
    target = json.loads(parent.read_text())["val_loss"]
    evals = [r for r in read_jsonl(seed_dir / "scratch" / f"d{d}" / "stable" / "metrics.jsonl") if "val_loss" in r]
    i = next((i for i, r in enumerate(evals) if r["val_loss"] <= target), None)
    if i is None:
        return None
    at = evals[i]["flops"]
    if i > 0:  # linear between the two evaluations around the crossing (they are 1/12 of a budget apart)
        (f0, l0), (f1, l1) = (evals[i - 1]["flops"], evals[i - 1]["val_loss"]), (at, evals[i]["val_loss"])
        at = f0 + (f1 - f0) * (l0 - target) / (l0 - l1)
    return at / json.loads(full.read_text())["flops"]


def factor_table(out: Path, depths: list[int], preset: str) -> None:
    """Per rung: its growth factor in scaling parameters, the scratch reference point and each
    recipe's marginal saving over seeds; then a least-squares line of saving on ln(growth factor)
    through every (rung, seed) point, evaluated at nanochat's two-layer steps: a projection, not a
    measurement (two growth factors, one model family, one corpus)."""
    gf = {d: model_config(preset, d).scaling_params / model_config(preset, d - 1).scaling_params for d in depths}
    points: dict[str, list[tuple[float, float]]] = {}
    print("| rung | growth factor | scratch reaches its parent's loss at, per seed | recipe | marginal saving per seed | mean [95% t] |")
    print("|---|---|---|---|---|---|")
    for d in depths:
        by_seed = {seed: recipe_rows(folder, d) for seed, tag, folder in tagged_seeds(out) if not tag}
        refs = [reference_point(folder, d) for seed, tag, folder in tagged_seeds(out) if not tag]
        ref = ", ".join(f"{r:.1%}" for r in refs if r is not None)
        for arm in sorted({a for rows in by_seed.values() for a in rows}):
            got = [1 - rows[arm]["fraction"] for rows in by_seed.values()
                   if arm in rows and rows[arm]["status"] == REACHED]
            points.setdefault(arm, []).extend((math.log(gf[d]), v) for v in got)
            print(f"| d{d - 1}->d{d} | {gf[d]:.3f} | {ref} | {arm} | {', '.join(f'{v:.1%}' for v in got)} "
                  f"| {interval(got, '{:.1%}') if got else ''} |")
    steps = [model_config("nanochat", d).scaling_params / model_config("nanochat", d - 2).scaling_params
             for d in range(12, 22, 2)]
    print("\nProjection (least squares of saving on ln growth factor; extrapolated, not measured):")
    for arm, pts in sorted(points.items()):
        if len({x for x, _ in pts}) < 2:
            continue
        n, mx, my = len(pts), sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
        slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
        at = ", ".join(f"x{g:.2f}: {my + slope * (math.log(g) - mx):.1%}" for g in steps)
        print(f"- {arm}: {n} points, saving = {my:.3f} + {slope:.3f} (ln g - {mx:.3f}); nanochat d10..d20 steps {at}")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="what", required=True)
    lr = sub.add_parser("lr")
    lr.add_argument("preset_out", type=Path)
    lr.add_argument("sweep_out", type=Path)
    rc = sub.add_parser("recipes")
    rc.add_argument("out", type=Path)
    rc.add_argument("--depth", type=int, default=3)
    fc = sub.add_parser("factor")
    fc.add_argument("out", type=Path)
    fc.add_argument("--depths", default="3", help="comma list of grown depths")
    fc.add_argument("--preset", default="cpu-tiny")
    a = p.parse_args()
    if a.what == "lr":
        lr_table(a.preset_out, a.sweep_out)
    elif a.what == "factor":
        factor_table(a.out, [int(d) for d in a.depths.split(",")], a.preset)
    else:
        recipes_table(a.out, a.depth)


if __name__ == "__main__":
    main()
