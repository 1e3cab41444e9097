"""The study's numbers (engine/analysis/study.py) on a two-seed, three-rung ladder (d2 -> d3 -> d4)
with two recipes, every expected number worked out by hand below from invented curves.

The ladder, both seeds: scaling params d2 1000, d3 2000, d4 3000 (growth factors 2 and 1.5).
Scratch full budgets: d2 1e12 FLOPs (loss 4.0), d3 4e12 (loss 3.2), d4 10e12 (loss 2.8); the
scratch ladder costs 15e12. Each grown rung has two budget runs, the second landing exactly on
scratch's full-budget loss, so its FLOPs-to-match is that run's cost (no interpolation), and the
next rung grows from that run (it is the first to reach its twin), so it is charged that cost:

    FLOPs-to-match (e12)   plain d3  plain d4   copy d3  copy d4
    seed 0                   2.0       6.0        1.6      4.0
    seed 1                   2.4       7.5        1.8      5.0

t(0.975, 1) = 12.7062047 (two seeds); t(0.975, 2) = 4.3026527 (four points, a line).
"""
import math
from dataclasses import dataclass, field

import pytest
from scipy import stats

from engine.analysis.report import summarize
from engine.analysis.savings import NOT_REACHED
from engine.analysis.study import (answer_table, equal_budget_differences, growth_factor_fit,
                                   nanochat_growth_factors, paired_differences, plot_growth_factor_fit, predict,
                                   per_seed_markdown, recipe_answers, reference_point, render_study_markdown,
                                   saving_points, scratch_tuning_points)
from models.config import model_config

T1, T2 = 12.706204736174698, 4.302652729749464
PLAIN, COPY = "grow-only", "grow-only+depth_init=copy"
RECIPES = {"plain": PLAIN, "copy": COPY}
FTM = {0: {"plain": (2.0, 6.0), "copy": (1.6, 4.0)}, 1: {"plain": (2.4, 7.5), "copy": (1.8, 5.0)}}
# the cooled val loss of each grown rung's smaller (0.25) budget run: the paired loss difference
LOSS_025 = {0: {"plain": (3.45, 2.95), "copy": (3.40, 2.90)}, 1: {"plain": (3.50, 2.95), "copy": (3.41, 2.90)}}


@dataclass
class LadderConfig:  # summarize reads lc.depths and records the config with asdict
    depths: list = field(default_factory=lambda: [2, 3, 4])


def run(budget, flops, loss, params):
    return {"budget_frac": budget, "flops": flops * 1e12, "fisher_flops": 0.0, "penalty_flops": 0.0, "val_loss": loss,
            "scaling_params": params, "steps": 10, "tokens": 100, "run": f"/runs/b{budget}"}


def grown(depth, params, ftm, loss_025, target, grown_from_cost):
    return {"depth": depth, "grown_from": {"cost": grown_from_cost * 1e12, "budget_frac": 0.5, "kind": "cooled",
                                            "checkpoint": "/ckpt", "reached_target": True, "val_loss": target},
            "runs": [run(0.25, ftm / 2, loss_025, params), run(0.5, ftm, target, params)]}


def seed_results(seed, plain_d4_last=2.8):
    base = {"depth": 2, "grown_from": None, "runs": [run(1.0, 1.0, 4.0, 1000)]}
    out = {"scratch": [base,
                       {"depth": 3, "grown_from": None, "runs": [run(0.5, 2.0, 3.5, 2000), run(1.0, 4.0, 3.2, 2000)]},
                       {"depth": 4, "grown_from": None, "runs": [run(0.5, 5.0, 3.0, 3000), run(1.0, 10.0, 2.8, 3000)]}]}
    for recipe, arm in RECIPES.items():
        (f3, f4), (l3, l4) = FTM[seed][recipe], LOSS_025[seed][recipe]
        d4 = grown(4, 3000, f4, l4, 2.8, f3)
        if recipe == "plain":
            d4["runs"][1]["val_loss"] = plain_d4_last
        out[arm] = [base, grown(3, 2000, f3, l3, 3.2, 1.0), d4]
    return out


def per_seed(plain_d4_last_seed1=2.8):
    """{seed: {recipe: summary}}: both recipes share one summary per seed (one OUT)."""
    sums = {0: summarize(LadderConfig(), seed_results(0)),
            1: summarize(LadderConfig(), seed_results(1, plain_d4_last_seed1))}
    return {seed: {"plain": s, "copy": s} for seed, s in sums.items()}


