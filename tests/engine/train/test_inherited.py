"""A grown rung's start (engine/train/inherited.py): carried Adam moments and step count loaded into
a fresh optimizer, and refused by one that has stepped."""
import pytest
import torch

from engine.inherit.growth import grow
from engine.inherit.inheritance import Inheritance
from engine.train.config import TrainError
from engine.train.inherited import start_inherited
from engine.train.optim import LadderOptimizer, model_param_groups
from models.gpt import build_model
from tests.helpers.growth import cfg, trained


pytestmark = pytest.mark.usefixtures("one_thread")


def test_start_inherited_loads_moments_into_a_fresh_optimizer():
    res = grow(trained("cpu-tiny", 1), cfg("cpu-tiny", 2), seed=1,
               moments={n: {"exp_avg": torch.full_like(p, 0.5), "exp_avg_sq": torch.full_like(p, 0.25)}
                        for n, p in trained("cpu-tiny", 1).named_parameters()})
    model = build_model(cfg("cpu-tiny", 2), seed=0)
    groups = model_param_groups(model, matrix_lr=1e-3, embedding_lr=1e-3, unembedding_lr=1e-3, weight_decay=0.0, muon=False)
    opt, named = LadderOptimizer(groups), dict(model.named_parameters())
    inh = Inheritance(state={}, anchor={}, mask={}, fisher=None, moments=res.moments, optim_step=37)
    start_inherited(inh, loader=None, opt=opt, named=named)
    assert opt.step_count == 37
    for n in named:
        assert torch.equal(opt.state[n]["exp_avg"], res.moments[n]["exp_avg"]), n
        assert torch.equal(opt.state[n]["exp_avg_sq"], res.moments[n]["exp_avg_sq"]), n
    with pytest.raises(TrainError, match="fresh AdamW"):
        start_inherited(inh, loader=None, opt=opt, named=named)  # not fresh any more
