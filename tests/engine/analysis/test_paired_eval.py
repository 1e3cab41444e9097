"""The paired-difference noise (engine/analysis/paired_eval.py): its statistics by hand, and the
per-window losses of a tiny model against the model's own mean loss."""
import math

import pytest
import torch

from engine.analysis.paired_eval import main, paired_stats, window_losses
from engine.data import val_batches
from models.config import model_config
from models.gpt import build_model


def test_paired_stats_by_hand():
    a = torch.tensor([3.0, 4.0, 5.0, 6.0], dtype=torch.float64)
    b = torch.tensor([2.5, 3.5, 4.0, 5.0], dtype=torch.float64)
    out = paired_stats(a, b)
    # differences 0.5, 0.5, 1.0, 1.0: mean 0.75, sample sd sqrt(4 * 0.0625 / 3) = 0.2887, se 0.1443
    assert out["windows"] == 4 and math.isclose(out["diff"], 0.75)
    assert math.isclose(out["diff_se"], math.sqrt(0.25 / 3) / 2)
    # A alone: 3..6, sample sd sqrt(5/3), se sqrt(5/3)/2 = 0.645: the pairing removes most of it
    assert math.isclose(out["se_a"], math.sqrt(5 / 3) / 2) and out["diff_se"] < out["se_a"] / 4
    with pytest.raises(ValueError, match=r"must match .* got \(4,\) and \(3,\)"):
        paired_stats(a, b[:3])


def test_window_losses_are_the_models_loss_per_window():
    cfg = model_config("cpu-tiny", 1, seq_len=32)
    model = build_model(cfg, seed=0)
    tokens = torch.randint(0, cfg.vocab_size, (4000,), generator=torch.Generator().manual_seed(0)).numpy()
    losses = window_losses(model, tokens, 32, eval_tokens=2048, batch=8)
    batches = list(val_batches(tokens, 32, 8, 2049))
    assert losses.shape == (8 * len(batches),) and losses.dtype == torch.float64
    with torch.no_grad():
        mean = sum(float(model(x, y)) for x, y in batches) / len(batches)
    assert math.isclose(float(losses.mean()), mean, rel_tol=1e-5)
    assert paired_stats(losses, losses)["diff"] == 0.0


def test_main_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(tmp_path), str(tmp_path)])
    assert "is not a run directory (no run.json)" in capsys.readouterr().err
