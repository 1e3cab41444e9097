"""The EWC scale of lambda (engine/inherit/ewc.py): the measured ratio r of the per-token Fisher to
the batch-mean-gradient-squared Omega, against a direct computation, and lambda_EWC's formula."""
import pytest
import torch

from engine.inherit.ewc import EWC, ewc_lambda, fisher_ratio, lam_is_on
from models.config import model_config
from models.gpt import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(seed=0):
    return build_model(model_config("cpu-tiny", 1, seq_len=16, vocab_size=64), seed=seed)


def batches(n, rows=4, seq=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        t = torch.randint(64, (rows, seq + 1), generator=g)
        out.append((t[:, :-1], t[:, 1:]))
    return out


def grad_sq(model, loss):
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return sum(float(g.double().square().sum()) for g in grads)


def test_the_causal_cut_leaves_a_tokens_gradient_unchanged():
    model = tiny()
    x, y = batches(1)[0]
    full = torch.full_like(y[:1], -1)
    full[0, 5] = y[0, 5]
    cut = full[:, :6]
    g_full = torch.autograd.grad(model(x[:1], full), list(model.parameters()))
    g_cut = torch.autograd.grad(model(x[:1, :6], cut), list(model.parameters()))
    for a, b in zip(g_full, g_cut):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_r_is_the_token_fisher_mass_over_the_batch_fisher_mass():
    model, data = tiny(), batches(3)
    r, facts, flops = fisher_ratio(model, iter(data), micro_batch=2, tokens_per_batch=5, seed=3)
    # independently: whole-batch means (no micro-batches), tokens drawn from the same generator sequence
    gen = torch.Generator().manual_seed(3)
    batch_sq, tok_sq, read = [], [], 0
    for x, y in data:
        batch_sq.append(grad_sq(model, model(x, y)))
        read += x.numel()
        for _ in range(5):
            row, pos = int(torch.randint(4, (1,), generator=gen)), int(torch.randint(16, (1,), generator=gen))
            t = torch.full_like(y, -1)
            t[row, pos] = y[row, pos]
            tok_sq.append(grad_sq(model, model(x, t) * 1.0))
            read += pos + 1
    expect = (sum(tok_sq) / len(tok_sq)) / (sum(batch_sq) / len(batch_sq))
    assert r == pytest.approx(expect, rel=1e-4)
    assert (facts["r_batches"], facts["r_tokens"], facts["r_batch_tokens"]) == (3, 15, 64)
    assert flops == model.config.flops_per_token * read
    assert all(p.grad is None for p in model.parameters())  # the model's .grad are left as they were
    assert 1.0 < r < 64 * 4  # a single token is noisier than a 64-token batch mean, by at most ~the tokens


def test_ewc_lambda_formula_and_lam_is_on():
    assert ewc_lambda(2e6, 8e6, 700.0) == pytest.approx(175.0)
    with pytest.raises(ValueError, match="positive token counts"):
        ewc_lambda(0, 1e6, 700.0)
    assert lam_is_on(EWC) and lam_is_on(1e5) and not lam_is_on(0.0) and not lam_is_on("bogus")
