"""Fixtures shared by the model tests."""
import pytest
import torch

from models.config import model_config
from models.gpt import build_model


def _cuda_like_rms_norm(x):
    """rms_norm as CUDA autocast runs it from torch 2.12 on (fp32 policy): fp32 out for bf16 in.
    CPU autocast keeps bf16, so the tests put this in to reproduce the GPU's dtypes on CPU."""
    return torch.nn.functional.rms_norm(x.float(), (x.size(-1),))


@pytest.fixture
def bf16_autocast_model(monkeypatch):
    import models.gpt as gpt

    monkeypatch.setattr(gpt, "rms_norm", _cuda_like_rms_norm)
    c = model_config("cpu-tiny", 2, vocab_size=96, seq_len=16)  # vocab != any weight's last dim
    return build_model(c, seed=0), c
