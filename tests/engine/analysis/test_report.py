"""The miniseries report's headline numbers (engine/analysis/report.py: summarize, answer_lines) on
small synthetic ladders whose every number is computed by hand below, and its setup paragraph."""
import math
from dataclasses import dataclass, field

import pytest

from engine.analysis.report import answer_lines, curve, setup_paragraph, summarize
from engine.analysis.savings import BELOW_SMALLEST, NOT_REACHED, REACHED
from engine.ladder.config import ARMS, LadderConfig

SQRT2 = math.sqrt(2.0)


@dataclass
class Ladder:  # summarize reads only lc.depths, and records the whole config with asdict
    depths: list = field(default_factory=lambda: [2, 3])


def run(budget, flops, loss, params, fisher=0.0, penalty=0.0, se=None):
    return {"budget_frac": budget, "flops": flops, "fisher_flops": fisher, "penalty_flops": penalty,
            "val_loss": loss, "val_loss_se": se, "scaling_params": params, "steps": 10, "tokens": 100,
            "run": f"/runs/b{budget}"}


BASE = {"depth": 2, "grown_from": None, "runs": [run(1.0, 1e12, 4.0, 1000, se=0.01)]}
GROWN_FROM = {"cost": 1e12, "budget_frac": 1.0, "kind": "cooled", "checkpoint": "/runs/d2/ckpt",
              "reached_target": True, "val_loss": 4.0}
RESULTS = {
    "scratch": [BASE, {"depth": 3, "grown_from": None,
                       "runs": [run(0.5, 2e12, 3.6, 2000), run(1.0, 4e12, 3.2, 2000, se=0.02)]}],
    # the grown d3's cost per budget: 0.5e12 + 0.2e12 (Fisher) + 0.3e12 (penalty) = 1e12; 1.8e12 + 0.2e12 = 2e12
    "inherit": [BASE, {"depth": 3, "grown_from": GROWN_FROM,
                       "runs": [run(0.25, 0.5e12, 3.4, 2000, fisher=0.2e12, penalty=0.3e12),
                                run(0.5, 1.8e12, 3.0, 2000, fisher=0.2e12)]}],
}


def test_curve_charges_fisher_and_penalty():
    assert curve(RESULTS["inherit"][1]) == [(1e12, 3.4), (2e12, 3.0)]


def test_summarize_grown_rung_against_its_scratch_twin():
    s = summarize(Ladder(), RESULTS)["answer"]
    assert list(s) == ["inherit"]  # the scratch arm is the reference, not an answer
    d3 = s["inherit"]["d3"]
    # target: scratch d3's full budget, loss 3.2 at 4e12. The grown curve (1e12, 3.4) -> (2e12, 3.0)
    # crosses 3.2 halfway in loss, so halfway in log cost: sqrt(1e12 * 2e12) = sqrt(2) e12.
    assert d3["status"] == REACHED and d3["target_loss"] == 3.2 and d3["scratch_flops"] == 4e12
    assert math.isclose(d3["flops_to_match"], SQRT2 * 1e12, rel_tol=1e-12)
    assert math.isclose(d3["fraction"], SQRT2 / 4)  # 0.3536
    assert math.isclose(d3["marginal_saving"], 1 - SQRT2 / 4)  # 0.6464
    # standalone adds the parent run the rung grew from (1e12): (sqrt(2) + 1) / 4 = 0.6036
    assert math.isclose(d3["standalone_fraction"], (SQRT2 + 1) / 4)
    assert math.isclose(d3["standalone_saving"], 1 - (SQRT2 + 1) / 4)
    assert d3["parent_flops"] == 1e12 and d3["growth_factor"] == 2.0  # 2000 / 1000 scaling params
    # iso-loss: scratch's 3.6 (at 2e12) is beaten by the grown rung's smallest budget (3.4 at 1e12):
    # a bound, speedup 2; scratch's 3.2 (at 4e12) is reached at sqrt(2) e12, speedup 4 / sqrt(2)
    first, second = d3["iso_loss"]
    assert (first["status"], first["inherit_flops"], first["speedup"]) == (BELOW_SMALLEST, 1e12, 2.0)
    assert second["status"] == REACHED and math.isclose(second["speedup"], 4 / SQRT2)


def test_summarize_ladder_and_tables():
    summary = summarize(Ladder(), RESULTS)
    lad = summary["ladder"]["inherit"]
    # scratch ladder: d2 1e12 + d3 4e12 = 5e12; inheriting: base 1e12 + d3's sqrt(2) e12
    assert lad["kind"] == "exact" and lad["scratch_flops"] == 5e12
    assert math.isclose(lad["inherit_flops"], (1 + SQRT2) * 1e12)
    assert math.isclose(lad["saving"], 1 - (1 + SQRT2) / 5)  # 0.5172
    assert [(r["depth"], r["budget_frac"], r["cost"]) for r in summary["arms"]["inherit"]] == [
        (2, 1.0, 1e12), (3, 0.25, 1e12), (3, 0.5, 2e12)]
    assert summary["grown_from"] == {"scratch": {}, "inherit": {"d3": GROWN_FROM}}
    assert summary["val_loss_se_max"] == 0.02
    assert summary["config"] == {"depths": [2, 3]}


def test_answer_lines_state_the_numbers():
    lines = answer_lines(summarize(Ladder(), RESULTS))
    assert "at **0.354** of scratch's FLOPs" in lines[0]
    assert "marginal saving **64.6%**" in lines[0] and "standalone (parent's FLOPs added) **39.6%**" in lines[0]
    assert lines[1].startswith("- **inherit ladder**: 51.7% of the scratch ladder's FLOPs saved (")