def close(ci, mean, half=None):
    assert math.isclose(ci["mean"], mean, abs_tol=1e-12), (ci, mean)
    if half is None:
        assert ci["lo"] is None and ci["hi"] is None
    else:
        assert math.isclose(ci["hi"] - ci["mean"], half, rel_tol=1e-9, abs_tol=1e-12), (ci, half)
        assert math.isclose(ci["mean"] - ci["lo"], half, rel_tol=1e-9, abs_tol=1e-12)


def rows_by(table):
    return {(r["rung"], r["recipe"]): r for r in table}


def test_t_quantiles_are_scipys():
    assert math.isclose(stats.t.ppf(0.975, 1), T1) and math.isclose(stats.t.ppf(0.975, 2), T2)


def test_answer_table_per_rung_and_recipe():
    table = answer_table(per_seed(), RECIPES, [3, 4])
    assert [(r["rung"], r["recipe"]) for r in table] == [("d3", "plain"), ("d3", "copy"), ("d4", "plain"),
                                                         ("d4", "copy"), ("ladder", "plain"), ("ladder", "copy")]
    rows = rows_by(table)
    c3, c4 = rows[("d3", "copy")], rows[("d4", "copy")]
    assert c3["seeds"] == [0, 1] and c3["n"] == 2 and not c3["bound"] and c3["growth_factor"] == 2.0
    assert c3["scratch_flops"] == 4e12 and c3["target_loss"] == 3.2 and c4["growth_factor"] == 1.5
    # copy d3: fractions 1.6/4 = 0.40 and 1.8/4 = 0.45: mean 0.425, sd 0.025 sqrt 2, half t1 * 0.025
    close(c3["fraction"], 0.425, T1 * 0.025)
    close(c3["marginal_saving"], 0.575, T1 * 0.025)
    # standalone adds the d2 run it grew from (1e12): 1 - 2.6/4 = 0.35, 1 - 2.8/4 = 0.30
    close(c3["standalone_saving"], 0.325, T1 * 0.025)
    close(c3["whole_chain_saving"], 0.325, T1 * 0.025)  # d3's chain is its parent run alone
    # copy d4: 4/10 and 5/10; standalone 1 - (4 + 1.6)/10 = 0.44, 1 - (5 + 1.8)/10 = 0.32;
    # whole chain 1 - (1 + 1.6 + 4)/10 = 0.34, 1 - (1 + 1.8 + 5)/10 = 0.22
    close(c4["fraction"], 0.45, T1 * 0.05)
    close(c4["marginal_saving"], 0.55, T1 * 0.05)
    close(c4["standalone_saving"], 0.38, T1 * 0.06)
    close(c4["whole_chain_saving"], 0.28, T1 * 0.06)
    # transfer: FLOPs saved per FLOP of the parent depth's scratch full budget: d3 (4 - 1.6) / 1 = 2.4
    # and (4 - 1.8) / 1 = 2.2; d4 (10 - 4) / 4 = 1.5 and (10 - 5) / 4 = 1.25 (not the grown d3 run's cost)
    close(c3["transfer"], 2.3, T1 * 0.1)
    close(c4["transfer"], 1.375, T1 * 0.125)
    assert c4["values"]["whole_chain_saving"] == pytest.approx({0: 0.34, 1: 0.22})
    # plain d4: 0.6 and 0.75
    close(rows[("d4", "plain")]["fraction"], 0.675, T1 * 0.075)
    # the ladder: 1 - (1 + 1.6 + 4)/15 = 0.56, 1 - (1 + 1.8 + 5)/15 = 0.48
    lad = rows[("ladder", "copy")]
    assert lad["depths"] == [2, 3, 4] and lad["kind"] == "exact" and lad["seeds"] == [0, 1]
    close(lad["ladder_saving"], 0.52, T1 * 0.04)


def test_paired_differences_of_fractions_and_losses():
    by = {r["rung"]: r for r in paired_differences(per_seed(), RECIPES, "copy", "plain")}
    # d3: 0.40 - 0.50 = -0.10, 0.45 - 0.60 = -0.15; d4: 0.4 - 0.6 = -0.2, 0.5 - 0.75 = -0.25
    assert by["d3"]["values"] == pytest.approx({0: -0.10, 1: -0.15}) and by["d3"]["kind"] == "exact"
    close(by["d3"]["difference"], -0.125, T1 * 0.025)
    close(by["d4"]["difference"], -0.225, T1 * 0.025)
    loss = {r["rung"]: r for r in paired_differences(per_seed(), RECIPES, "copy", "plain", at_budget=0.25)}
    # at budget 0.25: d3 3.40 - 3.45 = -0.05, 3.41 - 3.50 = -0.09: mean -0.07, half t1 * 0.02
    assert loss["d3"]["measure"] == "cooled val loss at budget 0.25"
    close(loss["d3"]["difference"], -0.07, T1 * 0.02)
    close(loss["d4"]["difference"], -0.05, 0.0)  # -0.05 on both seeds: no spread


