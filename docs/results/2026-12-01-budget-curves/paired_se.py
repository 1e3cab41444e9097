"""Noise of a val-loss *difference* between two finished runs on the fixed validation set.

    .venv/bin/python docs/results/2026-12-01-budget-curves/paired_se.py RUN_A RUN_B [--eval-tokens 131072]

Both runs are evaluated window by window on the same strided windows (engine/data val_batches, as
the trainer does); the standard error of the mean per-window difference is the noise of the
comparison, far below the noise of either loss alone (the same hard and easy windows cancel).
Prints one JSON line: mean difference A - B, its standard error, and each run's own set SE.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import torch  # noqa: E402

from engine.data import prepare_data, val_batches  # noqa: E402
from engine.train.checkpoint import load_run_model  # noqa: E402


@torch.no_grad()
def window_losses(model, tokens, seq_len: int, eval_tokens: int, batch: int = 8) -> torch.Tensor:
    model.eval()
    out = [model(x, y, reduction="none").double().mean(dim=-1) for x, y in val_batches(tokens, seq_len, batch, eval_tokens + 1)]
    return torch.cat(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--eval-tokens", type=int, default=131072)
    a = p.parse_args()
    losses = []
    for run in (Path(a.run_a), Path(a.run_b)):
        cfg = json.loads((run / "run.json").read_text())["config"]
        model = load_run_model(run)
        data = prepare_data(cfg["data"], model.config.vocab_size, cfg.get("cache_dir"), progress=False)
        losses.append(window_losses(model, data.val, model.config.seq_len, a.eval_tokens))
    d = losses[0] - losses[1]
    n = d.numel()
    se = lambda t: float(t.std(unbiased=True)) / math.sqrt(n)  # noqa: E731
    print(json.dumps({"windows": n, "mean_a": float(losses[0].mean()), "mean_b": float(losses[1].mean()),
                      "diff": float(d.mean()), "diff_se": se(d), "se_a": se(losses[0]), "se_b": se(losses[1])}))


if __name__ == "__main__":
    main()
