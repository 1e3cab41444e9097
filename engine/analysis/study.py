"""The study over seeds and recipes (method.md section 6): the answer table with intervals, paired
differences between recipes, the saving against growth factor with its prediction band, and the
markdown that shows them. Pure functions of numbers (no torch, no files; matplotlib only inside
the plot helper); launch/study.py reads the runs and calls these.

The input, `per_seed`: {seed: {recipe: summary}}, where `summary` is the dict
engine/analysis/report.py `summarize()` made for the ladder that holds the recipe's grown arm (or
that ladder's summary.json read back). What is read of it: summary["answer"][arm][f"d{k}"] (a grown
rung's answer: status, fraction, marginal / standalone / whole-chain saving, flops_to_match,
scratch_flops, target_loss, growth_factor), summary["ladder"][arm] (saving, kind),
summary["arms"][arm] (one row per budget run: depth, budget_frac, val_loss) and
summary["config"]["depths"]. A seed may lack a recipe; two recipes may share one summary (one OUT).
`recipes`: {recipe: arm label}, which arm of its summary each recipe is (the arm's directory name,
engine.ladder.config.arm_dir_name).

Bounds. A rung that some seed did not reach (or reached at its smallest budget already) makes its
row a bound: the mean over seeds is then a bound on the mean, `kind` says which way ("at most" /
"at least" for the savings, as engine/analysis/savings.ladder_saving says it; the FLOPs-to-match
fraction the other way round), and no interval is given. No row is ever dropped.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from scipy.stats import t as student_t

from engine.analysis.savings import BELOW_SMALLEST, GOAL, NOT_REACHED, REACHED, Reach, bound_kind, mean_ci
from engine.analysis.transfer import project_ladder, transfer, transfer_fit, transfer_markdown
from models.config import model_config

SAVING_KEYS = ("fraction", "marginal_saving", "standalone_saving", "whole_chain_saving", "transfer")
LEVEL = 0.95


# ------------------------------------------------------------------------------------------
# the answer table
# ------------------------------------------------------------------------------------------


def recipe_answers(per_seed: Mapping[int, Mapping[str, dict]], recipes: Mapping[str, str],
                   recipe: str) -> dict[int, dict[str, dict]]:
    """{seed: {"d<k>": that grown rung's answer}} of one recipe, over the seeds that ran it."""
    if recipe not in recipes:
        raise ValueError(f"unknown recipe {recipe!r}; the recipes are {sorted(recipes)}")
    arm = recipes[recipe]
    out = {}
    for seed, summaries in sorted(per_seed.items()):
        summary = summaries.get(recipe)
        if summary is None:
            continue
        if arm not in summary["answer"]:
            raise ValueError(f"seed {seed}: recipe {recipe!r}'s summary has no answer for arm {arm!r} "
                             f"(it has {sorted(summary['answer'])})")
        out[seed] = summary["answer"][arm]
    return out


def _stat(values: list[float], kind: str) -> dict:
    """mean_ci of per-seed values; for a bound, the mean (a bound on the mean) without an interval."""
    ci = mean_ci(values, LEVEL)
    if kind != "exact":
        ci.update(lo=None, hi=None, method=f"a bound ({kind}): some seed's value is a bound, so no interval")
    return ci


def _rung_row(recipe: str, arm: str, depth: int, by_seed: dict[int, dict]) -> dict:
    """One grown rung of one recipe over the seeds that measured it."""
    by_seed = {seed: {**s, "transfer": transfer(s)} for seed, s in by_seed.items()}
    kind = bound_kind([Reach(s["status"], s["flops_to_match"]) for s in by_seed.values()])
    row = {"rung": f"d{depth}", "depth": depth, "recipe": recipe, "arm": arm, "seeds": sorted(by_seed),
           "n": len(by_seed), "statuses": {seed: s["status"] for seed, s in by_seed.items()},
           "kind": kind, "bound": kind != "exact",
           "growth_factor": sum(s["growth_factor"] for s in by_seed.values()) / len(by_seed),
           "scratch_flops": sum(s["scratch_flops"] for s in by_seed.values()) / len(by_seed),
           "target_loss": sum(s["target_loss"] for s in by_seed.values()) / len(by_seed),
           "values": {k: {seed: s[k] for seed, s in by_seed.items()} for k in SAVING_KEYS}}
    for k in SAVING_KEYS:
        row[k] = _stat([s[k] for s in by_seed.values()], kind)
    return row


def _combined_kind(kinds: list[str]) -> str:
    """The kind of a mean over values of these kinds (each "exact", "at most", "at least" or "unbounded")."""
    low = any(k in ("at least", "unbounded") for k in kinds)
    high = any(k in ("at most", "unbounded") for k in kinds)
    return "unbounded" if (low and high) else "at least" if low else "at most" if high else "exact"


def _ladder_rows(per_seed: Mapping[int, Mapping[str, dict]], recipe: str, arm: str) -> list[dict]:
    """The ladder saving of one recipe over seeds, one row per set of ladder depths (a ladder to d5
    and one to d4 are different ladders: their savings are never averaged together)."""
    groups: dict[tuple, dict[int, dict]] = {}
    for seed, summaries in sorted(per_seed.items()):
        summary = summaries.get(recipe)
        ladder = summary["ladder"].get(arm) if summary else None
        if ladder:
            depths = tuple((summary.get("config") or {}).get("depths") or ())
            groups.setdefault(depths, {})[seed] = ladder
    rows = []
    for depths, by_seed in groups.items():
        kind = _combined_kind([lad["kind"] for lad in by_seed.values()])
        rows.append({"rung": "ladder", "depths": list(depths), "recipe": recipe, "arm": arm, "seeds": sorted(by_seed),
                     "n": len(by_seed), "kinds": {seed: lad["kind"] for seed, lad in by_seed.items()},
                     "kind": kind, "bound": kind != "exact",
                     "values": {"ladder_saving": {seed: lad["saving"] for seed, lad in by_seed.items()}},
                     "ladder_saving": _stat([lad["saving"] for lad in by_seed.values()], kind)})
    return rows


def answer_table(per_seed: Mapping[int, Mapping[str, dict]], recipes: Mapping[str, str],
                 depths: Sequence[int]) -> list[dict]:
    """Rows, rung by rung (in `depths` order) and recipe by recipe (in `recipes` order), then each
    recipe's ladder: FLOPs-to-match and the marginal, standalone and whole-chain savings as mean and
    95% Student-t interval over the seeds that measured the rung (a bound: mean only, `kind` says
    which way), the seeds, and what the rung is measured against. A rung no seed of a recipe grew has
    no row; a rung grown but not reached has one, marked a bound."""
    answers = {recipe: recipe_answers(per_seed, recipes, recipe) for recipe in recipes}
    rows = []
    for depth in depths:
        for recipe, arm in recipes.items():
            by_seed = {seed: a[f"d{depth}"] for seed, a in answers[recipe].items() if f"d{depth}" in a}
            if by_seed:
                rows.append(_rung_row(recipe, arm, depth, by_seed))
    for recipe, arm in recipes.items():
        rows += _ladder_rows(per_seed, recipe, arm)
    return rows


# ------------------------------------------------------------------------------------------
# paired differences
# ------------------------------------------------------------------------------------------


def _fraction_kind(recipe_status: str, baseline_status: str) -> str:
    """Which way recipe - baseline FLOPs-to-match fractions is a bound: a recipe not reached is
    charged a lower bound of its cost (the difference is at least this), a baseline not reached the
    other way round; reached at the smallest budget, the reverse."""
    recipe_way = {REACHED: "exact", NOT_REACHED: "at least", BELOW_SMALLEST: "at most"}
    baseline_way = {REACHED: "exact", NOT_REACHED: "at most", BELOW_SMALLEST: "at least"}
    return _combined_kind([recipe_way[recipe_status], baseline_way[baseline_status]])


def _loss_at(summary: dict, arm: str, depth: int, budget: float) -> float | None:
    """The cooled val loss of arm's d<depth> run at budget fraction `budget` (None if it did not run)."""
    return next((r["val_loss"] for r in summary["arms"].get(arm, []) if r["depth"] == depth
                 and math.isclose(r["budget_frac"], budget)), None)


def _paired_values(per_seed, recipes, recipe, baseline, depth, at_budget) -> dict[int, tuple[float, str]]:
    """{seed: (recipe - baseline at one rung, its kind)} over the seeds that measured both."""
    out = {}
    for seed, summaries in sorted(per_seed.items()):
        got, base = summaries.get(recipe), summaries.get(baseline)
        if got is None or base is None:
            continue
        if at_budget is None:
            a = got["answer"].get(recipes[recipe], {}).get(f"d{depth}")
            b = base["answer"].get(recipes[baseline], {}).get(f"d{depth}")
            if a and b:
                out[seed] = (a["fraction"] - b["fraction"], _fraction_kind(a["status"], b["status"]))
        else:
            a, b = (_loss_at(s, recipes[r], depth, at_budget) for s, r in ((got, recipe), (base, baseline)))
            if a is not None and b is not None:
                out[seed] = (a - b, "exact")  # measured losses: never a bound
    return out


def paired_differences(per_seed: Mapping[int, Mapping[str, dict]], recipes: Mapping[str, str], recipe: str,
                       baseline: str, at_budget: float | None = None) -> list[dict]:
    """Per grown rung, recipe - baseline on the same seed (the scratch baseline's own seed-to-seed
    spread cancels), mean and 95% Student-t interval over the seeds that measured both. The measure:
    the FLOPs-to-match fraction, or with `at_budget` the cooled val loss of the budget run at that
    fraction. A seed where either fraction is a bound makes the row a bound (mean only); `exact`
    then holds the interval over the seeds where both were reached."""
    depths = sorted({int(d[1:]) for r in (recipe, baseline) for a in recipe_answers(per_seed, recipes, r).values()
                     for d in a})
    measure = "FLOPs-to-match fraction" if at_budget is None else f"cooled val loss at budget {at_budget:g}"
    rows = []
    for depth in depths:
        got = _paired_values(per_seed, recipes, recipe, baseline, depth, at_budget)
        if not got:
            continue
        kind = _combined_kind([k for _, k in got.values()])
        exact = [v for v, k in got.values() if k == "exact"]
        rows.append({"rung": f"d{depth}", "depth": depth, "recipe": recipe, "baseline": baseline, "measure": measure,
                     "seeds": sorted(got), "n": len(got), "values": {s: v for s, (v, _) in got.items()},
                     "kinds": {s: k for s, (_, k) in got.items()}, "kind": kind, "bound": kind != "exact",
                     "difference": _stat([v for v, _ in got.values()], kind),
                     "exact": mean_ci(exact, LEVEL) if exact else None})
    return rows


def equal_budget_differences(per_seed: Mapping[int, Mapping[str, dict]], recipes: Mapping[str, str], recipe: str,
                             budget: float = 1.0) -> list[dict]:
    """Per grown rung of `recipe`: its cooled val loss at budget fraction `budget` minus its scratch
    twin's at the same budget (the same tokens and FLOPs), on the same seed; mean and 95% Student-t
    interval over the seeds that ran both. Negative: at equal compute the grown rung is better.
    Rows in paired_differences' form (baseline "scratch")."""
    arm, rows = recipes[recipe], []
    answers = recipe_answers(per_seed, recipes, recipe)
    for depth in sorted({int(d[1:]) for a in answers.values() for d in a}):
        got = {}
        for seed, summaries in sorted(per_seed.items()):
            summary = summaries.get(recipe)
            if summary is None:
                continue
            grown, scratch = (_loss_at(summary, a, depth, budget) for a in (arm, "scratch"))
            if grown is not None and scratch is not None:
                got[seed] = grown - scratch
        if got:
            rows.append({"rung": f"d{depth}", "depth": depth, "recipe": recipe, "baseline": "scratch",
                         "measure": f"cooled val loss at budget {budget:g}", "seeds": sorted(got), "n": len(got),
                         "values": got, "kinds": {s: "exact" for s in got}, "kind": "exact", "bound": False,
                         "difference": mean_ci(list(got.values()), LEVEL), "exact": None})
    return rows


# ------------------------------------------------------------------------------------------
# saving against growth factor
# ------------------------------------------------------------------------------------------


def saving_points(table: list[dict], recipe: str) -> tuple[list[dict], list[dict]]:
    """The (seed, rung) points of one recipe's marginal saving (and transfer) against its growth
    factor, from answer_table's rows: (points the fits can use, points left out because the seed's
    rung is a bound)."""
    used, bounds = [], []
    for row in table:
        if row["recipe"] != recipe or row["rung"] == "ladder":
            continue
        for seed, saving in row["values"]["marginal_saving"].items():
            point = {"seed": seed, "depth": row["depth"], "growth_factor": row["growth_factor"], "saving": saving,
                     "transfer": row["values"]["transfer"][seed], "status": row["statuses"][seed]}
            (used if point["status"] == REACHED else bounds).append(point)
    return used, bounds


def growth_factor_fit(points: Sequence[tuple[float, float]], targets: Mapping[str, float],
                      level: float = LEVEL, goal: float = GOAL) -> dict:
    """Ordinary least squares of saving on ln(growth factor) over (growth factor, saving) points,
    the slope's `level` interval, and at each target growth factor the fitted saving with its
    `level` prediction band, t_{n-2} * s * sqrt(1 + 1/n + (x0 - xbar)^2 / Sxx): where one more
    rung at that factor would land, not where the mean line is. A target whose band spans zero to
    `goal` is undetermined. Fewer than 3 points, or a single growth factor, determine nothing."""
    pts = [(float(g), float(y)) for g, y in points]
    bad = [p for p in pts if not (p[0] > 0 and math.isfinite(p[0]) and math.isfinite(p[1]))]
    if bad:
        raise ValueError(f"growth_factor_fit needs positive finite growth factors and finite savings, got {bad}")
    n = len(pts)
    xs, ys = [math.log(g) for g, _ in pts], [y for _, y in pts]
    xbar, ybar = (sum(xs) / n, sum(ys) / n) if n else (None, None)
    sxx = sum((x - xbar) ** 2 for x in xs) if n else 0.0
    base = {"n": n, "goal": goal, "level": level, "targets": dict(targets)}
    if n < 3 or sxx == 0:
        why = f"{n} point(s)" if n < 3 else "a single growth factor"
        return {**base, "determined": False, "reason": f"undetermined: {why} (a line and its band need 3 points "
                f"at 2 growth factors or more)", "at": [{"label": k, "growth_factor": g, "determined": False}
                                                        for k, g in targets.items()]}
    slope = sum((x - xbar) * (y - ybar) for x, y in zip(xs, ys)) / sxx
    intercept = ybar - slope * xbar
    s = math.sqrt(sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys)) / (n - 2))
    t = float(student_t.ppf(0.5 + level / 2, n - 2))
    fit = {**base, "determined": True, "reason": None, "xbar": xbar, "ybar": ybar, "sxx": sxx, "slope": slope,
           "intercept": intercept, "s": s, "t": t, "df": n - 2,
           "slope_ci": (slope - t * s / math.sqrt(sxx), slope + t * s / math.sqrt(sxx)),
           "method": f"OLS of saving on ln(growth factor), {n} points; {level:.0%} Student-t (df {n - 2}) intervals"}
    fit["at"] = [{"label": k, **predict(fit, g)} for k, g in targets.items()]
    return fit


