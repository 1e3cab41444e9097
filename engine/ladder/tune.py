"""The study's tuning rule, on its own: a bracket search for a learning-rate multiplier on a log2 grid
(method.md section 6, the frozen protocol). Pure: it never trains; it asks for multipliers and is
told their objectives (lower is better), so the caller decides how to evaluate them, several at
once on several cores.

The rule: evaluate `points` multipliers centred on `center`, spaced by factors of 2. While the best
is at an edge of what was tried, try one more step beyond that edge, up to `max_extend` steps; then
the best is interior (a bracketed minimum) or the search reports the edge it stopped at. With
`refine`, one more point on each side of an interior best, at half steps (factors of sqrt 2).

A search is a generator: it yields the multipliers it needs next, receives {multiplier: objective}
for them, and returns a BracketResult. `drive` runs several searches together, handing every pending
request of every search to one `evaluate` call, so independent searches fill the cores together.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Hashable

Search = Generator[list[float], dict[float, Any], "BracketResult"]


@dataclass
class BracketResult:
    best: float
    interior: bool  # False: the best is still at an edge after max_extend steps (a bound, reported as such)
    tried: dict[float, Any] = field(default_factory=dict)  # every multiplier tried and its objective
    extensions: int = 0

    @property
    def edge(self) -> str | None:
        """'low' / 'high' when the best sits at that edge of the tried grid, else None."""
        xs = sorted(self.tried)
        return None if self.interior else ("low" if self.best == xs[0] else "high")


def check_bracket(center: float, points: int, max_extend: int) -> None:
    """Bad settings, each named, before anything runs."""
    if not (isinstance(center, (int, float)) and 0 < center < math.inf):
        raise ValueError(f"the bracket's centre must be a finite multiplier > 0, got {center!r}")
    if not isinstance(points, int) or points < 3 or points % 2 == 0:
        raise ValueError("--bracket-points must be an odd integer >= 3 (a centre and a step each side), got "
                         f"{points!r}")
    if not isinstance(max_extend, int) or max_extend < 0:
        raise ValueError(f"--max-extend must be an integer >= 0, got {max_extend!r}")


def grid(center: float, points: int) -> list[float]:
    """`points` multipliers centred on `center`, factors of 2 apart: 3 -> [c/2, c, 2c]."""
    half = points // 2
    return [_snap(center * 2.0 ** k) for k in range(-half, half + 1)]


def bracket_search(center: float, points: int = 3, max_extend: int = 3, refine: bool = False) -> Search:
    """The search as a generator (module docstring). Ties go to the smaller multiplier (the order of
    `sorted`), so the rule is deterministic when two runs end equal."""
    check_bracket(center, points, max_extend)
    tried: dict[float, Any] = dict((yield grid(center, points)))
    extensions = 0
    while True:
        best = _best(tried)
        xs = sorted(tried)
        if xs[0] < best < xs[-1] or extensions == max_extend:
            break
        tried |= (yield [_snap(best / 2 if best == xs[0] else best * 2)])
        extensions += 1
    interior = xs[0] < best < xs[-1]
    if refine and interior:
        tried |= (yield [_snap(best * 2 ** -0.5), _snap(best * 2 ** 0.5)])
        best = _best(tried)
    return BracketResult(best, interior, dict(sorted(tried.items())), extensions)


def drive(searches: dict[Hashable, Search],
          evaluate: Callable[[list[tuple[Hashable, float]]], dict[tuple[Hashable, float], Any]]) -> dict:
    """Run searches together: each round, every search's pending multipliers go to one `evaluate`
    call as (search key, multiplier) pairs; returns {key: BracketResult}."""
    pending = {key: next(s) for key, s in searches.items()}
    done: dict[Hashable, BracketResult] = {}
    while pending:
        asked = [(key, m) for key, ms in pending.items() for m in ms]
        got = evaluate(asked)
        for key, ms in list(pending.items()):
            try:
                pending[key] = searches[key].send({m: got[(key, m)] for m in ms})
            except StopIteration as stop:
                done[key] = stop.value
                del pending[key]
    return done


def _best(tried: dict[float, Any]) -> float:
    return min(sorted(tried), key=lambda m: tried[m])


def _snap(x: float) -> float:
    """Multipliers rounded to 6 significant digits, so 0.5 * 2 ** 0.5 and 2 ** -0.5 are one grid point
    and a directory named by its multiplier stays short."""
    return float(f"{x:.6g}")
