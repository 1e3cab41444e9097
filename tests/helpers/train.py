"""In-process training pieces: a tiny model with its optimizer, a tiny TrainConfig, both host-sync
modes as a parametrization."""
import pytest

from engine.train.config import TrainConfig
from engine.train.optim import LadderOptimizer, model_param_groups
from models.config import model_config
from models.gpt import GPT


def tiny_model_and_opt():
    model = GPT(model_config("cpu-tiny", 1, seq_len=64))
    model.init_weights(0)
    opt = LadderOptimizer(model_param_groups(model, matrix_lr=1e-3, embedding_lr=1e-3, unembedding_lr=1e-3, muon=False,
                                             weight_decay=0.0))
    return model, opt


def tiny_train_config(tmp_path, **kw) -> TrainConfig:
    base = dict(depth=1, out=str(tmp_path / "r"), steps=8, seq_len=64, global_batch=4, eval_tokens=1024,
                progress=False, profile=False, ckpt_every=4)
    return TrainConfig(**{**base, **kw})


# "step" reads each step's verdict on the host; "lagged" decides the skip on the device and reads
# it a step later (the CUDA default, engine/train/guard.py), run here on CPU tensors.
SYNC_MODES = pytest.mark.parametrize("host_sync", ["step", "lagged"])