def predict(fit: dict, growth_factor: float) -> dict:
    """The fitted saving at one growth factor and its prediction band (see growth_factor_fit)."""
    if not fit["determined"]:
        return {"growth_factor": growth_factor, "determined": False}
    x0 = math.log(growth_factor)
    y0 = fit["intercept"] + fit["slope"] * x0
    half = fit["t"] * fit["s"] * math.sqrt(1 + 1 / fit["n"] + (x0 - fit["xbar"]) ** 2 / fit["sxx"])
    lo, hi = y0 - half, y0 + half
    return {"growth_factor": growth_factor, "x": x0, "fit": y0, "lo": lo, "hi": hi, "half": half,
            "determined": not (lo <= 0 and hi >= fit["goal"])}


def nanochat_growth_factors(lo: int = 10, hi: int = 20, preset: str = "nanochat") -> dict[str, float]:
    """{"d<d>->d<d+1>": scaling params of depth d+1 / depth d} for nanochat's consecutive rungs
    lo..hi: the growth factors a real ladder would grow by (head-size rounding makes them uneven)."""
    if not 1 <= lo < hi:
        raise ValueError(f"need 1 <= lo < hi, got lo={lo}, hi={hi}")
    sp = {d: model_config(preset, d).scaling_params for d in range(lo, hi + 1)}
    return {f"d{d}->d{d + 1}": sp[d + 1] / sp[d] for d in range(lo, hi)}


