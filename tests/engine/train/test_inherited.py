"""A grown rung's start (engine/train/inherited.py): carried Adam moments and step count loaded into
a fresh optimizer, and refused by one that has stepped; the decoupled penalty built and applied
through the optimizer step as its formula says."""
import pytest
import torch

from engine.inherit.growth import grow
from engine.inherit.inheritance import Inheritance
from engine.train.config import TrainError
from engine.inherit.penalty import PenaltyConfig
from engine.train.inherited import build_penalty, penalty_terms, start_inherited
from engine.train.optim import LadderOptimizer, model_param_groups
from models.gpt import build_model
from tests.helpers.growth import cfg, trained


pytestmark = pytest.mark.usefixtures("one_thread")


def test_start_inherited_loads_moments_into_a_fresh_optimizer():
    res = grow(trained("cpu-tiny", 1), cfg("cpu-tiny", 2), seed=1,
               moments={n: {"exp_avg": torch.full_like(p, 0.5), "exp_avg_sq": torch.full_like(p, 0.25)}
                        for n, p in trained("cpu-tiny", 1).named_parameters()})
    model = build_model(cfg("cpu-tiny", 2), seed=0)
    groups = model_param_groups(model, matrix_lr=1e-3, embedding_lr=1e-3, unembedding_lr=1e-3, weight_decay=0.0,
                                muon=False)
    opt, named = LadderOptimizer(groups), dict(model.named_parameters())
    inh = Inheritance(state={}, anchor={}, mask={}, fisher=None, moments=res.moments, optim_step=37)
    start_inherited(inh, loader=None, opt=opt, named=named)
    assert opt.step_count == 37
    for n in named:
        assert torch.equal(opt.state[n]["exp_avg"], res.moments[n]["exp_avg"]), n
        assert torch.equal(opt.state[n]["exp_avg_sq"], res.moments[n]["exp_avg_sq"]), n
    with pytest.raises(TrainError, match="fresh AdamW"):
        start_inherited(inh, loader=None, opt=opt, named=named)  # not fresh any more


@pytest.mark.parametrize("muon", [False, True])
def test_decoupled_penalty_pulls_after_the_update(muon):
    """--penalty-form decoupled: the step equals the same step without the penalty, followed by
    W -= lr_t * kappa * (W - A) with kappa = lambda * Omega / mean_M(Omega) (M = 1) or gamma (M = 0),
    mean_M over the whole model's inherited coordinates; the value logged is 1/2 sum kappa (W - A)^2."""
    res = grow(trained("cpu-tiny", 1), cfg("cpu-tiny", 2), seed=1,
               fisher={n: torch.rand_like(p) for n, p in trained("cpu-tiny", 1).named_parameters()})

    def setup():
        model = build_model(cfg("cpu-tiny", 2), seed=0)
        model.load_state_dict(res.model.state_dict())
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel() + 1))
        groups = model_param_groups(model, matrix_lr=1e-2, embedding_lr=1e-2, unembedding_lr=1e-2, weight_decay=0.0,
                                    muon=muon)
        return model, LadderOptimizer(groups), dict(model.named_parameters()), groups

    inh = Inheritance(state={}, anchor=res.anchor, mask=res.mask, fisher=res.fisher,
                      penalty=PenaltyConfig(lam=0.5, gamma=0.3, form="decoupled"))
    model, opt, named, groups = setup()
    pen = build_penalty(inh, named, total_steps=10, world_size=1)
    terms, _ = penalty_terms(pen, named, steps_done=0)
    assert terms.decoupled
    value = opt.step(1.0, terms=terms)
    plain_model, plain_opt, plain_named, _ = setup()
    plain_opt.step(1.0)
    mean = torch.cat([res.fisher[n][res.mask[n] > 0.5] for n in named]).double().mean().item()
    lr = {n: g.lr for g in groups for n in g.names}
    expect_value = 0.0
    for n, p in named.items():
        kappa = torch.where(res.mask[n] > 0.5, 0.5 * res.fisher[n] / mean, torch.full_like(p, 0.3))
        before = setup()[2][n].detach()
        expect_value += 0.5 * (kappa.double() * (before.double() - res.anchor[n].double()) ** 2).sum().item()
        q = plain_named[n].detach()
        torch.testing.assert_close(p.detach(), q - (lr[n] * kappa).clamp(max=1.0) * (q - res.anchor[n]),
                                   rtol=1e-5, atol=1e-6, msg=n)
    assert float(value) == pytest.approx(expect_value, rel=1e-4)
