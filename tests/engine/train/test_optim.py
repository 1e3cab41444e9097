"""Optimizer choices (engine/train/optim.py) in a short run: torch's fused AdamW matches our kernel,
Muon trains, apex is refused without CUDA."""
import json

import pytest

from engine.runtime.distributed import init_distributed
from engine.train.config import TrainConfig
from engine.train.trainer import train_rung
from tests.helpers.runs import losses


def _short(tmp_path, name, **kw):
    cfg = TrainConfig(**{**dict(depth=1, out=str(tmp_path / name), steps=6, seq_len=64, global_batch=4,
                                eval_tokens=1024, progress=False, profile=False), **kw})
    train_rung(cfg, init_distributed("cpu"))
    return losses(tmp_path / name)


def test_torch_fused_adamw_impl_matches_our_kernel(tmp_path):
    ours, theirs = _short(tmp_path, "kernel"), _short(tmp_path, "torch", adamw_impl="torch")
    for s in ours:
        assert theirs[s] == pytest.approx(ours[s], rel=1e-5, abs=1e-6)
    run = json.loads((tmp_path / "torch/run.json").read_text())
    assert "torch" in run["kernel_backend"]


def test_muon_option_trains(tmp_path):
    got = _short(tmp_path, "muon", optimizer="muon", steps=12)
    assert all(v == v for v in got.values()) and got[12] < got[1]


def test_apex_impl_is_refused_without_cuda(tmp_path):
    with pytest.raises(ValueError, match="apex needs CUDA"):
        _short(tmp_path, "apex", adamw_impl="apex")
