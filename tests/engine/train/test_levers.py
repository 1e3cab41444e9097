"""The growth-time levers of round 3 (issue #31) that live in the training loop: --new-moments own-step
(new coordinates bias-corrected from their own step count, exactly Adam's update from zero moments)
and --ramp-frac (an inserted layer's write-outs ramped in from 0); their bad inputs named."""
import math

import pytest
import torch

from engine.inherit.growth import grow
from engine.ladder.config import LadderConfig
from engine.train.inherited import LayerRamp, NewMomentCorrection
from engine.train.optim import LadderOptimizer, ParamGroup
from tests.helpers.growth import cfg, trained

pytestmark = pytest.mark.usefixtures("one_thread")


def _adam_from_zero(p0, grads, lr, wd, betas=(0.8, 0.95), eps=1e-10):
    """torch's AdamW from zero moments and step 0: what a brand-new coordinate should see."""
    p = p0.clone().requires_grad_(True)
    opt = torch.optim.AdamW([p], lr=lr, betas=betas, eps=eps, weight_decay=wd)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach()


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_own_step_makes_new_coordinates_take_adams_steps_from_zero(wd):
    """Carried step count 500, inherited half with carried moments, new half with zero ones: after 6
    steps the new half equals AdamW started from zero (own bias correction) and the inherited half is
    untouched by the correction; without it the new half's steps are off by up to ~40%."""
    torch.manual_seed(0)
    p0, mask = torch.randn(8, 6), torch.ones(8, 6)
    mask[4:] = 0.0
    grads = [torch.randn(8, 6) for _ in range(6)]
    m0, v0 = torch.randn(8, 6) * 0.1 * mask, torch.rand(8, 6) * 0.1 * mask
    runs = {}
    for correct in (False, True):
        p = torch.nn.Parameter(p0.clone())
        opt = LadderOptimizer([ParamGroup("w", ["w"], [p], lr=1e-2, weight_decay=wd)])
        opt.state["w"]["exp_avg"].copy_(m0)
        opt.state["w"]["exp_avg_sq"].copy_(v0)
        opt.step_count = 500
        fix = NewMomentCorrection(opt, {"w": p}, {"w": mask}, start_step=500) if correct else None
        for g in grads:
            p.grad = g.clone()
            opt.step(1.0)
            if fix is not None:
                fix.apply(opt, 1.0, None)
        runs[correct] = p.detach().clone()
    want = _adam_from_zero(p0[4:], [g[4:] for g in grads], lr=1e-2, wd=wd)
    torch.testing.assert_close(runs[True][4:], want, rtol=1e-5, atol=1e-6)
    assert torch.equal(runs[True][:4], runs[False][:4])
    assert (runs[False][4:] - want).abs().max() > 1e-3  # the lever changes something


def test_own_step_skipped_step_and_horizon():
    """A step the device skipped (found_inf set) is not corrected; past the horizon nothing is."""
    p = torch.nn.Parameter(torch.ones(4))
    opt = LadderOptimizer([ParamGroup("w", ["w"], [p], lr=1e-2)])
    fix = NewMomentCorrection(opt, {"w": p}, {"w": torch.zeros(4)}, start_step=0)
    assert fix.horizon == math.ceil(math.log(1e-8) / math.log(0.95))
    opt.state["w"]["exp_avg"].fill_(0.3)
    opt.state["w"]["exp_avg_sq"].fill_(0.2)
    p.grad = torch.ones(4)
    opt.step_count = 3
    before = p.detach().clone()
    fix.apply(opt, 1.0, torch.ones(()))  # skipped
    assert torch.equal(p.detach(), before)
    opt.step_count = fix.horizon + 1
    fix.apply(opt, 1.0, None)
    assert torch.equal(p.detach(), before)


def test_ramp_starts_a_copied_layer_as_the_identity_and_ends_plain():
    """Depth by copying changes the function; with the ramp's gate at 0 the grown model computes its
    parent's logits (as exact growth does), at 1/2 something between, and from step K on the blocks
    are plain again."""
    old = trained("cpu-tiny", 2)
    res = grow(old, cfg("cpu-tiny", 3), seed=1, depth_init="copy")
    x = torch.randint(0, 256, (2, 16))
    ramp = LayerRamp(res.model, res.new_layer_indices, steps=4)
    with torch.no_grad():
        free = res.model(x)
        ramp.set(0)
        gated = res.model(x)
        exact = grow(old, cfg("cpu-tiny", 3), seed=1)  # identity init: the parent's function
        torch.testing.assert_close(gated, exact.model(x), rtol=1e-5, atol=1e-5)
        ramp.set(2)
        assert res.model.blocks[res.new_layer_indices[0]].gate.item() == 0.5
        ramp.set(4)
        assert all(b.gate is None for b in res.model.blocks)
        torch.testing.assert_close(res.model(x), free)


@pytest.mark.parametrize("kw, match", [
    (dict(new_moments="own-step"), r"--new-moments own-step needs --optimizer-state carry"),
    (dict(new_moments="bias", optimizer_state="carry"), r"--new-moments must be"),
    (dict(new_moments="own-step", optimizer_state="carry", penalty_form="decoupled", lam=1.0),
     r"use --penalty-form coupled"),
    (dict(ramp_frac=0.2, inherit_budgets=[0.1, 1.0]), r"--ramp-frac must be in \[0, 0.1\].*got 0.2"),
    (dict(ramp_frac=float("nan")), r"--ramp-frac must be in"),
    (dict(ramp_frac=-0.01), r"--ramp-frac must be in"),
])
def test_lever_flags_refuse_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        LadderConfig(depths=[2, 3], arms=["grow-only"], out="x", **kw).validate()
