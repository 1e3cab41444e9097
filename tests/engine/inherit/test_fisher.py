"""Diagonal empirical Fisher (method.md section 3): post-hoc and online agree with a direct computation."""
import pytest
import torch

from engine.inherit.fisher import OnlineFisher, posthoc_fisher
from models.config import model_config
from models.gpt import build_model
from tests.helpers.growth import random_batches


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(depth=2):
    cfg = model_config("cpu-tiny", depth, vocab_size=64, seq_len=16)
    return build_model(cfg, seed=0), cfg


def batches(k, seed=0, B=2, T=16, V=64):
    return random_batches(k, seed, B, T, V)


def nontrivial(model):
    """A couple of AdamW steps so c_proj is non-zero and every parameter has a gradient."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for x, y in batches(2, seed=99):
        model(x, y).backward()
        opt.step()
        opt.zero_grad()
    return model


def direct_fisher(model, bs):
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    acc = [torch.zeros_like(p) for p in params]
    for x, y in bs:
        gs = torch.autograd.grad(model(x, y), params)
        for a, g in zip(acc, gs):
            a += g**2
    return {n: a / len(bs) for n, a in zip(names, acc)}


def test_posthoc_matches_direct_and_counts_flops():
    model, cfg = tiny()
    nontrivial(model)
    bs = batches(3)
    sentinel = [torch.full_like(p, 7.0) for p in model.parameters()]
    for p, s in zip(model.parameters(), sentinel):
        p.grad = s
    omega, flops = posthoc_fisher(model, bs)
    ref = direct_fisher(model, bs)
    assert omega.keys() == ref.keys()
    for n in ref:
        assert omega[n].dtype == torch.float32
        torch.testing.assert_close(omega[n], ref[n], rtol=1e-5, atol=1e-12, msg=n)
        assert omega[n].abs().sum() > 0, n
    assert flops == cfg.flops_per_token * 3 * 2 * 16
    assert all(p.grad is s for p, s in zip(model.parameters(), sentinel))  # grads restored


def test_online_equals_posthoc_at_same_weights():
    model, _ = tiny()
    nontrivial(model)
    bs = batches(4, seed=5)
    omega, _ = posthoc_fisher(model, bs)
    of = OnlineFisher(num_steps=4).begin(model.named_parameters())
    assert of.fisher_scale == 0.25 and len(of.buffers()) == len(list(model.parameters()))
    params = list(model.parameters())
    for i, (x, y) in enumerate(bs):
        grads = torch.autograd.grad(model(x, y), params)
        if i % 2:
            of.accumulate_(grads)  # the reference accumulation
        else:  # what the optimizer kernel does with buffers() / fisher_scale, then step_done()
            for buf, g in zip(of.buffers(), grads):
                buf += of.fisher_scale * g.float() ** 2
            of.step_done()
    assert of.steps_accumulated == 4
    res = of.result()
    for n in omega:
        torch.testing.assert_close(res[n], omega[n], rtol=1e-5, atol=1e-12)


def test_online_state_dict_and_early_end():
    model, _ = tiny(1)
    bs = batches(2, seed=1)
    params = list(model.parameters())
    of = OnlineFisher(num_steps=8).begin(model.named_parameters())
    for x, y in bs:
        of.accumulate_(torch.autograd.grad(model(x, y), params))
    omega, _ = posthoc_fisher(model, bs)
    res = of.result()  # only 2 of 8 steps seen: still the mean over the steps seen
    for n in omega:
        torch.testing.assert_close(res[n], omega[n], rtol=1e-5, atol=1e-12)
    state = of.state_dict()
    other = OnlineFisher(num_steps=1).begin(model.named_parameters())
    bufs = other.buffers()
    other.load_state_dict(state)
    assert other.buffers() is bufs and other.steps_accumulated == 2 and other.num_steps == 8
    for n in omega:
        torch.testing.assert_close(other.result()[n], res[n])
    with pytest.raises(RuntimeError):
        OnlineFisher(3).begin(model.named_parameters()).result()
