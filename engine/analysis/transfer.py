"""Transfer: the FLOPs a grown rung saves per FLOP of its parent depth's scratch training, and what
a line through the measured transfers projects for a nanochat ladder. Pure functions of numbers (no
torch, no files); engine/analysis/study.py puts them in the study's report.

Why this measure. A grown rung's marginal saving mixes two things: how much of a trained parent's
work it keeps (transfer, T = saved FLOPs / F_parent, F the scratch full-budget FLOPs of a depth) and
how large the parent is against the child (its share F_parent / F_child, ~1/g^2 at a fixed
tokens-per-parameter ratio, g the growth factor in parameters): marginal = T * share. The unit is
the parent *depth's* scratch cost, not the cost of the run the rung actually grew from, so T says
what a parent of that quality is worth whatever made it (a grown parent that matched its scratch
twin is as good as one trained from scratch). For a rung grown from a scratch-trained parent
(the chain's second rung) standalone = (T - 1) * share: growth pays for that parent only where T > 1.

The line. A rung grown by g = 1 is its parent: it matches at once and saves exactly one parent's
training, T = 1. So T - 1 = b ln g, least squares through the origin over the (seed, rung) points, b
with its Student-t interval (n - 1 degrees of freedom), and at a new growth factor a prediction band
t * s * sqrt(1 + x0^2 / sum x^2). A model, not a measurement: it assumes T moves linearly in ln g
between g = 1 and the measured factors.

The projection. Rungs lo..hi of a preset, each trained at the same tokens per parameter (its scratch
cost F_d = FLOPs per token x scaling params, the ratio cancels), each grown rung on the line:
cost_lo = F_lo, cost_d = F_d - T_d * F_{d-1}. The ladder saving is 1 - sum(cost) / sum(F); the top
rung's whole-chain saving, every rung below it charged its run, 1 - sum(cost) / F_hi. Both rise with
b, so their intervals are the values at the ends of b's interval.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from scipy.stats import t as student_t

from engine.analysis.savings import GOAL
from models.config import model_config

LEVEL = 0.95


def transfer(answer: Mapping) -> float:
    """T of one grown rung from its answer (engine/analysis/report.py): the FLOPs it saved against
    its scratch twin's full budget, per FLOP of its parent depth's scratch full budget."""
    parent = answer.get("parent_scratch_flops")
    if not (isinstance(parent, (int, float)) and parent > 0):
        raise ValueError(f"a grown rung's transfer needs its parent depth's scratch FLOPs (parent_scratch_flops > 0), "
                         f"got {parent!r}; the ladder must train that depth from scratch")
    return (answer["scratch_flops"] - answer["flops_to_match"]) / parent


def transfer_fit(points: Sequence[tuple[float, float]], level: float = LEVEL) -> dict:
    """T - 1 = b ln g through the origin over (growth factor, T) points (module docstring); fewer
    than 2 points, or none with g != 1, determine nothing."""
    pts = [(float(g), float(t)) for g, t in points]
    bad = [p for p in pts if not (p[0] > 0 and math.isfinite(p[0]) and math.isfinite(p[1]))]
    if bad:
        raise ValueError(f"transfer_fit needs positive finite growth factors and finite transfers, got {bad}")
    xs, ys = [math.log(g) for g, _ in pts], [t - 1.0 for _, t in pts]
    n, sxx = len(pts), sum(x * x for x in xs)
    base = {"n": n, "level": level}
    if n < 2 or sxx == 0:
        why = f"{n} point(s)" if n < 2 else "every point at growth factor 1"
        return {**base, "determined": False,
                "reason": f"undetermined: {why} (the line through T = 1 at g = 1 needs 2 points or more, "
                          f"some at g != 1)"}
    b = sum(x * y for x, y in zip(xs, ys)) / sxx
    s = math.sqrt(sum((y - b * x) ** 2 for x, y in zip(xs, ys)) / (n - 1))
    t = float(student_t.ppf(0.5 + level / 2, n - 1))
    half = t * s / math.sqrt(sxx)
    return {**base, "determined": True, "reason": None, "b": b, "b_ci": (b - half, b + half), "s": s, "t": t,
            "sxx": sxx, "df": n - 1, "mean_transfer": sum(tt for _, tt in pts) / n}


def transfer_at(fit: dict, growth_factor: float, b: float | None = None) -> dict:
    """T on the line at one growth factor (with slope `b`, default the fitted one) and its
    prediction band for one more rung there."""
    x0 = math.log(growth_factor)
    slope = fit["b"] if b is None else b
    half = fit["t"] * fit["s"] * math.sqrt(1 + x0 * x0 / fit["sxx"])
    value = 1.0 + slope * x0
    return {"growth_factor": growth_factor, "transfer": value, "lo": value - half, "hi": value + half}


def ladder_flops(preset: str, lo: int, hi: int) -> dict[int, float]:
    """{depth: scratch cost up to the ratio} of rungs lo..hi: FLOPs per token x scaling params."""
    if not 1 <= lo < hi:
        raise ValueError(f"need 1 <= lo < hi, got lo={lo}, hi={hi}")
    cfgs = {d: model_config(preset, d) for d in range(lo, hi + 1)}
    return {d: float(c.flops_per_token * c.scaling_params) for d, c in cfgs.items()}


def _chain(fit: dict, b: float, flops: Mapping[int, float], growth: Mapping[int, float]) -> dict:
    """The ladder and top-rung whole-chain savings with every grown rung on the line of slope b."""
    depths = sorted(flops)
    costs = [flops[depths[0]]] + [flops[d] - transfer_at(fit, growth[d], b)["transfer"] * flops[d - 1]
                                  for d in depths[1:]]
    total = sum(costs)
    return {"ladder": 1 - total / sum(flops.values()), "whole_chain": 1 - total / flops[depths[-1]],
            "valid": all(c > 0 for c in costs)}


def project_ladder(fit: dict, preset: str = "nanochat", lo: int = 10, hi: int = 20) -> dict:
    """Per step of rungs lo..hi: growth factor, parent share, T with its prediction band and the
    marginal saving it implies; the ladder and whole-chain savings at the fitted slope and at the
    ends of its interval (module docstring). `fit` must be determined."""
    if not fit["determined"]:
        raise ValueError(f"project_ladder needs a determined transfer fit, got: {fit['reason']}")
    flops = ladder_flops(preset, lo, hi)
    cfgs = {d: model_config(preset, d) for d in flops}
    growth = {d: cfgs[d].scaling_params / cfgs[d - 1].scaling_params for d in range(lo + 1, hi + 1)}
    steps = []
    for d, g in growth.items():
        share = flops[d - 1] / flops[d]
        at = transfer_at(fit, g)
        steps.append({"label": f"d{d - 1}->d{d}", "growth_factor": g, "parent_share": share, **at,
                      "marginal": at["transfer"] * share, "marginal_lo": at["lo"] * share,
                      "marginal_hi": at["hi"] * share})
    ends = [_chain(fit, b, flops, growth) for b in fit["b_ci"]]
    at_fit = _chain(fit, fit["b"], flops, growth)
    return {"preset": preset, "lo": lo, "hi": hi, "steps": steps, **at_fit,
            "ladder_range": (ends[0]["ladder"], ends[1]["ladder"]),
            "whole_chain_range": (ends[0]["whole_chain"], ends[1]["whole_chain"]),
            "valid": at_fit["valid"] and all(c["valid"] for c in ends)}


def transfer_markdown(recipe: str, fit: dict, projection: dict | None) -> list[str]:
    """One recipe's transfer line and, when determined, its nanochat projection."""
    if not fit["determined"]:
        return [f"- **{recipe}**: {fit['reason']}.", ""]
    lo, hi = fit["b_ci"]
    lines = [f"- **{recipe}**: transfer = 1 + {fit['b']:.3f} ln g over {fit['n']} (seed, rung) points (mean "
             f"transfer {fit['mean_transfer']:.2f}); slope {fit['b']:.3f} [{lo:.3f}, {hi:.3f}] ({fit['level']:.0%} "
             f"Student-t, df {fit['df']})."]
    if projection is None:
        return lines + [""]
    p = projection
    span = f"d{p['lo']}..d{p['hi']}"
    lr, wr = p["ladder_range"], p["whole_chain_range"]
    lines += [f"  Projected on the line (a model, not a measurement) for {p['preset']} {span}, every rung at the "
              f"same tokens per parameter (the ranges cover the slope's interval only, not the line's own error): "
              f"**ladder saving {p['ladder']:.1%}** (over the slope's interval: "
              f"{_band(*lr)}), the d{p['hi']} alone by the chain (whole chain) **{p['whole_chain']:.1%}** "
              f"({_band(*wr)})"
              + ("" if p["valid"] else "; some rung's cost went negative on the line: the model breaks there")
              + ".", "",
              "| step | growth factor | parent's share of the rung's scratch FLOPs | transfer (95% prediction) | "
              "marginal saving (95% prediction) |", "|---|---|---|---|---|"]
    for s in p["steps"]:
        band = _band(s["marginal_lo"], s["marginal_hi"])
        lines.append(f"| {s['label']} | x{s['growth_factor']:.3f} | {s['parent_share']:.3f} | {s['transfer']:.2f} "
                     f"[{s['lo']:.2f}, {s['hi']:.2f}] | {s['marginal']:.1%} {band} |")
    return lines + [""]


def _band(lo: float, hi: float) -> str:
    """An interval of savings, marked undetermined when it spans zero to the goal (method.md 6)."""
    band = f"[{lo:.1%}, {hi:.1%}]"
    return f"undetermined: {band} spans 0 to {GOAL:.0%}" if lo <= 0 and hi >= GOAL else band