# ------------------------------------------------------------------------------------------
# other study numbers
# ------------------------------------------------------------------------------------------


def reference_point(evals: Sequence[tuple[float, float]], parent_loss: float, full_flops: float) -> float | None:
    """The fraction of scratch d's full-budget FLOPs at which its stable (constant-LR) run first
    evaluates at or below its parent's full-budget loss: what a grown rung that starts where its
    parent ended and then learns at scratch's pace would save. `evals`: (FLOPs, val loss) of the
    stable run's evaluations in step order (engine.analysis.runs.eval_records of scratch d's
    stable/ run); linear between the two around the crossing. None when
    it never gets there."""
    if full_flops <= 0:
        raise ValueError(f"full_flops must be positive, got {full_flops}")
    i = next((i for i, (_, loss) in enumerate(evals) if loss <= parent_loss), None)
    if i is None:
        return None
    at = evals[i][0]
    if i > 0:
        (f0, l0), (f1, l1) = evals[i - 1], evals[i]
        at = f0 + (f1 - f0) * (l0 - parent_loss) / (l0 - l1)
    return at / full_flops


def scratch_tuning_points(summary: dict, lr_mult: float, seed: int, phase: str = "scratch LR") -> list[dict]:
    """Tuning points of a scratch LR sweep from one seed's summary at one global LR multiplier: the
    cooled val loss of every scratch budget run (the appendix's rows)."""
    return [{"phase": phase, "depth": r["depth"], "recipe": "scratch", "lr_mult": lr_mult,
             "budget": r["budget_frac"], "val_loss": r["val_loss"], "seed": seed}
            for r in summary["arms"].get("scratch", [])]


