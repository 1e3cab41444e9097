"""One training run: its settings (config), the loop (trainer), the fused optimizer step (optim), the LR schedule
(schedule), checkpoints, the non-finite guard (guard) and evaluation."""
