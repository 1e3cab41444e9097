"""The chunked soft-capped cross-entropy (models/loss.py): the eager formula's values and gradients,
bf16 logits, no full fp32 logits tensor under autocast, and the distillation mix against a teacher."""
import pytest
import torch


def _eager_softcap_ce(z, t, cap, reduction):
    y = cap * torch.tanh(z.float() / cap)
    loss = torch.nn.functional.cross_entropy(y.view(-1, y.size(-1)), t.reshape(-1), ignore_index=-1,
                                             reduction=reduction)
    return loss.view(t.shape) if reduction == "none" else loss


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_softcap_cross_entropy_matches_the_eager_formula(monkeypatch, reduction):
    import models.loss as L

    monkeypatch.setattr(L, "CHUNK_ELEMS", 3 * 50)  # 3 rows per chunk: several chunks and a tail
    gen = torch.Generator().manual_seed(0)
    z = (torch.randn(2, 7, 50, generator=gen) * 20).requires_grad_()
    t = torch.randint(0, 50, (2, 7), generator=gen)
    t[0, 2] = t[1, 6] = -1
    w = torch.randn(2, 7, generator=gen) if reduction == "none" else torch.tensor(1.7)
    want = _eager_softcap_ce(z, t, 15.0, reduction)
    (gw,) = torch.autograd.grad((want * w).sum(), z)
    got = L.softcap_cross_entropy(z, t, 15.0, reduction)
    (gg,) = torch.autograd.grad((got * w).sum(), z)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gg, gw, rtol=1e-5, atol=1e-7)
    assert gg[0, 2].abs().sum() == 0 and gg[1, 6].abs().sum() == 0  # ignored targets: no gradient


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_teacher_mix_is_ce_plus_kl_from_the_teacher(monkeypatch, weight):
    """With a teacher, each token's loss is (1 - w) CE + w KL(teacher || model) over the capped
    logits, in value and gradient, chunked (ignored targets: no loss, no gradient)."""
    import models.loss as L

    monkeypatch.setattr(L, "CHUNK_ELEMS", 3 * 50)
    gen = torch.Generator().manual_seed(2)
    z = (torch.randn(2, 7, 50, generator=gen, dtype=torch.float64) * 20).requires_grad_()
    teacher = torch.randn(2, 7, 50, generator=gen, dtype=torch.float64) * 3
    t = torch.randint(0, 50, (2, 7), generator=gen)
    t[0, 2] = -1
    y = 15.0 * torch.tanh(z / 15.0)
    ce = torch.nn.functional.cross_entropy(y.view(-1, 50), t.view(-1), ignore_index=-1, reduction="none")
    kl = (teacher.softmax(-1) * (teacher.log_softmax(-1) - y.log_softmax(-1))).sum(-1).view(-1)
    valid = t.view(-1) != -1
    want = (((1 - weight) * ce + weight * kl) * valid).sum() / valid.sum()
    got = L.softcap_cross_entropy(z, t, 15.0, teacher=teacher, teacher_weight=weight)
    (gw,), (gg,) = torch.autograd.grad(want, z), torch.autograd.grad(got, z)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)  # fp32 inside the chunks
    torch.testing.assert_close(gg, gw, rtol=1e-5, atol=1e-8)
    assert gg[0, 2].abs().sum() == 0


def test_teacher_of_another_shape_or_weight_outside_0_1_is_refused():
    from models.loss import softcap_cross_entropy

    z, t = torch.zeros(2, 3, 8), torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"teacher logits \(2, 3, 7\) must match"):
        softcap_cross_entropy(z, t, 15.0, teacher=torch.zeros(2, 3, 7), teacher_weight=0.5)
    with pytest.raises(ValueError, match="teacher weight must be in \\[0, 1\\], got 1.5"):
        softcap_cross_entropy(z, t, 15.0, teacher=torch.zeros(2, 3, 8), teacher_weight=1.5)


def test_softcap_cross_entropy_bf16_logits_close_to_fp32():
    from models.loss import softcap_cross_entropy

    gen = torch.Generator().manual_seed(1)
    z32 = torch.randn(4, 8, 64, generator=gen) * 5
    t = torch.randint(0, 64, (4, 8), generator=gen)
    z16 = z32.bfloat16().requires_grad_()
    got = softcap_cross_entropy(z16, t, 15.0)
    got.backward()
    assert z16.grad.dtype == torch.bfloat16
    want = _eager_softcap_ce(z16.detach().float(), t, 15.0, "mean")
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_loss_head_never_holds_a_full_fp32_logits_tensor(monkeypatch, bf16_autocast_model):
    """Under bf16 autocast no op of forward or backward outputs an fp32 tensor as large as the
    logits [B, T, V] (the chunks are smaller): at most the bf16 logits themselves exist whole."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import models.loss as L

    m, c = bf16_autocast_model
    B, T = 2, 16
    monkeypatch.setattr(L, "CHUNK_ELEMS", 8 * c.vocab_size)

    class Biggest(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for o in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(o, torch.Tensor) and o.dtype == torch.float32 and o.dim() and o.size(-1) == c.vocab_size:
                    Biggest.largest = max(Biggest.largest, o.numel())
            return out

    x = torch.randint(0, c.vocab_size, (B, T))
    with Biggest(), torch.autocast("cpu", dtype=torch.bfloat16):
        m(x, x).backward()
    assert 0 < Biggest.largest <= 8 * c.vocab_size < B * T * c.vocab_size
