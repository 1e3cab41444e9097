"""The miniseries report's headline numbers (engine/analysis/report.py: summarize, answer_lines) on a
small synthetic ladder whose every number is computed by hand below."""
import math
from dataclasses import dataclass, field

from engine.analysis.report import answer_lines, curve, summarize
from engine.analysis.savings import BELOW_SMALLEST, REACHED

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
