"""The saving inheritance buys, from budget curves (method.md section 6). Pure functions of
numbers: no torch, no files; the report feeds them the cooled final losses of every budget run.

A curve is a list of (cost, loss) points, one per budget run of a rung: cost in FLOPs (training,
Fisher and penalty work), loss the run's cooled final val loss.

- `cost_to_reach(curve, target)`: the FLOPs at which the curve reaches `target`. The curve is made
  monotone first (a larger budget is never worse: pool-adjacent-violators on the losses, sorted by
  cost), then interpolated linearly in log cost between the two budgets that bracket the target.
  When even the largest budget does not reach it, the answer is a bound ("not reached at <= x"),
  and when the smallest budget already does, also a bound ("reached at <= x"): never a guess.
- `rung_saving`: FLOPs-to-match as a fraction of the scratch rung's full-budget FLOPs, and the
  marginal (the rung's own FLOPs) and standalone (its parent's FLOPs added) savings.
- `iso_loss`: for each scratch budget point, the FLOPs the inheriting arm needs for that loss.
- `ladder_saving`: 1 - inherit_total / scratch_total over every rung, each grown rung charged its
  FLOPs-to-match; a rung known only by a bound makes the ladder's answer a bound.
- `whole_chain_saving`: what the top model alone cost by growth: every rung of the chain below it
  charged the budget run it was actually grown from, plus its own FLOPs-to-match, against scratch's
  full budget of that rung alone; a bound when the rung's FLOPs-to-match is.
- `mean_ci`: the mean over seeds with a Student-t confidence interval.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from scipy.stats import t as student_t

REACHED, BELOW_SMALLEST, NOT_REACHED = "reached", "reached at or below the smallest budget", "not reached"
# the saving the project set out to test; a prediction band that spans zero to it leaves an
# extrapolation undetermined (method.md section 6)
GOAL = 0.5


def monotone_envelope(curve: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sort by cost and make the losses non-increasing by pooling adjacent violators (isotonic
    regression with equal weights): a budget run that ended above a smaller one is noise, and the
    pooled mean is the least-squares non-increasing curve through the points."""
    pts = sorted(curve)
    if any(c <= 0 or not math.isfinite(c) or not math.isfinite(loss) for c, loss in pts):
        raise ValueError(f"curve points must have finite positive cost and finite loss, got {pts}")
    blocks: list[list[float]] = []  # [sum of losses, count]
    for _, loss in pts:
        blocks.append([loss, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] < blocks[-1][0] / blocks[-1][1]:
            s, n = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += n
    losses = [s / n for s, n in blocks for _ in range(int(n))]
    return [(c, loss) for (c, _), loss in zip(pts, losses)]


@dataclass
class Reach:
    status: str  # REACHED | BELOW_SMALLEST | NOT_REACHED
    cost: float  # REACHED: the interpolated cost; otherwise the bound (the smallest / largest budget's cost)

    @property
    def exact(self) -> bool:
        return self.status == REACHED

    def describe(self, scale: float = 1.0) -> str:
        x = self.cost / scale
        return {REACHED: f"{x:.3g}", BELOW_SMALLEST: f"<= {x:.3g}",
                NOT_REACHED: f"not reached at <= {x:.3g}"}[self.status]


def cost_to_reach(curve: list[tuple[float, float]], target: float) -> Reach:
    if not curve:
        raise ValueError("cost_to_reach needs at least one (cost, loss) point")
    env = monotone_envelope(curve)
    if env[0][1] <= target:
        return Reach(BELOW_SMALLEST, env[0][0])
    for (c0, l0), (c1, l1) in zip(env, env[1:]):
        if l1 <= target:  # l0 > target >= l1, so l0 > l1
            if l1 == target:
                return Reach(REACHED, c1)
            t = (l0 - target) / (l0 - l1)
            return Reach(REACHED, math.exp(math.log(c0) + t * (math.log(c1) - math.log(c0))))
    return Reach(NOT_REACHED, env[-1][0])


def rung_saving(curve: list[tuple[float, float]], scratch_cost: float, scratch_loss: float, parent_cost: float) -> dict:
    """FLOPs-to-match of a grown rung against its scratch twin's full budget (cost, loss)."""
    reach = cost_to_reach(curve, scratch_loss)
    frac = reach.cost / scratch_cost
    return {"status": reach.status, "flops_to_match": reach.cost, "fraction": frac,
            "marginal_saving": 1.0 - frac, "standalone_fraction": (reach.cost + parent_cost) / scratch_cost,
            "standalone_saving": 1.0 - (reach.cost + parent_cost) / scratch_cost, "target_loss": scratch_loss,
            "scratch_flops": scratch_cost, "parent_flops": parent_cost}


def iso_loss(curve: list[tuple[float, float]], scratch_curve: list[tuple[float, float]]) -> list[dict]:
    """For each scratch budget point: the inheriting arm's FLOPs to reach its loss, and the ratio."""
    rows = []
    for cost, loss in sorted(scratch_curve):
        reach = cost_to_reach(curve, loss)
        rows.append({"scratch_flops": cost, "loss": loss, "status": reach.status, "inherit_flops": reach.cost,
                     "speedup": cost / reach.cost})
    return rows


def ladder_saving(scratch_costs: list[float], base_cost: float, reaches: list[Reach]) -> dict:
    """Ladder saving 1 - (base + sum of grown rungs' FLOPs-to-match) / sum of scratch rungs'
    full-budget FLOPs. `kind`: "exact"; "at most" when some rung was not reached (its cost is a
    lower bound, so the saving is an upper bound); "at least" when some rung was already reached
    at its smallest budget; "unbounded" when both happen."""
    inherit = base_cost + sum(r.cost for r in reaches)
    saving = 1.0 - inherit / sum(scratch_costs)
    return {"saving": saving, "kind": bound_kind(reaches), "inherit_flops": inherit,
            "scratch_flops": sum(scratch_costs), "rungs": [asdict(r) for r in reaches]}


def bound_kind(reaches: list[Reach]) -> str:
    """What a saving that charges these reaches is: "exact"; "at most" when some rung was not
    reached (its cost is a lower bound, so the saving an upper bound); "at least" when some rung was
    reached at its smallest budget already; "unbounded" when both happen."""
    low = any(r.status == BELOW_SMALLEST for r in reaches)
    high = any(r.status == NOT_REACHED for r in reaches)
    return "unbounded" if (low and high) else "at least" if low else "at most" if high else "exact"


def whole_chain_saving(grown_from_costs: list[float], reach: Reach, scratch_cost: float) -> dict:
    """The whole-chain saving of a grown rung d (method.md section 6): 1 - (sum of the FLOPs of the
    budget runs its chain was grown from, rungs d_lo .. d-1, + rung d's FLOPs-to-match) / scratch d's
    full-budget FLOPs. The chain's runs are charged what they actually cost (they ran whether or
    not they matched), so only rung d's own reach can make the answer a bound."""
    if not grown_from_costs:
        raise ValueError("whole_chain_saving needs the cost of at least the parent run the rung grew from")
    if scratch_cost <= 0:
        raise ValueError(f"scratch_cost must be positive, got {scratch_cost}")
    chain = sum(grown_from_costs) + reach.cost
    return {"whole_chain_fraction": chain / scratch_cost, "whole_chain_saving": 1.0 - chain / scratch_cost,
            "chain_flops": chain, "whole_chain_kind": bound_kind([reach])}


def mean_ci(values: list[float], level: float = 0.95) -> dict:
    """Mean over seeds and a two-sided Student-t interval (n - 1 degrees of freedom); with one
    value the interval is undefined (None)."""
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = sum(vals) / n
    if n == 1:
        return {"mean": mean, "lo": None, "hi": None, "n": 1, "method": "single seed: no interval"}
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = float(student_t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n, "sd": sd,
            "method": f"Student-t {level:.0%} interval over {n} seeds"}
