"""The lever screen's arithmetic (engine/analysis/screen.py) on a hand-made two-arm summary: the match
points' difference, the paired noise converted at the baseline curve's slope, the admission verdict."""
import json

import pytest
import torch

from engine.analysis.screen import admitted, noise_in_fraction, render_markdown, screen_seed, slope_at


def _summary(tmp_path, lever_fraction, lever_status="reached"):
    rows = lambda losses: [{"depth": 3, "budget_frac": b, "cost": c, "val_loss": v}  # noqa: E731
                           for b, c, v in zip((0.5, 0.7), (50.0, 70.0), losses)]
    s = {"arms": {"base": rows((4.0, 3.8)), "lever": rows((3.9, 3.7))},
         "answer": {"base": {"d3": {"status": "reached", "fraction": 0.6, "scratch_flops": 100.0}},
                    "lever": {"d3": {"status": lever_status, "fraction": lever_fraction, "scratch_flops": 100.0}}}}
    (tmp_path / "summary.json").write_text(json.dumps(s))
    return tmp_path


def _windows(shift):
    base = torch.linspace(3.0, 5.0, 64, dtype=torch.float64)
    return lambda run, eval_tokens: base + (shift if "lever" in str(run) else 0.0) + 0.01 * torch.sin(
        torch.arange(64, dtype=torch.float64)) * ("lever" in str(run))


def test_slope_and_noise():
    curve = [(0.5, 4.0, 0.5), (0.7, 3.8, 0.7)]
    assert slope_at(curve, 0.6) == pytest.approx(-1.0)
    assert slope_at(curve, 0.9) == pytest.approx(-1.0)  # outside: the end segment
    assert noise_in_fraction(0.01, -0.5) == pytest.approx(0.02)
    assert noise_in_fraction(0.01, 0.0) == float("inf")
    with pytest.raises(ValueError, match="at least two runs"):
        slope_at(curve[:1], 0.5)


@pytest.mark.parametrize("lever_fraction, beats", [(0.55, True), (0.5995, False), (0.65, False)])
def test_screen_row_and_verdict(tmp_path, lever_fraction, beats):
    out = _summary(tmp_path, lever_fraction)
    (row,) = screen_seed(out, 3, "base", 1024, window_losses=_windows(-0.05))
    assert row["arm"] == "lever" and row["paired_budget"] == 0.5  # the budget nearest the match point 0.6
    assert row["diff"] == pytest.approx(lever_fraction - 0.6) and row["slope"] == pytest.approx(-1.0)
    assert row["loss_diff"] == pytest.approx(-0.05, abs=1e-3)
    assert row["noise"] == pytest.approx(row["loss_diff_se"]) and 1e-4 < row["noise"] < 2e-3
    assert row["beats"] is beats and admitted([row]) == {"lever": beats}
    assert "`lever`" in render_markdown([row])


def test_a_lever_must_beat_on_every_seed(tmp_path):
    rows = [{"arm": "a", "beats": True}, {"arm": "a", "beats": False}, {"arm": "b", "beats": True}]
    assert admitted(rows) == {"a": False, "b": True}


def test_unknown_baseline_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"baseline arm 'nope' is not in"):
        screen_seed(_summary(tmp_path, 0.5), 3, "nope", 1024, window_losses=_windows(0.0))