def test_a_rung_not_reached_in_one_seed_makes_the_row_a_bound():
    ps = per_seed(plain_d4_last_seed1=2.85)  # seed 1's plain d4 ends above 2.8: not reached at <= 7.5e12
    rows = rows_by(answer_table(ps, RECIPES, [3, 4]))
    p4 = rows[("d4", "plain")]
    assert p4["bound"] and p4["kind"] == "at most" and p4["statuses"][1] == NOT_REACHED and p4["n"] == 2
    close(p4["fraction"], 0.675)  # still (0.6 + 0.75)/2, now a lower bound of the fraction: no interval
    assert "bound" in p4["fraction"]["method"]
    assert (rows[("ladder", "plain")]["kind"] == "at most"
            and rows[("ladder", "plain")]["kinds"] == {0: "exact", 1: "at most"})
    d4 = {r["rung"]: r for r in paired_differences(ps, RECIPES, "copy", "plain")}["d4"]
    # copy exact minus plain's lower bound: the difference is at most its mean; seed 0 alone is exact
    assert d4["kind"] == "at most" and d4["kinds"] == {0: "exact", 1: "at most"}
    close(d4["difference"], -0.225)
    close(d4["exact"], -0.2)
    # the other way round, plain's lower bound minus copy: at least its mean, +0.225
    rev = {r["rung"]: r for r in paired_differences(ps, RECIPES, "plain", "copy")}["d4"]
    assert rev["kind"] == "at least" and math.isclose(rev["difference"]["mean"], 0.225)
    md = "\n".join(render_study_markdown(answer_table(ps, RECIPES, [3, 4]),
                                         paired_differences(ps, RECIPES, "copy", "plain")))
    assert "| d4 (x1.50) | plain | ≥ 0.675 | ≤ 32.5% | " in md
    assert ("| 0, 1 (not reached) | scratch d4's full budget (1e+13 FLOPs, val loss 2.8000); "
            "a bound: no interval |") in md
    assert "≤ -0.225; over the 1 seed(s) where both reached: -0.200 (1 seed)" in md
    # each seed's own values, the bound one marked with its status: seed 1 ladder 1 - (1 + 2.4 + 7.5)/15
    assert "| rung | recipe | saving | seed 0 | seed 1 |" in md
    assert "| d4 | plain | per rung | 40.0% | 25.0% (not reached) |" in md
    assert "| d2..d4 | plain | ladder | 40.0% | 27.3% (at most) |" in md


def test_growth_factor_fit_against_scipy_and_by_hand():
    table = answer_table(per_seed(), RECIPES, [3, 4])
    used, bounds = saving_points(table, "copy")
    got = sorted((p["growth_factor"], p["saving"]) for p in used)
    assert bounds == [] and [g for g, _ in got] == [1.5, 1.5, 2.0, 2.0]
    assert [y for _, y in got] == pytest.approx([0.5, 0.6, 0.55, 0.6])
    points = [(p["growth_factor"], p["saving"]) for p in used]
    fit = growth_factor_fit(points, {"x1.2": 1.2, "x3": 3.0})
    # by hand: two growth factors, two points each; the line joins the group means 0.55 (ln 1.5) and
    # 0.575 (ln 2): slope 0.025 / ln(4/3); Sxx = 4 (ln(4/3) / 2)^2 = ln(4/3)^2; residuals +-0.025,
    # +-0.05: s^2 = (2 * 0.025^2 + 2 * 0.05^2) / 2
    gap, s = math.log(4 / 3), math.sqrt(0.003125)
    assert math.isclose(fit["slope"], 0.025 / gap) and math.isclose(fit["sxx"], gap ** 2)
    assert math.isclose(fit["s"], s) and fit["df"] == 2 and math.isclose(fit["t"], T2)
    assert math.isclose(fit["slope_ci"][1] - fit["slope"], T2 * s / gap)
    ref = stats.linregress([math.log(g) for g, _ in points], [y for _, y in points])
    assert math.isclose(fit["slope"], ref.slope) and math.isclose(fit["intercept"], ref.intercept)
    assert math.isclose(fit["slope_ci"][1] - fit["slope"], T2 * ref.stderr)
    for a in fit["at"]:  # the prediction band: t_{n-2} s sqrt(1 + 1/n + (x0 - xbar)^2 / Sxx)
        x0, xbar = math.log(a["growth_factor"]), math.log(math.sqrt(3))  # xbar = (ln 2 + ln 1.5) / 2
        y0 = 0.5625 + 0.025 / gap * (x0 - xbar)
        half = T2 * s * math.sqrt(1 + 1 / 4 + (x0 - xbar) ** 2 / gap ** 2)
        assert math.isclose(a["fit"], y0) and math.isclose(a["lo"], y0 - half) and math.isclose(a["hi"], y0 + half)
    # x3: 0.5625 + 0.0869 * 0.5493 = 0.610, half 4.3027 * 0.0559 * sqrt(1.25 + 4.361) = 0.570: [0.04, 1.18]
    # does not span 0 -> determined; x1.2's band [0.04, 1.00] neither; a wider one does
    assert [a["determined"] for a in fit["at"]] == [True, True]
    wide = predict({**fit, "s": 0.2}, 1.2)
    assert wide["lo"] < 0 and wide["hi"] > 0.5 and not wide["determined"]