# ------------------------------------------------------------------------------------------
# markdown and the plot
# ------------------------------------------------------------------------------------------

# how a mean that is a bound is written: `kind` is said of the savings; a fraction bounds the other way
_SAVING_SIGN = {"exact": "", "at most": "≤ ", "at least": "≥ ", "unbounded": "bound both ways: "}
_FRACTION_SIGN = {"exact": "", "at most": "≥ ", "at least": "≤ ", "unbounded": "bound both ways: "}


def _pct(x: float) -> str:
    return f"{x:.1%}"


def _cell(ci: dict, fmt, sign: str = "") -> str:
    """"mean [lo, hi]", or for a bound (no interval) the mean with its sign."""
    if ci["lo"] is None:
        return f"{sign}{fmt(ci['mean'])}" + ("" if sign or ci["n"] > 1 else " (1 seed)")
    return f"{fmt(ci['mean'])} [{fmt(ci['lo'])}, {fmt(ci['hi'])}]"


def _seeds(row: dict) -> str:
    """The seeds of a row, each that is a bound named with its status."""
    marks = row.get("statuses") or row.get("kinds") or {}
    return ", ".join(f"{s}" + ("" if marks.get(s) in (REACHED, "exact") else f" ({marks[s]})")
                     for s in row["seeds"])


