"""Learning-rate schedule as nanochat runs it: short linear warmup, a constant phase, then a
linear warmdown over the last `warmdown_frac` of the steps to `final_frac` of the peak."""
from __future__ import annotations


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, warmdown_frac: float, final_frac: float) -> float:
    """Multiplier of the peak learning rate for optimizer step `step` (0-based)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    warmdown_steps = round(warmdown_frac * total_steps)
    warmdown_start = total_steps - warmdown_steps
    if step < warmdown_start or warmdown_steps == 0:
        return 1.0
    progress = (step - warmdown_start + 1) / warmdown_steps  # in (0, 1]
    return 1.0 - progress * (1.0 - final_frac)