def test_growth_factor_fit_undetermined_and_bad_points():
    few = growth_factor_fit([(2.0, 0.5), (1.5, 0.4)], {"x1.47": 1.47})
    assert not few["determined"] and few["reason"].startswith("undetermined: 2 point(s)")
    assert few["at"] == [{"label": "x1.47", "growth_factor": 1.47, "determined": False}]
    same = growth_factor_fit([(2.0, 0.5), (2.0, 0.4), (2.0, 0.6)], {})
    assert not same["determined"] and "a single growth factor" in same["reason"]
    with pytest.raises(ValueError, match=r"positive finite growth factors.*\(0\.0, 0\.5\)"):
        growth_factor_fit([(0.0, 0.5), (2.0, 0.4), (1.5, 0.6)], {})
    md = "\n".join(render_study_markdown([], fits={"copy": few}))
    assert "- **copy**: undetermined: 2 point(s)" in md


def test_render_study_markdown_shows_the_answer_first():
    ps = per_seed()
    table = answer_table(ps, RECIPES, [3, 4])
    fit = growth_factor_fit([(p["growth_factor"], p["saving"]) for p in saving_points(table, "copy")[0]],
                            {"wide": 1.01, "x1.2": 1.2})
    fit["at"][0]["determined"] = False  # rendered as undetermined whatever the numbers
    tuning = scratch_tuning_points(ps[0]["plain"], 0.5, 9)[:1] + [
        {"phase": "grown LR", "depth": 4, "recipe": "copy", "lr_mult": 2, "fraction": 0.4123, "seed": 9}]
    lines = render_study_markdown(table, paired_differences(ps, RECIPES, "copy", "plain"), {"copy": fit}, tuning)
    md = "\n".join(lines)
    assert lines[:5] == ["# Growth study", "", "## The answer", "",
                         "| rung | recipe | FLOPs-to-match [95% CI] | marginal saving | standalone | whole-chain | "
                         "transfer | seeds | against what |"]
    lo, hi = 0.425 - T1 * 0.025, 0.425 + T1 * 0.025
    assert f"| d3 (x2.00) | copy | 0.425 [{lo:.3f}, {hi:.3f}] | 57.5% [" in md
    assert f"| 2.30 [{2.3 - T1 * 0.1:.2f}, {2.3 + T1 * 0.1:.2f}] | 0, 1 | scratch d3's full budget (4e+12 FLOPs, " in md
    assert f"- **copy ladder d2..d4**: 52.0% [{0.52 - T1 * 0.04:.1%}, {0.52 + T1 * 0.04:.1%}] of the scratch" in md
    assert "| d3 | copy - plain | FLOPs-to-match fraction | -0.125 [" in md and "| -0.100, -0.150 |" in md
    at = lines.index("### Per seed")
    assert lines[at + 3:at + 6] == ["|---|---|---|---|---|", "| d3 | plain | per rung | 50.0% | 40.0% |",
                                    "| d3 | plain | whole chain | 25.0% | 15.0% |"]
    assert "| d3 | copy | transfer | 2.40 | 2.20 |" in md and "| d2..d4 | copy | ladder | 56.0% | 48.0% |" in md
    assert "undetermined: [" in md and "spans 0 to 50.0%" in md and "| x1.2 | x1.200 |" in md
    assert "| scratch LR | d2 | scratch | x0.5 | 1 | 4.0000 |  | 9 |" in md
    assert "| grown LR | d4 | copy | x2 |  |  | 0.412 | 9 |" in md
    with pytest.raises(ValueError, match="needs a val_loss or a fraction"):
        render_study_markdown(table, tuning=[{"phase": "x", "depth": 2, "recipe": "r", "lr_mult": 1, "seed": 0}])