def answer_markdown(table: list[dict]) -> list[str]:
    """The answer table (one row per grown rung and recipe), then one line per recipe's ladder."""
    lines = ["| rung | recipe | FLOPs-to-match [95% CI] | marginal saving | standalone | whole-chain | transfer | "
             "seeds | against what |", "|---|---|---|---|---|---|---|---|---|"]
    for r in (r for r in table if r["rung"] != "ladder"):
        fs, ss = _FRACTION_SIGN[r["kind"]], _SAVING_SIGN[r["kind"]]
        lines.append(f"| {r['rung']} (x{r['growth_factor']:.2f}) | {r['recipe']} | "
                     f"{_cell(r['fraction'], lambda x: f'{x:.3f}', fs)} | {_cell(r['marginal_saving'], _pct, ss)} | "
                     f"{_cell(r['standalone_saving'], _pct, ss)} | {_cell(r['whole_chain_saving'], _pct, ss)} | "
                     f"{_cell(r['transfer'], lambda x: f'{x:.2f}', ss)} | "
                     f"{_seeds(r)} | scratch {r['rung']}'s full budget ({r['scratch_flops']:.3g} FLOPs, val loss "
                     f"{r['target_loss']:.4f}){'; a bound: no interval' if r['bound'] else ''} |")
    lines += ["", "FLOPs-to-match: a fraction of scratch's full-budget FLOPs. Marginal: the rung's own FLOPs; "
              "standalone: its parent's run added; whole-chain: every rung below it charged the run it was grown "
              "from (the answer for one who wants only this model). Transfer: FLOPs saved per FLOP of the parent "
              "depth's scratch training (marginal = transfer x the parent's share). Mean and 95% Student-t interval "
              "over seeds.", ""]
    for r in (r for r in table if r["rung"] == "ladder"):
        span = f" d{r['depths'][0]}..d{r['depths'][-1]}" if r["depths"] else ""
        lines.append(f"- **{r['recipe']} ladder{span}**: {_cell(r['ladder_saving'], _pct, _SAVING_SIGN[r['kind']])} "
                     f"of the scratch ladder's FLOPs saved (each grown rung charged its FLOPs-to-match), seeds "
                     f"{_seeds(r)}{'; a bound: no interval' if r['bound'] else ''}.")
    return lines


