"""The noise of a val-loss *difference* between two finished runs on the fixed validation set.

    python -m engine.analysis.paired_eval RUN_A RUN_B [--eval-tokens 131072]

Both runs are evaluated window by window on the same strided windows (engine.data.val_batches, as
the trainer evaluates); the standard error of the mean per-window difference is the noise of the
comparison, far below the noise of either loss alone (the same hard and easy windows cancel).
Prints one JSON line: the mean difference A - B, its standard error, and each run's own set SE.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from engine.data import prepare_data, val_batches
from engine.train.checkpoint import load_run_model


@torch.no_grad()
def window_losses(model, tokens, seq_len: int, eval_tokens: int, batch: int = 8) -> torch.Tensor:
    """The mean loss of every validation window (float64), in val_batches' order."""
    model.eval()
    return torch.cat([model(x, y, reduction="none").double().mean(dim=-1)
                      for x, y in val_batches(tokens, seq_len, batch, eval_tokens + 1)])


def paired_stats(losses_a: torch.Tensor, losses_b: torch.Tensor) -> dict:
    """Mean per-window difference A - B and its standard error, beside each run's own mean and SE
    (sample standard deviation over windows / sqrt(windows))."""
    if losses_a.shape != losses_b.shape or losses_a.numel() < 2:
        raise ValueError(f"paired windows must match and number at least 2, got {tuple(losses_a.shape)} "
                         f"and {tuple(losses_b.shape)}")
    d = losses_a - losses_b
    n = d.numel()

    def se(t):
        return float(t.std(unbiased=True)) / math.sqrt(n)

    return {"windows": n, "mean_a": float(losses_a.mean()), "mean_b": float(losses_b.mean()),
            "diff": float(d.mean()), "diff_se": se(d), "se_a": se(losses_a), "se_b": se(losses_b)}


def run_window_losses(run: Path, eval_tokens: int) -> torch.Tensor:
    """window_losses of a finished run's model on its own data's validation split."""
    cfg = json.loads((Path(run) / "run.json").read_text())["config"]
    model = load_run_model(run)
    data = prepare_data(cfg["data"], model.config.vocab_size, cfg.get("cache_dir"), progress=False)
    return window_losses(model, data.val, model.config.seq_len, eval_tokens)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.analysis.paired_eval", description=__doc__.split("\n\n")[0])
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("--eval-tokens", type=int, default=131072)
    a = p.parse_args(argv)
    for run in (a.run_a, a.run_b):
        if not (run / "run.json").exists():
            p.error(f"{run} is not a run directory (no run.json)")
    print(json.dumps(paired_stats(run_window_losses(a.run_a, a.eval_tokens),
                                  run_window_losses(a.run_b, a.eval_tokens))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
