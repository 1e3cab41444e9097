"""The bracket search on synthetic loss-versus-LR curves: it finds an interior minimum, extends when
the best point is at an edge, reports the edge when it cannot become interior, refines at half steps,
and asks for independent searches' points together."""
import math

import pytest

from engine.ladder.tune import bracket_search, drive, grid


def _run(search, curve):
    """Drive one search with a loss curve; return (result, every batch it asked for)."""
    asked = []
    res = drive({"s": search}, lambda pairs: (asked.append([m for _, m in pairs]),
                                              {(k, m): curve(m) for k, m in pairs})[1])
    return res["s"], asked


def bowl(center):
    """A loss with its minimum at `center`, quadratic in log2 of the multiplier."""
    return lambda m: (math.log2(m) - math.log2(center)) ** 2 + 2.0


def test_grid_is_centred_on_factors_of_two():
    assert grid(0.5, 3) == [0.25, 0.5, 1.0]
    assert grid(1.0, 5) == [0.25, 0.5, 1.0, 2.0, 4.0]


def test_an_interior_minimum_is_found_in_one_round():
    res, asked = _run(bracket_search(0.5), bowl(0.5))
    assert (res.best, res.interior, res.extensions, res.edge) == (0.5, True, 0, None)
    assert asked == [[0.25, 0.5, 1.0]]


@pytest.mark.parametrize("true_best, want_asked", [(4.0, [[0.25, 0.5, 1.0], [2.0], [4.0], [8.0]]),
                                                    (0.0625, [[0.25, 0.5, 1.0], [0.125], [0.0625], [0.03125]])])
def test_an_edge_best_extends_until_interior(true_best, want_asked):
    res, asked = _run(bracket_search(0.5, max_extend=5), bowl(true_best))
    assert (res.best, res.interior, res.extensions) == (true_best, True, 3)
    assert asked == want_asked


def test_a_bracket_that_cannot_become_interior_reports_its_edge():
    res, asked = _run(bracket_search(1.0, max_extend=2), lambda m: -m)  # better forever upward
    assert (res.best, res.interior, res.edge, res.extensions) == (8.0, False, "high", 2)
    assert sorted(res.tried) == [0.5, 1.0, 2.0, 4.0, 8.0]


def test_refine_adds_half_steps_around_an_interior_best():
    res, asked = _run(bracket_search(1.0, refine=True), bowl(1.3))
    assert asked[-1] == pytest.approx([2 ** -0.5, 2 ** 0.5], rel=1e-5)
    assert res.best == pytest.approx(2 ** 0.5, rel=1e-5) and res.interior


def test_ties_go_to_the_smaller_multiplier():
    res, _ = _run(bracket_search(1.0), lambda m: 0.0 if m >= 1.0 else 1.0)
    assert res.best == 1.0 and res.interior  # 1 and 2 tie: 1 (interior), not 2 (an edge to extend)


def test_tuple_objectives_order_reached_before_not_reached():
    """The grown rung's objective: (0, fraction) when it matched scratch, (1, loss) when it did not."""
    objective = {0.5: (1, 3.2), 1.0: (0, 0.7), 2.0: (0, 0.8)}
    res, _ = _run(bracket_search(1.0), objective.__getitem__)
    assert res.best == 1.0


def test_independent_searches_are_asked_together():
    batches = []

    def evaluate(pairs):
        batches.append(sorted(pairs))
        return {(k, m): (bowl(0.5) if k == "a" else bowl(4.0))(m) for k, m in pairs}

    res = drive({"a": bracket_search(0.5), "b": bracket_search(1.0)}, evaluate)
    assert (res["a"].best, res["b"].best) == (0.5, 4.0)
    assert len(batches[0]) == 6 and batches[1] == [("b", 4.0)]


@pytest.mark.parametrize("kw, message", [(dict(center=0.0), "centre must be a finite multiplier > 0, got 0.0"),
                                         (dict(center=1.0, points=4), "--bracket-points must be an odd integer >= 3"),
                                         (dict(center=1.0, max_extend=-1), "--max-extend must be an integer >= 0")])
def test_bad_bracket_settings_are_named(kw, message):
    with pytest.raises(ValueError, match=message):
        next(bracket_search(**kw))
