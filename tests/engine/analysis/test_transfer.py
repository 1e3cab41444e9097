"""Transfer (engine/analysis/transfer.py): its unit, the line through T = 1 at g = 1, and the ladder
it projects, each number worked out by hand."""
import math

import pytest

from engine.analysis.transfer import (ladder_flops, project_ladder, transfer, transfer_at, transfer_fit,
                                      transfer_markdown)
from models.config import model_config

T1 = 12.706204736174698  # t(0.975, 1)
E, E2 = math.e, math.e ** 2  # growth factors with ln g = 1 and 2


def test_transfer_is_saved_flops_per_flop_of_the_parent_depths_scratch_training():
    assert transfer({"scratch_flops": 10.0, "flops_to_match": 4.0, "parent_scratch_flops": 4.0}) == 1.5
    with pytest.raises(ValueError, match="needs its parent depth's scratch FLOPs .* got None"):
        transfer({"scratch_flops": 10.0, "flops_to_match": 4.0})


def test_the_line_goes_through_one_at_growth_one():
    exact = transfer_fit([(E, 2.0), (E2, 3.0)])  # T - 1 = ln g exactly
    assert exact["determined"] and exact["b"] == pytest.approx(1.0) and exact["s"] == pytest.approx(0.0)
    # x = 1, 2 and y = T - 1 = 1, 1: b = (1 + 2) / (1 + 4) = 0.6, residuals 0.4 and -0.2, s = sqrt(0.2)
    fit = transfer_fit([(E, 2.0), (E2, 2.0)])
    assert fit["b"] == pytest.approx(0.6) and fit["s"] == pytest.approx(math.sqrt(0.2))
    assert fit["b_ci"][1] - fit["b"] == pytest.approx(T1 * math.sqrt(0.2) / math.sqrt(5))
    at1 = transfer_at(fit, 1.0)
    assert at1["transfer"] == 1.0 and at1["hi"] - 1.0 == pytest.approx(T1 * math.sqrt(0.2))
    assert transfer_at(fit, E2)["transfer"] == pytest.approx(2.2)


@pytest.mark.parametrize("points, why", [([(2.0, 1.5)], "1 point(s)"),
                                         ([(1.0, 1.5), (1.0, 0.5)], "every point at growth factor 1")])
def test_too_few_points_determine_nothing(points, why):
    fit = transfer_fit(points)
    assert not fit["determined"] and why in fit["reason"]
    with pytest.raises(ValueError, match="needs a determined transfer fit"):
        project_ladder(fit)
    with pytest.raises(ValueError, match="positive finite growth factors"):
        transfer_fit([(0.0, 1.0), (2.0, 1.0)])


def test_a_transfer_of_one_everywhere_saves_the_parents_and_makes_the_chain_cost_the_top_rung():
    flat = transfer_fit([(E, 1.0), (E2, 1.0)])  # b = 0, s = 0
    p = project_ladder(flat, preset="cpu-tiny", lo=2, hi=4)
    f = ladder_flops("cpu-tiny", 2, 4)
    c = {d: model_config("cpu-tiny", d) for d in (2, 3, 4)}
    assert f[3] == c[3].flops_per_token * c[3].scaling_params
    # every grown rung saves exactly its parent's scratch FLOPs: ladder (F2 + F3) / (F2 + F3 + F4), and
    # the chain costs F2 + (F3 - F2) + (F4 - F3) = F4: whole chain exactly 0
    assert p["ladder"] == pytest.approx((f[2] + f[3]) / sum(f.values()))
    assert p["whole_chain"] == pytest.approx(0.0, abs=1e-12) and p["valid"]
    assert p["ladder_range"] == pytest.approx((p["ladder"], p["ladder"]))
    step = p["steps"][0]
    assert step["label"] == "d2->d3" and step["parent_share"] == pytest.approx(f[2] / f[3])
    assert step["marginal"] == pytest.approx(step["parent_share"])
    assert step["growth_factor"] == pytest.approx(c[3].scaling_params / c[2].scaling_params)


def test_a_larger_slope_saves_more_and_the_interval_is_its_ends():
    fit = transfer_fit([(E, 2.0), (E2, 2.0)])  # b = 0.6 [0.6 - h, 0.6 + h]
    p = project_ladder(fit, preset="cpu-tiny", lo=2, hi=4)
    flat = project_ladder(transfer_fit([(E, 1.0), (E2, 1.0)]), preset="cpu-tiny", lo=2, hi=4)
    assert p["ladder"] > flat["ladder"] and p["whole_chain"] > 0
    lo, hi = p["ladder_range"]
    assert lo < p["ladder"] < hi and p["whole_chain_range"][0] < p["whole_chain"] < p["whole_chain_range"][1]
    md = "\n".join(transfer_markdown("copy", fit, p))
    assert "- **copy**: transfer = 1 + 0.600 ln g over 2 (seed, rung) points (mean transfer 2.00)" in md
    assert lo < 0 and hi > 0.5  # two points, df 1: t = 12.7
    assert (f"**ladder saving {p['ladder']:.1%}** (over the slope's interval: undetermined: [{lo:.1%}, {hi:.1%}] "
            f"spans 0 to 50%)") in md
    assert "| d3->d4 | x" in md
    # a narrow band is printed as it is
    tight = transfer_fit([(E, 2.0), (E2, 3.0)])  # exact: s = 0
    tp = project_ladder(tight, preset="cpu-tiny", lo=2, hi=4)
    assert f"**ladder saving {tp['ladder']:.1%}** (over the slope's interval: [{tp['ladder']:.1%}, " in "\n".join(
        transfer_markdown("copy", tight, tp))
    assert transfer_markdown("copy", transfer_fit([]), None) == [
        "- **copy**: undetermined: 0 point(s) (the line through T = 1 at g = 1 needs 2 points or more, some at "
        "g != 1).", ""]
