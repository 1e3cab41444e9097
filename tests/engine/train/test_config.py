"""Training configuration (engine/train/config.py): the validation split checked against the
evaluation before any training."""
import pytest

from engine.train.config import TrainConfig, check_val_split


def test_too_small_validation_split_fails_before_training_naming_the_fix():
    cfg = TrainConfig(depth=12, preset="nanochat", steps=10)  # eval_tokens 10 x 524288
    with pytest.raises(ValueError, match=r"--data builtin: the validation split has 200,000 tokens.*5,242,881.*parquet:"):
        check_val_split(200_000, cfg, 2048, 32, 1)
    check_val_split(5_242_881, cfg, 2048, 32, 1)  # exactly enough: no error
