"""Learning-rate schedules, as a multiplier of the peak learning rate for 0-based step `step`.

- `nanochat`: short linear warmup, a constant phase, then a linear warmdown over the last
  `warmdown_frac` of the steps (nanochat: 0.65) to `final_frac` of the peak.
- `wsd` (warmup-stable-decay): the same shape with a short cooldown, `cooldown_frac` (default 0.2:
  Hägele et al. 2024 find a constant LR plus a ~20% linear cooldown matches a cosine schedule).
  Its point is that a run's first `(1 - c) * B` steps do not depend on its budget B: one run at
  constant LR, branched at step `(1 - c) * B_k` and cooled over `c * B_k` steps, gives a properly
  finished run at every budget B_k (method.md section 6). The warmup must then be a fixed number
  of steps, the same for every budget (the ladder passes it explicitly).

Both are one function: the warmdown/cooldown fraction is the only difference.
"""
from __future__ import annotations

SCHEDULES = {"nanochat": 0.65, "wsd": 0.2}  # name -> default fraction of the run spent decaying


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, warmdown_frac: float, final_frac: float) -> float:
    """Multiplier of the peak learning rate for optimizer step `step` (0-based)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    warmdown_steps = decay_steps(total_steps, warmdown_frac)
    warmdown_start = total_steps - warmdown_steps
    if step < warmdown_start or warmdown_steps == 0:
        return 1.0
    progress = (step - warmdown_start + 1) / warmdown_steps  # in (0, 1]
    return 1.0 - progress * (1.0 - final_frac)


def decay_steps(total_steps: int, frac: float) -> int:
    """Steps of the final linear decay of a `total_steps` run; the decay starts at
    `total_steps - decay_steps(...)`, which is where a WSD branch leaves the stable run."""
    return round(frac * total_steps)


def branch_step(budget_steps: int, cooldown_frac: float) -> int:
    """The stable-run step from which the WSD branch of a `budget_steps` run cools down."""
    return budget_steps - decay_steps(budget_steps, cooldown_frac)
