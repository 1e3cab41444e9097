"""Knowledge inheritance (engine/inherit/distill.py): a grown rung that distils from its parent runs
the teacher only while its weight is > 0, on the linear schedule; the teacher's forward passes are
counted in the rung's FLOPs; at an exact growth the teacher and the student agree, so the first
step's loss is (1 - w) times the cross-entropy alone."""
import json

import pytest
import torch

from engine.inherit.distill import Distillation
from engine.ladder.config import LadderConfig
from engine.ladder.grow import build_inheritance
from engine.runtime.distributed import init_distributed
from engine.train.trainer import train_rung
from models.config import model_config
from tests.helpers.train import tiny_train_config


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_weight_decays_linearly_to_zero_and_stays_there():
    d = Distillation({}, model_config("cpu-tiny", 1), weight=0.6, steps=4)
    assert [d.weight_at(s) for s in range(6)] == pytest.approx([0.6, 0.45, 0.3, 0.15, 0.0, 0.0])
    assert d.flops_per_token == model_config("cpu-tiny", 1).flops_per_token / 3


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA (bf16 autocast, the Triton step)"))])
def test_a_distilling_rung_counts_its_teacher_and_starts_at_1_minus_w_of_the_ce(tmp_path, device):
    env = init_distributed(device)
    run = dict(device=device, compile=False)
    train_rung(tiny_train_config(tmp_path / "parent", steps=8, **run), env)
    source = tmp_path / "parent/r/ckpt/step_000000008"
    lc = dict(depths=[1, 2], arms=["grow-only"], out=str(tmp_path), train=dict(seq_len=64, global_batch=4))
    finals, runs = {}, {}
    for w in (0.0, 0.5):
        inherit = build_inheritance(source, 1, 2, LadderConfig(**lc, distill=w, distill_frac=0.5), env, False,
                                    scratch_steps=12)
        runs[w] = tmp_path / f"w{w}" / "r"
        finals[w] = train_rung(tiny_train_config(tmp_path / f"w{w}", depth=2, steps=10, **run), env, inherit)
    assert finals[0.5]["growth"]["distill"] == {"weight": 0.5, "steps": 6}
    lines = {m["step"]: m for m in _metrics(runs[0.5]) if "loss" in m}
    assert [lines[s]["teacher_weight"] for s in range(1, 11)] == pytest.approx(
        [0.5 * (1 - k / 6) if k < 6 else 0.0 for k in range(10)])
    first = {w: next(m["loss"] for m in _metrics(runs[w]) if m.get("step") == 1 and "loss" in m) for w in runs}
    # exact growth: KL(teacher || student) ~ 0 (fp32 on CPU; bf16 logits on CUDA)
    assert first[0.5] == pytest.approx(0.5 * first[0.0], rel=1e-4 if device == "cpu" else 2e-2)
    mcfg = model_config("cpu-tiny", 2, seq_len=64)
    teacher = model_config("cpu-tiny", 1, seq_len=64).flops_per_token / 3 * 4 * 64 * 6  # 6 steps with w > 0
    assert finals[0.5]["distill_flops"] == pytest.approx(teacher)
    assert finals[0.5]["flops"] == pytest.approx(mcfg.flops_per_token * 4 * 64 * 10 + teacher)
    assert finals[0.0]["distill_flops"] == 0.0


def test_distill_needs_the_rungs_scratch_steps(tmp_path):
    env = init_distributed("cpu")
    train_rung(tiny_train_config(tmp_path, steps=4), env)
    lc = LadderConfig(depths=[1, 2], arms=["grow-only"], out=str(tmp_path), distill=0.5, train=dict(seq_len=64))
    with pytest.raises(ValueError, match="--distill needs the grown rung's scratch budget"):
        build_inheritance(tmp_path / "r/ckpt/step_000000004", 1, 2, lc, env, False)