# what the per-seed table shows of each row: (label, key in row["values"], format)
_PER_SEED_RUNG = (("per rung", "marginal_saving", _pct), ("whole chain", "whole_chain_saving", _pct),
                  ("transfer", "transfer", lambda x: f"{x:.2f}"))
_PER_SEED_LADDER = (("ladder", "ladder_saving", _pct),)


def per_seed_markdown(table: list[dict]) -> list[str]:
    """Each seed's own value of every saving in the answer table (a seed's column empty where it did
    not measure the rung); a value that is a bound names its seed's status, as the answer rows do."""
    seeds = sorted({s for r in table for s in r["seeds"]})
    lines = ["| rung | recipe | saving | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|---|---|" + "---|" * len(seeds)]
    for r in table:
        ladder = r["rung"] == "ladder"
        rung = f"d{r['depths'][0]}..d{r['depths'][-1]}" if ladder and r["depths"] else r["rung"]
        marks = r.get("kinds") if ladder else r.get("statuses")
        for label, key, fmt in _PER_SEED_LADDER if ladder else _PER_SEED_RUNG:
            cells = []
            for s in seeds:
                v, mark = r["values"][key].get(s), (marks or {}).get(s)
                note = "" if v is None or mark in (REACHED, "exact", None) else f" ({mark})"
                cells.append("" if v is None else fmt(v) + note)
            lines.append(f"| {rung} | {r['recipe']} | {label} | " + " | ".join(cells) + " |")
    return lines


