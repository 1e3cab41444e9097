"""Scaling-law fits (engine/analysis/scaling.py); the sweep/fit CLI: tests/launch/test_scaling_laws.py."""
from __future__ import annotations

import math

import numpy as np
import pytest

from engine.analysis.scaling import fit_chinchilla, isoflop_analysis, optimal_allocation, predict, ratio_at
from tests.helpers.scaling import TRUE, grid


def test_recovers_noiseless_parameters():
    N, D = grid()
    fit = fit_chinchilla(N, D, predict(TRUE, N, D), n_bootstrap=0)
    for k, v in TRUE.items():
        assert fit[k] == pytest.approx(v, rel=0.01), k
    assert fit["n_points"] == len(N) and fit["huber_delta"] == 1e-3
    assert fit["ci"]["E"] is None and fit["n_bootstrap"] == 0
    # derived allocation, checked against the closed form
    C = fit["ratio_opt_compute"]
    assert C == pytest.approx(float(np.max(6 * N * D)))
    a, b = TRUE["alpha"], TRUE["beta"]
    G = (a * TRUE["A"] / (b * TRUE["B"])) ** (1 / (a + b))
    n_opt = G * (C / 6) ** (b / (a + b))
    assert fit["N_opt"] == pytest.approx(n_opt, rel=0.02)
    assert fit["ratio_opt"] == pytest.approx((C / 6) / n_opt**2, rel=0.03)
    assert fit["a_exp"] == pytest.approx(b / (a + b), rel=0.01)


def test_allocation_is_the_constrained_minimum():
    C = 1e21
    n_opt, d_opt = optimal_allocation(TRUE, C)
    assert 6 * n_opt * d_opt == pytest.approx(C)
    for f in (0.9, 1.1):  # moving along the iso-compute curve raises the loss
        assert predict(TRUE, n_opt * f, C / (6 * n_opt * f)) > predict(TRUE, n_opt, d_opt)
    assert ratio_at(TRUE, C) == pytest.approx(d_opt / n_opt)
    assert predict(TRUE, 1e9, 2e10) == pytest.approx(1.69 + 406.4 / 1e9**0.34 + 410.7 / 2e10**0.28)


def test_noisy_fit_interval_covers_truth():
    N, D = grid()
    rng = np.random.default_rng(1)
    L = predict(TRUE, N, D) * np.exp(rng.normal(0.0, 0.005, len(N)))
    fit = fit_chinchilla(N, D, L, n_bootstrap=30, seed=0, n_refine=16)
    assert fit["n_bootstrap"] == 30
    for k, v in TRUE.items():
        lo, hi = fit["ci"][k]
        assert lo <= v <= hi, (k, lo, v, hi)
    lo, hi = fit["ci"]["ratio_opt"]
    assert lo <= fit["ratio_opt"] <= hi
    # same seed, same intervals
    a, b = (fit_chinchilla(N, D, L, n_bootstrap=3, seed=5, n_refine=4) for _ in range(2))
    assert a["ci"] == b["ci"]


@pytest.mark.parametrize(
    "N, D, L, match",
    [
        ([1e6, 2e6, 3e6, 4e6], [1e7, 2e7, 3e7, 4e7], [3.0, 2.9, 2.8, 2.7], "5 distinct"),
        ([1e6] * 6, [1e7, 2e7, 3e7, 4e7, 5e7, 6e7], [3.0] * 6, "degenerate"),
        ([1e6, 2e6, 3e6, 4e6, 5e6, 6e6], [1e7] * 6, [3.0] * 6, "degenerate"),
        ([1e6, 1e6, 1e6, 1e6, 1e6, 2e6], [1e7] * 5 + [2e7], [3.0] * 6, "5 distinct"),
        ([1e6, 2e6, 3e6, 4e6, -5e6], [1e7] * 5, [3.0] * 5, "positive"),
        ([1e6, 2e6, 3e6, 4e6, 5e6], [1e7, 2e7, 3e7, 4e7, 5e7], [3.0, 2.9, float("nan"), 2.7, 2.6], "non-finite"),
        ([1e6, 2e6, 3e6, 4e6, 5e6], [1e7, 2e7, 3e7, 4e7], [3.0] * 5, "same length"),
    ],
)
def test_bad_input_errors(N, D, L, match):
    with pytest.raises(ValueError, match=match):
        fit_chinchilla(N, D, L, n_bootstrap=0)


def test_isoflop_recovers_known_parabolas():
    # loss = L0(C) + k (ln N - ln N*(C))^2 with N*(C) = 0.3 C^0.45, D = C / (6N)
    rows = []
    for C in (1e15, 1e16, 1e17, 1e18):
        n_star = 0.3 * C**0.45
        for f in (0.25, 0.5, 1.0, 2.0, 4.0, 8.0):
            n = n_star * f * 1.3  # off-centre sampling
            rows.append({"flops_budget": C, "params": n, "tokens": C / (6 * n),
                         "loss": 3.0 - 0.1 * math.log10(C) + 0.05 * math.log(n / n_star) ** 2})
    out = isoflop_analysis(rows)
    assert out["a"] == pytest.approx(0.45, rel=1e-6)
    assert out["b"] == pytest.approx(0.55, rel=1e-6)
    assert out["N_coef"] == pytest.approx(0.3, rel=1e-5)
    for b in out["budgets"]:
        n_star = 0.3 * b["flops_budget"] ** 0.45
        assert b["ok"] and b["interior"]
        assert b["N_opt"] == pytest.approx(n_star, rel=1e-6)
        assert b["D_opt"] == pytest.approx(b["flops_budget"] / (6 * n_star), rel=1e-6)
        assert b["ratio"] == pytest.approx(b["D_opt"] / b["N_opt"])
    assert out["largest_budget"] == 1e18 and out["ratio_at_largest"] == out["budgets"][-1]["ratio"]


def test_isoflop_degenerate_budgets():
    rows = [{"flops_budget": 1e15, "params": n, "tokens": 1e15 / (6 * n), "loss": loss}
            for n, loss in ((1e5, 3.0), (2e5, 2.9))]
    rows += [{"flops_budget": 1e16, "params": n, "tokens": 1e16 / (6 * n), "loss": loss}
             for n, loss in ((1e5, 2.0), (2e5, 2.5), (4e5, 2.0))]
    out = isoflop_analysis(rows)
    assert [b["ok"] for b in out["budgets"]] == [False, False]  # too few sizes; concave
    assert out["a"] is None and out["ratio_at_largest"] is None
    with pytest.raises(ValueError, match="params"):
        isoflop_analysis([{"flops_budget": 1e15, "tokens": 1.0, "loss": 2.0}])
    with pytest.raises(ValueError):
        isoflop_analysis([{"flops_budget": 1e15, "params": -1.0, "tokens": 1.0, "loss": 2.0}])
    with pytest.raises(ValueError):
        isoflop_analysis([])
