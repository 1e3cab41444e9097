"""A lever screen (round 3's pre-registration, docs/results/2026-12-05-round3-preregistration.md): each
lever's grown rung against the baseline recipe's, on the same seed, one miniseries OUT per seed in which
the baseline and every lever are arms sharing the scratch rungs.

    python -m engine.analysis.screen runs/r3-screen/seed2000 runs/r3-screen/seed2001 --depth 3 \\
        --baseline grow-only+data_order=continue+optimizer_state=carry+depth_init=copy

Per lever and seed: both arms' FLOPs-to-match (fractions of the tuned scratch rung's FLOPs), the
difference, and the paired noise: the paired val-loss standard error of the two arms' runs at the
baseline's budget nearest its match point (engine/analysis/paired_eval.py: the same validation windows,
so hard and easy windows cancel), converted into a fraction at the slope of the baseline's curve there.
A lever is admitted when it is below the baseline by more than that noise on every seed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from engine.analysis.paired_eval import paired_stats, run_window_losses
from engine.analysis.runs import rung_cost
from engine.analysis.savings import BELOW_SMALLEST, NOT_REACHED, REACHED, rung_saving


def rung_curve(rung: Path, scratch_cost: float) -> list[tuple[float, float, float]]:
    """(cost as a fraction of the scratch rung's, val loss, budget fraction) of every finished budget run
    of a rung directory (b<frac>/final.json), by cost."""
    finals = [(float(b.name[1:]), json.loads((b / "final.json").read_text()))
              for b in rung.glob("b*") if (b / "final.json").exists()]
    return sorted((rung_cost(f) / scratch_cost, f["val_loss"], frac) for frac, f in finals)


def slope_at(curve: list[tuple[float, float, float]], x: float) -> float:
    """d(val loss)/d(cost fraction) of the piecewise-linear curve on the segment holding x (the nearest
    end segment outside it)."""
    if len(curve) < 2:
        raise ValueError(f"a slope needs at least two runs on the curve, got {len(curve)}")
    i = next((k for k in range(1, len(curve)) if x <= curve[k][0]), len(curve) - 1)
    (x0, y0, _), (x1, y1, _) = curve[i - 1], curve[i]
    return (y1 - y0) / (x1 - x0)


def noise_in_fraction(diff_se: float, slope: float) -> float:
    """A val-loss standard error as one in FLOPs-to-match: a loss difference of one SE moves the match
    point by SE / |slope| along the curve (the curve falls, slope < 0)."""
    if slope >= 0:
        return float("inf")  # a flat or rising curve cannot place a match point: no lever can clear it
    return diff_se / -slope


def screen_seed(out: Path, depth: int, baseline: str, eval_tokens: int, window_losses=run_window_losses) -> list[dict]:
    """One row per lever arm of `out` (every grown arm directory but the baseline's whose budgets all
    finished) at rung `depth`, read from the run directories (a miniseries' summary.json holds only its
    last invocation's arms)."""
    key = f"d{depth}"
    scratch_runs = rung_curve(out / "scratch" / key, 1.0)
    if not scratch_runs:
        raise ValueError(f"{out}/scratch/{key} holds no finished budget run")
    scratch_cost, scratch_loss, _ = scratch_runs[-1]
    arms = sorted(p.parent.name for p in out.glob(f"*/{key}") if p.parent.name != "scratch")
    if baseline not in arms:
        raise ValueError(f"baseline arm {baseline!r} has no {key} in {out} (arms: {arms})")
    curves = {a: rung_curve(out / a / key, scratch_cost) for a in arms}
    budgets = [frac for _, _, frac in curves[baseline]]
    curves = {a: c for a, c in curves.items() if sorted(f for _, _, f in c) == sorted(budgets)}  # finished arms
    if baseline not in curves or not budgets:
        raise ValueError(f"baseline arm {baseline!r} has unfinished budgets in {out}")
    answers = {a: rung_saving([(x, y) for x, y, _ in c], 1.0, scratch_loss, 0.0) for a, c in curves.items()}
    base, base_curve = answers[baseline], curves[baseline]
    x = base["fraction"] if base["status"] == REACHED else base_curve[-1][0]
    budget = min(base_curve, key=lambda c: abs(c[0] - x))[2]
    slope = slope_at(base_curve, x)
    base_windows = window_losses(out / baseline / key / f"b{budget:g}", eval_tokens)
    rows = []
    for arm in curves:
        if arm == baseline:
            continue
        a = answers[arm]
        paired = paired_stats(window_losses(out / arm / key / f"b{budget:g}", eval_tokens), base_windows)
        noise = noise_in_fraction(paired["diff_se"], slope)
        diff, beats, estimated = None, False, False
        if base["status"] == REACHED and a["status"] in (REACHED, BELOW_SMALLEST):  # at or below: a bound above
            diff = a["fraction"] - base["fraction"]
            beats = diff < -noise
        elif base["status"] == a["status"] == NOT_REACHED and slope < 0:
            # neither matched by the largest budget: the paired loss difference there, moved along the
            # baseline's curve at its slope, estimates the shift of the match point (the noise's conversion)
            diff, estimated = paired["diff"] / -slope, True
            beats = diff < -noise
        elif base["status"] == NOT_REACHED:  # the baseline never matched: any lever that did beats it
            beats = a["status"] != NOT_REACHED
        rows.append({"seed_out": str(out), "arm": arm, "fraction": a["fraction"], "status": a["status"],
                     "baseline_fraction": base["fraction"], "baseline_status": base["status"], "diff": diff,
                     "paired_budget": budget, "loss_diff": paired["diff"], "loss_diff_se": paired["diff_se"],
                     "slope": slope, "noise": noise, "beats": beats, "estimated": estimated})
    return rows


def admitted(rows: list[dict]) -> dict[str, bool]:
    """Per lever: below the baseline by more than the noise on every seed screened."""
    verdict: dict[str, bool] = {}
    for r in rows:
        verdict[r["arm"]] = verdict.get(r["arm"], True) and r["beats"]
    return verdict


def render_markdown(rows: list[dict]) -> str:
    def f(v):
        return "not reached" if v is None else f"{v:.3f}"
    lines = ["| seed OUT | lever arm | lever | baseline | lever - baseline | noise (1 SE) | paired loss diff "
             "(budget) | beats |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lever, base = (f(r[k]) if r[s] == REACHED else f"{r[s]} ({f(r[k])})"
                       for k, s in (("fraction", "status"), ("baseline_fraction", "baseline_status")))
        diff = "n/a" if r["diff"] is None else f"{'~' if r.get('estimated') else ''}{r['diff']:+.3f}"
        lines.append(f"| {Path(r['seed_out']).name} | `{r['arm']}` | {lever} | {base} | "
                     f"{diff} | {r['noise']:.3f} | "
                     f"{r['loss_diff']:+.4f} +- {r['loss_diff_se']:.4f} (x{r['paired_budget']:g}) | "
                     f"{'yes' if r['beats'] else 'no'} |")
    verdict = admitted(rows)
    lines += ["", "~: neither matched scratch by the largest budget; the paired loss difference there divided by "
              "the baseline curve's slope."]
    lines += ["", "Admitted (below the baseline by more than the noise on every seed): "
              + (", ".join(f"`{a}`" for a, ok in verdict.items() if ok) or "none")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.analysis.screen", description=__doc__.split("\n\n")[0])
    p.add_argument("outs", type=Path, nargs="+", help="one miniseries OUT per seed")
    p.add_argument("--depth", type=int, required=True)
    p.add_argument("--baseline", required=True, help="the baseline recipe's arm directory name")
    p.add_argument("--eval-tokens", type=int, default=131072)
    p.add_argument("--json", type=Path, help="also write the rows here")
    a = p.parse_args(argv)
    for out in a.outs:
        if not (out / "scratch").is_dir():
            p.error(f"{out} holds no scratch/ rungs (not a miniseries OUT)")
    rows = [r for out in a.outs for r in screen_seed(out, a.depth, a.baseline, a.eval_tokens)]
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    print(render_markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