def paired_markdown(paired: list[dict]) -> list[str]:
    """A table of paired differences (paired_differences' rows, of one or more pairs)."""
    lines = ["| rung | recipe - baseline | measure | mean [95% CI] | seeds | per seed |", "|---|---|---|---|---|---|"]
    for r in paired:
        fmt = (lambda x: f"{x:+.3f}") if r["measure"].startswith("FLOPs") else (lambda x: f"{x:+.4f}")
        cell = _cell(r["difference"], fmt, _SAVING_SIGN[r["kind"]])
        if r["bound"] and r["exact"]:
            cell += f"; over the {r['exact']['n']} seed(s) where both reached: {_cell(r['exact'], fmt)}"
        lines.append(f"| {r['rung']} | {r['recipe']} - {r['baseline']} | {r['measure']} | {cell} | {_seeds(r)} | "
                     + ", ".join(fmt(r["values"][s]) for s in r["seeds"]) + " |")
    return lines


def fit_markdown(recipe: str, fit: dict) -> list[str]:
    """The growth-factor fit of one recipe: the line, its slope's interval, and each target's
    fitted saving with its prediction band, or "undetermined"."""
    if not fit["determined"]:
        return [f"- **{recipe}**: {fit['reason']}.", ""]
    lo, hi = fit["slope_ci"]
    lines = [f"- **{recipe}**: marginal saving = {fit['ybar']:.3f} + {fit['slope']:.3f} (ln g - {fit['xbar']:.3f}), "
             f"{fit['n']} (seed, rung) points; slope {fit['slope']:.3f} [{lo:.3f}, {hi:.3f}] ({fit['method']}). "
             f"Extrapolated, not measured:", "",
             f"| step | growth factor | fitted saving | {fit['level']:.0%} prediction band |", "|---|---|---|---|"]
    for a in fit["at"]:
        band = f"[{_pct(a['lo'])}, {_pct(a['hi'])}]"
        verdict = band if a["determined"] else f"undetermined: {band} spans 0 to {_pct(fit['goal'])}"
        lines.append(f"| {a['label']} | x{a['growth_factor']:.3f} | {_pct(a['fit'])} | {verdict} |")
    return lines + [""]  # a blank line ends the table


