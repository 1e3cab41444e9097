"""The penalty Phi (method.md section 4) against autograd of Phi written directly from its formula."""
import pytest
import torch

from engine.inherit.penalty import Penalty, PenaltyConfig, energy_rank, inherited_fisher_mean


pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = {"wte.weight": (12, 8), "blocks.0.attn.c_q.weight": (8, 8), "blocks.0.mlp.c_fc.weight": (16, 8),
          "lm_head.weight": (12, 8), "scale": (5,)}


def make(seed=0):
    g = torch.Generator().manual_seed(seed)
    params, anchor, mask, fisher = {}, {}, {}, {}
    for n, s in SHAPES.items():
        anchor[n] = torch.randn(s, generator=g)
        params[n] = anchor[n] + 0.3 * torch.randn(s, generator=g)
        m = torch.zeros(s)
        m[tuple(slice(0, max(1, d * 3 // 4)) for d in s)] = 1.0  # leading corner inherited
        mask[n] = m
        fisher[n] = torch.rand(s, generator=g) * m  # carried Fisher is 0 on new coordinates
    return params, anchor, mask, fisher


def phi_reference(params, anchor, mask, fisher, lam, gamma, subspace, ranks=None):
    """method.md section 4, literally (float64, autograd-able in params)."""
    total = 0.0
    for n, W in params.items():
        A, M, Om = anchor[n].double(), mask[n].double(), fisher[n].double()
        dW = W - A
        total = total + lam / 2 * (Om * M * dW**2).sum()
        if subspace == "coords" or W.dim() != 2:
            out = (1 - M) * dW
        else:
            U = torch.linalg.svd(A, full_matrices=False)[0][:, : ranks[n]]
            P = U @ U.T
            out = (torch.eye(A.shape[0], dtype=A.dtype) - P) @ dW
        total = total + gamma * (out**2).sum()  # = Tr((I-P) dW dW^T (I-P)^T)
    return total


@pytest.mark.parametrize("subspace", ["coords", "svd"])
def test_value_and_gradient_match_autograd(subspace):
    params, anchor, mask, fisher = make()
    lam, gamma = 3.0, 0.7
    kw = dict(svd_rank=3) if subspace == "svd" else {}
    pen = Penalty(params.items(), anchor, mask, fisher, lam=lam, gamma=gamma, subspace=subspace, **kw)
    ranks = {n: 3 for n in SHAPES}
    W = {n: p.double().requires_grad_() for n, p in params.items()}
    ref = phi_reference(W, anchor, mask, fisher, lam, gamma, subspace, ranks)
    ref.backward()
    plist = list(params.values())
    assert pen.value(plist, 0) == pytest.approx(ref.item(), rel=1e-6)  # kappa is fp32
    for (n, w), g in zip(W.items(), pen.grads(plist, 0)):
        torch.testing.assert_close(g.double(), w.grad, rtol=1e-5, atol=1e-6, msg=n)
    if subspace == "coords":
        assert all(e is None for e in pen.extra_grads(plist, 0))
        # coords identity: Phi = 1/2 sum kappa (W - A)^2, kappa = lam*Omega (M=1) / 2*gamma (M=0)
        ident = sum(0.5 * (k.double() * (p.double() - anchor[n].double()) ** 2).sum().item()
                    for (n, p), k in zip(params.items(), pen.kappa_for(0)))
        assert ident == pytest.approx(ref.item(), rel=1e-6)
        for n, k in zip(SHAPES, pen.kappa_for(0)):
            expect = torch.where(mask[n] > 0.5, lam * fisher[n], torch.full_like(k, 2 * gamma))
            torch.testing.assert_close(k, expect)
    else:
        extra = pen.extra_grads(plist, 0)
        assert extra[-1] is None and all(e is not None for e in extra[:-1])  # 1-D falls back to coords
        assert pen.ranks[:-1] == [3, 3, 3, 3]


def test_linear_schedule_and_cache():
    params, anchor, mask, fisher = make(1)
    plist = list(params.values())
    pen = Penalty(params.items(), anchor, mask, fisher, lam=2.0, gamma=0.5, schedule="linear", total_steps=10)
    v0 = pen.value(plist, 0)
    base = [k.clone() for k in pen.kappa_for(0)]  # factor 1: the unscheduled kappa
    assert pen.factor(0) == 1.0 and pen.factor(5) == 0.5 and pen.factor(10) == 0.0 and pen.factor(15) == 0.0
    for step in (0, 2, 5, 9, 10, 12):
        f = max(0.0, 1 - step / 10)
        assert pen.value(plist, step) == pytest.approx(f * v0, rel=1e-12, abs=1e-15)
        for k, kb in zip(pen.kappa_for(step), base):
            torch.testing.assert_close(k, kb * f)
    k1 = pen.kappa_for(3)
    ptrs = [k.data_ptr() for k in k1]
    k2 = pen.kappa_for(4)  # rescaled in place into the same cached buffers, no allocation
    assert [k.data_ptr() for k in k2] == ptrs
    assert all(k.abs().sum() == 0 for k in pen.kappa_for(10))
    const = Penalty(params.items(), anchor, mask, fisher, lam=2.0, gamma=0.5)
    assert const.kappa_for(7) is const.kappa_for(0)  # the cached base tensors, no copy
    svd = Penalty(params.items(), anchor, mask, fisher, lam=2.0, gamma=0.5, subspace="svd", svd_rank=2,
                  schedule="linear", total_steps=4)
    e0, e1 = svd.extra_grads(plist, 0), svd.extra_grads(plist, 1)
    torch.testing.assert_close(e1[0], 0.75 * e0[0])
    assert svd.extra_grads(plist, 4)[0].abs().max() == 0


def test_early_decay_reaches_zero_after_its_fraction_of_the_rung():
    """decay_frac F: lambda and gamma times max(0, 1 - step/(F*total)), on top of the schedule's factor;
    F = 0 leaves the constant penalty's cached tensors untouched."""
    params, anchor, mask, fisher = make(2)
    plist = list(params.values())
    pen = Penalty(params.items(), anchor, mask, fisher, lam=2.0, gamma=0.5, decay_frac=0.25, total_steps=40)
    v0 = pen.value(plist, 0)
    assert [pen.factor(s) for s in (0, 5, 10, 11, 39)] == [1.0, 0.5, 0.0, 0.0, 0.0]
    assert pen.value(plist, 5) == pytest.approx(0.5 * v0, rel=1e-12)
    assert all(k.abs().sum() == 0 for k in pen.kappa_for(10))
    both = Penalty(params.items(), anchor, mask, fisher, lam=2.0, gamma=0.5, schedule="linear", decay_frac=0.5,
                   total_steps=40)
    assert both.factor(10) == pytest.approx((1 - 10 / 40) * (1 - 10 / 20))
    off = Penalty(params.items(), anchor, mask, fisher, lam=2.0, gamma=0.5, decay_frac=0.0)
    assert off.kappa_for(7) is off.kappa_for(0)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=f"decay_frac must be in \\[0, 1\\], got {bad}"):
            Penalty(params.items(), anchor, mask, fisher, lam=2.0, gamma=0.5, decay_frac=bad, total_steps=4)
    with pytest.raises(ValueError, match="decay_frac > 0 needs total_steps"):
        Penalty(params.items(), anchor, mask, fisher, lam=2.0, gamma=0.5, decay_frac=0.5)


def test_svd_energy_picks_k():
    g = torch.Generator().manual_seed(0)
    s = torch.tensor([4.0, 3.0, 2.0, 1.0])  # s^2 = 16, 9, 4, 1 of 30
    Q1 = torch.linalg.qr(torch.randn(10, 4, generator=g, dtype=torch.float64))[0]
    Q2 = torch.linalg.qr(torch.randn(6, 4, generator=g, dtype=torch.float64))[0]
    A = (Q1 * s.double()) @ Q2.T
    assert [energy_rank(torch.linalg.svdvals(A), e) for e in (0.5, 16 / 30, 0.8, 25 / 30, 0.9, 0.97, 1.0)] == \
        [1, 1, 2, 2, 3, 4, 4]
    assert energy_rank(torch.zeros(4), 0.9) == 0
    A = A.float()
    W = A + 0.1 * torch.randn(A.shape, generator=g)
    one = {"w": A}
    pen = Penalty([("w", W)], one, {"w": torch.ones_like(A)}, None, lam=1.0, gamma=1.0, subspace="svd",
                  svd_energy=0.85)
    assert pen.ranks == [3]
    U = Q1[:, :3].float()
    dW = W - A
    torch.testing.assert_close(pen.extra_grads([W], 0)[0], 2 * (dW - U @ (U.T @ dW)), rtol=1e-4, atol=1e-5)
    assert pen.penalty_flops_per_step == 4 * A.numel() + 4 * 3 * 10 * 6 + 3 * A.numel()
    coords = Penalty([("w", W)], one, {"w": torch.ones_like(A)}, None, lam=1.0, gamma=1.0)
    assert coords.penalty_flops_per_step == 4 * A.numel()
    assert Penalty([("w", W)], one, {"w": torch.ones_like(A)}, None, lam=0.0, gamma=0.0).penalty_flops_per_step == 0


@pytest.mark.parametrize("schedule,step", [("constant", 0), ("linear", 3)])
def test_svd_terms_carry_the_whole_phi(schedule, step):
    """The logged Phi in svd mode: the optimizer's elementwise 1/2 sum kappa (W - A)^2 plus the
    subspace value beside the extra gradients is Phi itself, gamma term included."""
    params, anchor, mask, fisher = make(2)
    plist = list(params.values())
    pen = Penalty(params.items(), anchor, mask, fisher, lam=3.0, gamma=0.7, subspace="svd", svd_rank=3,
                  schedule=schedule, total_steps=8)
    extra, subspace_value = pen.subspace_terms(plist, step)
    for a, b in zip(extra, pen.extra_grads(plist, step), strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    elementwise = sum(0.5 * (k.double() * (p.double() - anchor[n].double()) ** 2).sum().item()
                      for (n, p), k in zip(params.items(), pen.kappa_for(step)))
    assert subspace_value.dim() == 0 and subspace_value.item() > 0
    assert elementwise + subspace_value.item() == pytest.approx(pen.value(plist, step), rel=1e-5)
    coords = Penalty(params.items(), anchor, mask, fisher, lam=3.0, gamma=0.7)
    assert coords.subspace_terms(plist, step)[1] is None  # coords: kappa holds all of Phi


def test_penalty_config_is_active_only_with_a_weight():
    assert not PenaltyConfig().active  # the default: an arm without the penalty
    assert PenaltyConfig(lam=1.0).active and PenaltyConfig(gamma=0.1).active
    assert not PenaltyConfig(lam=0.0, gamma=0.0, subspace="svd", svd_rank=2).active


def test_decoupled_kappa_is_a_pull_per_unit_lr():
    """Decoupled form: kappa = lambda * Omega / mean_M(Omega) on inherited coordinates (mean over the
    whole model's inherited coordinates), gamma on new ones; its value is 1/2 sum kappa (W - A)^2."""
    params, anchor, mask, fisher = make(3)
    pen = Penalty(params.items(), anchor, mask, fisher, lam=0.5, gamma=0.2, form="decoupled")
    inh = torch.cat([fisher[n][mask[n] > 0.5] for n in SHAPES]).double()
    mean = inh.mean().item()
    assert inherited_fisher_mean(list(fisher.values()), list(mask.values())) == pytest.approx(mean, rel=1e-12)
    for n, k in zip(SHAPES, pen.kappa_for(0)):
        expect = torch.where(mask[n] > 0.5, 0.5 * fisher[n] / mean, torch.full_like(k, 0.2))
        torch.testing.assert_close(k, expect)
    plist = list(params.values())
    value = sum(0.5 * (k.double() * (p.double() - anchor[n].double()) ** 2).sum().item()
                for (n, p), k in zip(params.items(), pen.kappa_for(0)))
    assert pen.value(plist, 0) == pytest.approx(value, rel=1e-9)
    given = Penalty(params.items(), anchor, mask, fisher, lam=0.5, gamma=0.2, form="decoupled", omega_mean=2 * mean)
    torch.testing.assert_close(given.kappa_for(0)[0], torch.where(mask["wte.weight"] > 0.5,
                                                                  0.25 * fisher["wte.weight"] / mean,
                                                                  torch.full_like(fisher["wte.weight"], 0.2)))
    with pytest.raises(ValueError, match="form must be one of"):
        Penalty(params.items(), anchor, mask, fisher, lam=0.5, gamma=0.2, form="fused")
    with pytest.raises(ValueError, match="form='decoupled' needs subspace='coords', got 'svd'"):
        Penalty(params.items(), anchor, mask, fisher, lam=0.5, gamma=0.2, form="decoupled", subspace="svd", svd_rank=2)
