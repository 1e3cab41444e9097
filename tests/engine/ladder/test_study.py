"""The study's phases without training: a bracket left at its edge stops the study by name (or, with
--accept-edge, goes on and is reported), the tuned values' JSON keeps every point tried, and each
recipe's ladder is the recipe's own settings at the tuned LRs."""
from pathlib import Path

import pytest

from engine.ladder.study import StudyConfig, _accept, tuned_values
from engine.ladder.tune import BracketResult


def _sc(**kw) -> StudyConfig:
    return StudyConfig(**{**dict(depths=[2, 3], recipes=["plain", "copy_continue_carry"], out="o", tune_seed=1000,
                                 seeds=[1001, 1002]), **kw})


EDGE = BracketResult(best=2.0, interior=False, tried={0.5: 3.1, 1.0: 3.0, 2.0: 2.9}, extensions=0)
INTERIOR = BracketResult(best=1.0, interior=True, tried={0.5: 3.1, 1.0: 2.8, 2.0: 2.9})


def test_a_bracket_at_its_edge_stops_the_study_by_name():
    with pytest.raises(ValueError, match=r"the scratch d3 learning-rate bracket is still at its high edge \(x2 best "
                                         r"of \[0.5, 1.0, 2.0\]\) after --max-extend 3 steps; rerun with a larger "
                                         r"--max-extend, or --accept-edge"):
        _accept(EDGE, "scratch d3", _sc())
    assert _accept(EDGE, "scratch d3", _sc(accept_edge=True)) is EDGE
    assert _accept(INTERIOR, "scratch d3", _sc()) is INTERIOR


def test_tuned_values_keep_every_point_and_name_the_edges():
    grown = BracketResult(best=1.0, interior=True, tried={0.5: (1, 3.3), 1.0: (0, 0.62), 2.0: (0, 0.7)})
    tv = tuned_values({"scratch": {2: INTERIOR, 3: EDGE}, "grown": {"plain": {3: grown}}})
    assert tv["scratch_lr_mult"] == {2: 1.0, 3: 2.0} and tv["inherit_lr_mult"] == {"plain": {3: 1.0}}
    assert tv["edges"] == ["scratch d3: best x2 at the high edge"]
    assert len(tv["tried"]) == 9
    assert {"phase": "grown", "recipe": "plain", "depth": 3, "lr_mult": 0.5, "chosen": False, "reached": False,
            "val_loss": 3.3} in tv["tried"]
    assert {"phase": "grown", "recipe": "plain", "depth": 3, "lr_mult": 1.0, "chosen": True, "reached": True,
            "fraction": 0.62} in tv["tried"]


def test_each_recipe_ladder_carries_its_settings_and_the_tuned_lrs():
    lc = _sc().ladder("copy_continue_carry", [2, 3], 1001, Path("o/seed1001"),
                      {2: 0.5, 3: 0.25}, {3: 2.0})
    assert (lc.depth_init, lc.data_order, lc.optimizer_state) == ("copy", "continue", "carry")
    assert lc.arms == ["scratch", "grow-only"] and lc.lr_mult_by_depth == {2: 0.5, 3: 0.25}
    assert lc.inherit_lr_mult_by_depth == {3: 2.0} and lc.seed == 1001
    penalty = _sc(recipes=["plain", "penalty_ars"]).ladder("penalty_ars", [2, 3], 1001,
                                                            Path("o"), {}, {})
    assert penalty.fisher == "posthoc"  # a rung's runs never depend on which arms shared its ladder
