"""The savings math (engine/analysis/savings.py) on hand-computed cases."""
import math

import pytest

from engine.analysis.savings import (BELOW_SMALLEST, NOT_REACHED, REACHED, Reach, cost_to_reach, iso_loss,
                                     ladder_saving, mean_ci, monotone_envelope, rung_saving, whole_chain_saving)


def test_envelope_pools_violators():
    # 3.0 then 3.2 at a larger budget: pooled to their mean 3.1 (least-squares non-increasing fit)
    assert monotone_envelope([(4.0, 2.5), (1.0, 3.0), (2.0, 3.2)]) == [(1.0, 3.1), (2.0, 3.1), (4.0, 2.5)]
    assert monotone_envelope([(1.0, 3.0), (2.0, 2.0)]) == [(1.0, 3.0), (2.0, 2.0)]
    with pytest.raises(ValueError, match="finite positive cost"):
        monotone_envelope([(0.0, 3.0)])


def test_cost_to_reach_interpolates_in_log_cost():
    curve = [(1e12, 4.0), (4e12, 3.0), (16e12, 2.5)]
    r = cost_to_reach(curve, 3.5)  # halfway between 1e12 and 4e12 in log: the geometric mean 2e12
    assert r.status == REACHED and math.isclose(r.cost, 2e12, rel_tol=1e-12)
    r = cost_to_reach(curve, 2.75)  # halfway between 4e12 and 16e12: 8e12
    assert math.isclose(r.cost, 8e12, rel_tol=1e-12)
    assert cost_to_reach(curve, 3.0) == Reach(REACHED, 4e12)
    assert cost_to_reach(curve, 4.5) == Reach(BELOW_SMALLEST, 1e12)
    assert cost_to_reach(curve, 2.0) == Reach(NOT_REACHED, 16e12)
    assert cost_to_reach(curve, 2.0).describe(16e12) == "not reached at <= 1"


def test_rung_saving_marginal_and_standalone():
    # reaches scratch's 3.5 at 2e12 against scratch's 10e12; parent cost 3e12
    s = rung_saving([(1e12, 4.0), (4e12, 3.0)], scratch_cost=10e12, scratch_loss=3.5, parent_cost=3e12)
    assert math.isclose(s["fraction"], 0.2) and math.isclose(s["marginal_saving"], 0.8)
    assert math.isclose(s["standalone_fraction"], 0.5) and math.isclose(s["standalone_saving"], 0.5)


def test_iso_loss():
    rows = iso_loss([(1e12, 4.0), (4e12, 3.0)], [(2e12, 3.5), (8e12, 3.0)])
    assert math.isclose(rows[0]["inherit_flops"], 2e12) and math.isclose(rows[0]["speedup"], 1.0)
    assert rows[1]["inherit_flops"] == 4e12 and rows[1]["speedup"] == 2.0


def test_ladder_saving_exact_and_bounds():
    # scratch 1 + 4 + 16 = 21; inherit: base 1 + 2 + 6 = 9 -> saving 12/21
    out = ladder_saving([1.0, 4.0, 16.0], 1.0, [Reach(REACHED, 2.0), Reach(REACHED, 6.0)])
    assert out["kind"] == "exact" and math.isclose(out["saving"], 12 / 21)
    assert ladder_saving([1.0, 4.0], 1.0, [Reach(NOT_REACHED, 4.0)])["kind"] == "at most"
    assert ladder_saving([1.0, 4.0], 1.0, [Reach(BELOW_SMALLEST, 0.5)])["kind"] == "at least"
    assert ladder_saving([1.0, 4.0, 9.0], 1.0,
                         [Reach(BELOW_SMALLEST, 0.5), Reach(NOT_REACHED, 9.0)])["kind"] == "unbounded"


def test_mean_ci_student_t():
    out = mean_ci([0.4, 0.6])
    # sd = 0.1414, t(0.975, 1) = 12.706: half width = 12.706 * 0.1414 / sqrt(2) = 1.2706
    assert math.isclose(out["mean"], 0.5) and math.isclose(out["hi"] - out["mean"], 1.27062, rel_tol=1e-4)
    assert mean_ci([0.3])["lo"] is None
    with pytest.raises(ValueError):
        mean_ci([])


def test_cost_to_reach_on_a_noisy_curve_uses_the_pooled_envelope():
    # 3.0 at 2e12 then 3.2 at 4e12 pool to 3.1 at both; 2.5 at 8e12. Target 2.8 lies between 3.1 (4e12)
    # and 2.5 (8e12): t = (3.1 - 2.8) / (3.1 - 2.5) = 0.5, so the geometric mean sqrt(4e12 * 8e12).
    r = cost_to_reach([(2e12, 3.0), (4e12, 3.2), (8e12, 2.5)], 2.8)
    assert r.status == REACHED and math.isclose(r.cost, math.sqrt(32) * 1e12, rel_tol=1e-12)


def test_rung_saving_not_reached_is_a_bound():
    # the grown curve ends at 3.0 (4e12) above scratch's 2.9: FLOPs-to-match is at least 4e12 of 8e12
    s = rung_saving([(1e12, 4.0), (4e12, 3.0)], scratch_cost=8e12, scratch_loss=2.9, parent_cost=2e12)
    assert s["status"] == NOT_REACHED and s["flops_to_match"] == 4e12 and s["fraction"] == 0.5
    assert s["marginal_saving"] == 0.5 and s["standalone_fraction"] == 0.75 and s["standalone_saving"] == 0.25
    assert Reach(s["status"], s["fraction"]).describe() == "not reached at <= 0.5"


def test_whole_chain_saving_charges_the_runs_grown_from():
    # d2 run grown from 1, d3 run grown from 3, d4's FLOPs-to-match 4, against scratch d4's 16:
    # (1 + 3 + 4) / 16 = 0.5
    out = whole_chain_saving([1.0, 3.0], Reach(REACHED, 4.0), 16.0)
    assert out == {"whole_chain_fraction": 0.5, "whole_chain_saving": 0.5, "chain_flops": 8.0,
                   "whole_chain_kind": "exact"}
    # only the top rung's reach can be a bound: not reached at <= 4 makes the saving at most 0.5
    assert whole_chain_saving([1.0, 3.0], Reach(NOT_REACHED, 4.0), 16.0)["whole_chain_kind"] == "at most"
    assert whole_chain_saving([1.0], Reach(BELOW_SMALLEST, 1.0), 4.0)["whole_chain_kind"] == "at least"
    with pytest.raises(ValueError, match="at least the parent run"):
        whole_chain_saving([], Reach(REACHED, 1.0), 4.0)
    with pytest.raises(ValueError, match="scratch_cost must be positive, got 0"):
        whole_chain_saving([1.0], Reach(REACHED, 1.0), 0.0)
