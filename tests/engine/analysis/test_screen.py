"""The lever screen's arithmetic (engine/analysis/screen.py) on hand-made run directories: the match
points' difference, the paired noise converted at the baseline curve's slope, the admission verdict."""
import json

import pytest
import torch

from engine.analysis.screen import admitted, noise_in_fraction, render_markdown, screen_seed, slope_at


def _runs(tmp_path, lever_losses=(3.9, 3.7)):
    """scratch d3 (full budget: cost 100, loss 3.85) and two grown arms, budgets 0.5 and 0.7 (cost 50, 70)."""
    def write(arm, frac, cost, loss):
        d = tmp_path / arm / "d3" / f"b{frac:g}"
        d.mkdir(parents=True)
        (d / "final.json").write_text(json.dumps({"flops": cost, "val_loss": loss}))
    write("scratch", 1.0, 100.0, 3.85)
    for arm, losses in (("base", (4.0, 3.8)), ("lever", lever_losses)):
        for frac, cost, loss in zip((0.5, 0.7), (50.0, 70.0), losses):
            write(arm, frac, cost, loss)
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


@pytest.mark.parametrize("lever_losses, beats", [((3.9, 3.7), True), ((4.0, 3.8), False), ((4.05, 3.84), False)])
def test_screen_row_and_verdict(tmp_path, lever_losses, beats):
    """The baseline matches scratch's 3.85 at cost 0.6 (interpolated in log FLOPs); the lever's curve
    0.1 lower matches earlier, an equal one ties (not beating), a higher one later."""
    out = _runs(tmp_path, lever_losses)
    (row,) = screen_seed(out, 3, "base", 1024, window_losses=_windows(-0.05))
    assert row["arm"] == "lever" and row["paired_budget"] == 0.7 and row["status"] == "reached"
    assert row["baseline_fraction"] == pytest.approx(0.5 * 1.4 ** 0.75) and row["slope"] == pytest.approx(-1.0)
    assert (row["diff"] < 0) is (lever_losses[0] < 4.0) and (row["diff"] == 0) is (lever_losses[0] == 4.0)
    assert row["loss_diff"] == pytest.approx(-0.05, abs=1e-3)
    assert row["noise"] == pytest.approx(row["loss_diff_se"]) and 1e-4 < row["noise"] < 2e-3
    assert row["beats"] is beats and admitted([row]) == {"lever": beats}
    assert "`lever`" in render_markdown([row])


def test_a_lever_must_beat_on_every_seed(tmp_path):
    rows = [{"arm": "a", "beats": True}, {"arm": "a", "beats": False}, {"arm": "b", "beats": True}]
    assert admitted(rows) == {"a": False, "b": True}


def test_unknown_baseline_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"baseline arm 'nope' has no d3 in"):
        screen_seed(_runs(tmp_path), 3, "nope", 1024, window_losses=_windows(0.0))


@pytest.mark.parametrize("shift, beats", [(-0.05, True), (0.05, False)])
def test_neither_matches_the_loss_difference_is_moved_along_the_slope(tmp_path, shift, beats):
    """Scratch's loss 3.5 is out of both arms' reach: the shift of the match point is estimated from
    the paired loss difference at the largest budget over the baseline curve's slope (-1 per unit)."""
    out = _runs(tmp_path, (4.0 + shift, 3.8 + shift))
    final = out / "scratch" / "d3" / "b1" / "final.json"
    final.write_text(json.dumps({"flops": 100.0, "val_loss": 3.5}))
    (row,) = screen_seed(out, 3, "base", 1024, window_losses=_windows(shift))
    assert row["status"] == row["baseline_status"] == "not reached" and row["estimated"]
    assert row["diff"] == pytest.approx(shift, abs=1e-3) and row["beats"] is beats
    assert "~" in render_markdown([row])
