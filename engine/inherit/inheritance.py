"""What a grown rung starts from: the grown weights, the anchor, mask and settings of the penalty,
the carried Fisher, where its data stream and optimizer state start, and its teacher (built by
engine/ladder/grow.py from the previous rung, consumed by engine/train/trainer.py)."""
from __future__ import annotations

from dataclasses import dataclass, field

from engine.inherit.distill import Distillation
from engine.inherit.penalty import PenaltyConfig


@dataclass
class Inheritance:
    """What a grown rung starts from (built by engine/ladder/grow.py from the previous rung)."""

    state: dict  # full (unsharded) state dict of the grown model
    anchor: dict  # name -> full tensor A
    mask: dict  # name -> full tensor M (1 inherited, 0 new)
    fisher: dict | None  # name -> carried Omega (full)
    penalty: PenaltyConfig = field(default_factory=PenaltyConfig)  # the default: no penalty
    info: dict = field(default_factory=dict)  # growth facts for the report (logit error, placement, ...)
    fisher_flops: float = 0.0  # FLOPs spent computing the Fisher this rung's penalty uses
    loader_state: dict | None = None  # where the rung's token stream starts (None: at its beginning)
    moments: dict | None = None  # the parent's AdamW moments in the new shapes (None: a fresh optimizer)
    optim_step: int = 0  # the parent's optimizer step count, carried with its moments (bias correction)
    distill: Distillation | None = None  # the parent as a teacher (knowledge inheritance), or None
    # under carried moments: bias-correct the new coordinates (mask 0) from their own step count
    correct_new_moments: bool = False
    ramp_steps: int = 0  # new layers' write-outs enter x min(1, s/ramp_steps) at step s (0: no ramp)
