"""Knowledge inheritance: the parent rung as a teacher of the rung grown from it (Qin et al. 2022,
"Knowledge Inheritance for Pre-trained Language Models", NAACL). The grown rung's loss per token is
(1 - w) CE + w KL(teacher || student) (models/loss.py), with w decaying linearly from its start value
to 0 over the first `steps` steps of the rung; after that the teacher is not run at all. Every step
that runs the teacher costs one teacher forward pass, which the rung's FLOPs count."""
from __future__ import annotations

from dataclasses import dataclass

from models.config import GPTConfig


@dataclass
class Distillation:
    """The teacher and the weight schedule of its KL term (built by engine/ladder/grow.py)."""

    teacher_state: dict  # the parent's full state dict
    teacher_config: GPTConfig
    weight: float  # w at the rung's first step, in (0, 1]
    # steps until w reaches 0, counted from the grown rung's start: one schedule for the stable
    # run and every WSD branch of the rung, as its warmup is
    steps: int

    def weight_at(self, steps_done: int) -> float:
        """w for the step taken after `steps_done` steps (0 from `steps` on)."""
        return self.weight * max(0.0, 1.0 - steps_done / self.steps)

    @property
    def flops_per_token(self) -> float:
        """One forward pass of the teacher: a third of its training FLOPs per token (the 6N
        convention counts 2N forward, 4N backward; models/config.py)."""
        return self.teacher_config.flops_per_token / 3