def tuning_markdown(points: Sequence[Mapping]) -> list[str]:
    """The appendix: every tuning point (phase, depth, recipe, LR multiplier, budget, val loss or
    FLOPs-to-match fraction, seed), in the order given."""
    lines = ["| phase | depth | recipe | LR multiplier | budget | val loss | FLOPs-to-match | seed |",
             "|---|---|---|---|---|---|---|---|"]
    for p in points:
        if p.get("val_loss") is None and p.get("fraction") is None:
            raise ValueError(f"a tuning point needs a val_loss or a fraction, got {dict(p)}")
        cells = [p["phase"], f"d{p['depth']}", p["recipe"], f"x{p['lr_mult']:g}",
                 "" if p.get("budget") is None else f"{p['budget']:g}",
                 "" if p.get("val_loss") is None else f"{p['val_loss']:.4f}",
                 "" if p.get("fraction") is None else f"{p['fraction']:.3f}", str(p["seed"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def transfer_section(table: list[dict], recipes: Sequence[str]) -> dict[str, dict]:
    """{recipe: {"fit": its transfer line, "projection": nanochat d10..d20 on it, or None}}."""
    out = {}
    for recipe in recipes:
        fit = transfer_fit([(p["growth_factor"], p["transfer"]) for p in saving_points(table, recipe)[0]])
        out[recipe] = {"fit": fit, "projection": project_ladder(fit) if fit["determined"] else None}
    return out


def render_study_markdown(table: list[dict], paired: Sequence[dict] = (), fits: Mapping[str, dict] | None = None,
                          tuning: Sequence[Mapping] = (), title: str = "Growth study",
                          transfers: Mapping[str, dict] | None = None, equal_budget: Sequence[dict] = ()) -> list[str]:
    """The study's report: the answer table first, the ladder lines, each seed's values, the paired
    differences, the losses at equal budget, the saving against growth factor with prediction bands,
    the transfer line and its projection, and the appendix of tuning points."""
    lines = [f"# {title}", "", "## The answer", ""] + answer_markdown(table) + [""]
    if table:
        lines += ["### Per seed", ""] + per_seed_markdown(table) + [""]
    if paired:
        lines += ["## Paired differences (same seed)", ""] + paired_markdown(list(paired)) + [""]
    if equal_budget:
        lines += ["## At equal compute (grown minus scratch, same seed)", "",
                  "The grown rung's cooled val loss at the scratch rung's full budget (same tokens, same FLOPs) "
                  "minus scratch's; negative: growth ends better for the same compute.", ""]
        lines += paired_markdown(list(equal_budget)) + [""]
    if fits:
        lines += ["## Saving against growth factor", ""]
        for recipe, fit in fits.items():
            lines += fit_markdown(recipe, fit)
    if transfers:
        lines += ["## Transfer against growth factor, and what it projects", "",
                  "Transfer T: FLOPs saved per FLOP of the parent depth's scratch training; T - 1 = b ln g (a rung "
                  "grown by g = 1 is its parent, T = 1). engine/analysis/transfer.py says what the projection "
                  "assumes.", ""]
        for recipe, tr in transfers.items():
            lines += transfer_markdown(recipe, tr["fit"], tr["projection"])
    if tuning:
        lines += ["## Appendix: tuning points (tuning seeds; never reported as results)", ""]
        lines += tuning_markdown(tuning) + [""]
    return lines


def plot_growth_factor_fit(fit: dict, points: Sequence[tuple[float, float]], path, title: str = ""):
    """Saving against growth factor (log x): the measured points, the fitted line and its
    prediction band, each target's fitted value with its band. Returns the path written."""
    import matplotlib  # here: only the plot needs it, and it is slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([g for g, _ in points], [y for _, y in points], color="k", zorder=3, label="measured (seed, rung)")
    if fit["determined"]:
        span = [g for g, _ in points] + list(fit["targets"].values())
        lo, hi = min(span) * 0.97, max(span) * 1.03
        grid = [lo * (hi / lo) ** (i / 99) for i in range(100)]
        band = [predict(fit, g) for g in grid]
        ax.plot(grid, [b["fit"] for b in band], color="C0", label="least-squares line")
        ax.fill_between(grid, [b["lo"] for b in band], [b["hi"] for b in band], color="C0", alpha=0.2,
                        label=f"{fit['level']:.0%} prediction band")
        for a in fit["at"]:
            ax.errorbar([a["growth_factor"]], [a["fit"]], yerr=[[a["half"]], [a["half"]]], fmt="s", color="C1",
                        ms=4, capsize=3)
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.axhline(fit["goal"], color="gray", lw=0.8, ls=":", label=f"goal {fit['goal']:.0%}")
    ax.set_xscale("log")
    ax.set_xlabel("growth factor (scaling params of the rung / its parent)")
    ax.set_ylabel("marginal saving")
    ax.set_title(title or ("saving against growth factor" if fit["determined"] else fit["reason"]), fontsize=10)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