def test_inputs_that_do_not_fit_are_named():
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        recipe_answers(per_seed(), RECIPES, "nope")
    with pytest.raises(ValueError, match="seed 0: recipe 'plain'.s summary has no answer for arm 'inherit'"):
        recipe_answers(per_seed(), {"plain": "inherit"}, "plain")
    # a seed that did not run a recipe: the recipe's rows count the seeds that did
    ps = per_seed()
    del ps[1]["copy"]
    rows = rows_by(answer_table(ps, RECIPES, [3]))
    assert rows[("d3", "copy")]["n"] == 1 and rows[("d3", "plain")]["n"] == 2
    close(rows[("d3", "copy")]["fraction"], 0.4)


def test_nanochat_growth_factors_and_the_reference_point():
    gf = nanochat_growth_factors()
    assert list(gf)[0] == "d10->d11" and list(gf)[-1] == "d19->d20" and len(gf) == 10
    sp = model_config("nanochat", 11).scaling_params / model_config("nanochat", 10).scaling_params
    assert gf["d10->d11"] == sp and all(g > 1 for g in gf.values())
    with pytest.raises(ValueError, match="lo=5, hi=5"):
        nanochat_growth_factors(5, 5)
    # evaluations at 1, 2, 3 (e12 FLOPs) with losses 4.0, 3.0, 2.0; the parent's loss 2.5 is crossed
    # halfway between 2 and 3: 2.5e12 of a 10e12 full budget
    assert reference_point([(1e12, 4.0), (2e12, 3.0), (3e12, 2.0)], 2.5, 10e12) == pytest.approx(0.25)
    assert reference_point([(1e12, 4.0)], 2.5, 10e12) is None
    assert reference_point([(1e12, 2.0)], 2.5, 10e12) == pytest.approx(0.1)


def test_plot_growth_factor_fit(tmp_path):
    fit = growth_factor_fit([(2.0, 0.6), (2.0, 0.55), (1.5, 0.6), (1.5, 0.5)], {"x1.47": 1.47})
    out = plot_growth_factor_fit(fit, [(2.0, 0.6), (2.0, 0.55), (1.5, 0.6), (1.5, 0.5)], tmp_path / "fit.png")
    assert out.stat().st_size > 1000
    few = growth_factor_fit([(2.0, 0.6)], {"x1.47": 1.47})
    assert plot_growth_factor_fit(few, [(2.0, 0.6)], tmp_path / "few.png").exists()


def test_equal_budget_differences_pair_each_grown_rung_with_its_scratch_twin():
    # budget 0.5: grown d3 ends at 3.2, scratch d3 at 3.5 (-0.3); grown d4 at 2.8 (plain seed 1: 2.9), scratch 3.0
    rows = {r["rung"]: r for r in equal_budget_differences(per_seed(plain_d4_last_seed1=2.9), RECIPES, "plain", 0.5)}
    assert rows["d3"]["values"] == pytest.approx({0: -0.3, 1: -0.3}) and rows["d3"]["baseline"] == "scratch"
    close(rows["d4"]["difference"], -0.15, T1 * 0.05)
    assert rows["d4"]["measure"] == "cooled val loss at budget 0.5"
    assert equal_budget_differences(per_seed(), RECIPES, "plain", 1.0) == []  # no grown run at the full budget
    md = "\n".join(render_study_markdown(answer_table(per_seed(), RECIPES, [3, 4]),
                                         equal_budget=list(rows.values())))
    assert "## At equal compute (grown minus scratch, same seed)" in md
    assert "| d4 | plain - scratch | cooled val loss at budget 0.5 | -0.1500 [" in md


def test_per_seed_table_leaves_a_seed_that_did_not_measure_a_recipe_empty():
    ps = per_seed()
    del ps[1]["copy"]
    md = per_seed_markdown(answer_table(ps, RECIPES, [3, 4]))
    assert "| d3 | copy | per rung | 60.0% |  |" in md and "| d3 | plain | per rung | 50.0% | 40.0% |" in md