def test_without_a_scratch_arm_there_is_nothing_to_compare():
    summary = summarize(Ladder(), {"inherit": RESULTS["inherit"]})
    assert summary["answer"] == {} and summary["ladder"] == {}
    assert answer_lines({**summary, "val_loss_se_max": None}) == [
        "- No grown rung with a scratch twin in this ladder: nothing to compare."]


# A third rung. Scratch d4: loss 2.8 at its full budget, 8e12. The grown d4 grew from the grown d3's
# budget-0.5 run (cost 2e12: 1.8e12 + 0.2e12 Fisher); its curve (2e12, 3.0) -> (4e12, 2.6) crosses
# 2.8 halfway in loss, so at sqrt(2e12 * 4e12) = 2 sqrt(2) e12.
D3_GROWN_FROM = {"cost": 2e12, "budget_frac": 0.5, "kind": "cooled", "checkpoint": "/runs/d3/ckpt",
                 "reached_target": True, "val_loss": 3.0}
SCRATCH_D4 = {"depth": 4, "grown_from": None, "runs": [run(0.5, 4e12, 3.0, 4000), run(1.0, 8e12, 2.8, 4000)]}


def three_rungs(d4_last_loss: float) -> dict:
    grown_d4 = {"depth": 4, "grown_from": D3_GROWN_FROM,
                "runs": [run(0.25, 2e12, 3.0, 4000), run(0.5, 4e12, d4_last_loss, 4000)]}
    return {"scratch": RESULTS["scratch"] + [SCRATCH_D4], "inherit": RESULTS["inherit"] + [grown_d4]}


def test_whole_chain_saving_charges_every_run_the_chain_grew_from():
    summary = summarize(Ladder([2, 3, 4]), three_rungs(2.6))
    d3, d4 = summary["answer"]["inherit"]["d3"], summary["answer"]["inherit"]["d4"]
    # d3: its chain is the d2 run it grew from (1e12): the same as standalone, (1 + sqrt 2) / 4
    assert math.isclose(d3["whole_chain_fraction"], (1 + SQRT2) / 4) and d3["whole_chain_kind"] == "exact"
    # d4: the d2 run d3 grew from (1e12) + the d3 run d4 grew from (2e12) + d4's 2 sqrt(2) e12, of
    # scratch d4's 8e12: (3 + 2 sqrt 2) / 8 = 0.7286, saving 27.1%; standalone only adds the 2e12 parent
    assert math.isclose(d4["fraction"], SQRT2 / 4)
    assert math.isclose(d4["standalone_fraction"], (2 + 2 * SQRT2) / 8)
    assert math.isclose(d4["chain_flops"], (3 + 2 * SQRT2) * 1e12)
    assert math.isclose(d4["whole_chain_fraction"], (3 + 2 * SQRT2) / 8)
    assert math.isclose(d4["whole_chain_saving"], 1 - (3 + 2 * SQRT2) / 8) and d4["whole_chain_kind"] == "exact"
    # the ladder: scratch 1 + 4 + 8 = 13e12 against 1 + sqrt 2 + 2 sqrt 2 = (1 + 3 sqrt 2) e12
    assert math.isclose(summary["ladder"]["inherit"]["saving"], 1 - (1 + 3 * SQRT2) / 13)
    line = answer_lines(summary)[1]
    assert line.startswith("- **inherit d4**") and "whole chain (every rung below it charged the run it was " \
        "grown from) **27.1%**" in line


def test_whole_chain_of_an_unreached_rung_is_a_bound():
    # d4's curve ends at 2.9 > 2.8: not reached at <= 4e12, so the chain costs at least 1 + 2 + 4 of 8
    summary = summarize(Ladder([2, 3, 4]), three_rungs(2.9))
    d4 = summary["answer"]["inherit"]["d4"]
    assert d4["status"] == NOT_REACHED and d4["whole_chain_kind"] == "at most"
    assert math.isclose(d4["whole_chain_saving"], 1 - 7 / 8)
    assert "whole chain (every rung below it charged the run it was grown from) at most **12.5%**)." in \
        answer_lines(summary)[1]


@pytest.mark.parametrize("arm, penalty, ars", [("grow-only", False, False), ("inherit-noars", True, False),
                                               ("inherit-nopenalty", False, True), ("inherit", True, True)])
def test_setup_names_only_the_terms_some_arm_uses(arm, penalty, ars):
    lc = LadderConfig(depths=[2, 3], arms=["scratch", arm], out="/runs")
    text = setup_paragraph(lc, RESULTS, ARMS)
    assert ("Penalty lambda=100000, gamma=0.1, subspace=coords" in text) == penalty
    assert ("Fisher=online over 20 batches" in text) == penalty  # the Fisher weighs the penalty only
    assert ("ARS=seed" in text) == ars
    assert ("No arm uses the penalty or ARS" in text) == (not penalty and not ars)
    assert "seed 0" in text and "data order restart" in text


def test_setup_refuses_an_arm_it_cannot_place():
    lc = LadderConfig(depths=[2, 3], arms=["scratch", "grow-only"], out="/runs")
    with pytest.raises(ValueError, match=r"arm\(s\) \['grow-only'\] of the ladder are not in arm_terms"):
        setup_paragraph(lc, RESULTS, {"scratch": (False, False, False)})
