"""The ladder's model: shapes, exact counts against hand arithmetic, init, and that it learns."""
import math

import pytest
import torch

from models.attention import select_backend
from models.config import GPTConfig, model_config
from models.gpt import GPT, build_model


def test_cpu_tiny_d2_counts_by_hand():
    c = model_config("cpu-tiny", 2)
    assert (c.model_dim, c.n_head, c.head_dim) == (64, 2, 32)  # ceil(32*2/32)*32
    D, V, L, T = 64, 2048, 2, 256
    assert c.param_counts() == {"wte": V * D, "attn": L * 4 * D * D, "mlp": L * 8 * D * D, "lm_head": V * D}
    assert c.scaling_params == 229_376  # 2*12*64^2 + 2048*64
    assert c.flops_per_token == 6 * 229_376 + 12 * L * D * T == 1_769_472


@pytest.mark.parametrize("depth,expected", [(12, 110_100_480), (20, 435_159_040)])
def test_nanochat_scaling_params_match_nanochat(depth, expected):
    # anchors.md: nanochat counts d12 ~110M, d20 ~435M scaling params
    assert model_config("nanochat", depth).scaling_params == expected


def test_nanochat_odd_depth_rounds_width_up():
    assert model_config("nanochat", 11).model_dim == model_config("nanochat", 12).model_dim == 768
    assert model_config("nanochat", 11).n_head == 6


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_module_counts_equal_config_counts(depth):
    c = model_config("cpu-tiny", depth)
    m = GPT(c)
    groups = {k: sum(p.numel() for p in ps) for k, ps in m.param_groups().items()}
    assert groups == c.param_counts()
    assert sum(p.numel() for p in m.parameters()) == c.num_params
    assert all(b.n_head == c.n_head for b in c.blocks)


def test_fresh_block_is_identity_and_logits_capped():
    c = model_config("cpu-tiny", 2, seq_len=32)
    m = build_model(c, seed=0)
    for b in m.blocks:
        assert b.attn.c_proj.weight.abs().sum() == 0 and b.mlp.c_proj.weight.abs().sum() == 0
    x = torch.randint(0, c.vocab_size, (2, 32))
    h = torch.nn.functional.rms_norm(m.wte(x), (c.model_dim,))
    for b in m.blocks:
        assert torch.equal(b(h, m.rope_cos, m.rope_sin, m.attention), h)
    m.lm_head.weight.data.normal_(0, 10.0)
    logits = m(x)
    assert logits.shape == (2, 32, c.vocab_size) and logits.dtype == torch.float32
    assert logits.abs().max() <= c.softcap + 1e-4


def test_init_is_deterministic_per_seed():
    c = model_config("cpu-tiny", 2)
    a, b, z = build_model(c, seed=3), build_model(c, seed=3), build_model(c, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.wte.weight, z.wte.weight)


def test_initial_loss_near_uniform():
    c = model_config("cpu-tiny", 2, seq_len=64)
    m = build_model(c, seed=0)
    x = torch.randint(0, c.vocab_size, (4, 64))
    assert abs(m(x, x).item() - math.log(c.vocab_size)) < 0.05  # lm_head std 1e-3


def test_tiny_model_overfits_a_fixed_batch():
    torch.manual_seed(0)
    c = model_config("cpu-tiny", 1, vocab_size=64, seq_len=32)
    m = build_model(c, seed=0)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, betas=(0.9, 0.95))
    x = torch.randint(0, 64, (4, 33))
    first = None
    for _ in range(150):
        loss = m(x[:, :-1], x[:, 1:])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 4.0 and loss.item() < 0.3, (first, loss.item())


def test_attention_backend_on_cpu_is_sdpa(monkeypatch):
    monkeypatch.delenv("LADDER_ATTENTION", raising=False)
    assert select_backend("cpu").name == "sdpa"
    monkeypatch.setenv("LADDER_ATTENTION", "fa2")
    with pytest.raises(RuntimeError, match="needs CUDA"):
        select_backend("cpu")
    monkeypatch.setenv("LADDER_ATTENTION", "bogus")
    with pytest.raises(ValueError, match="bogus"):
        select_backend("cpu")


@pytest.mark.parametrize("kw,match", [
    (dict(depth=0), "depth"), (dict(depth=2, dtype="float16"), "dtype"), (dict(depth=2, head_dim=-1), "head_dim"),
])
def test_bad_model_config(kw, match):
    base = dict(aspect_ratio=32, head_dim=32, vocab_size=2048, seq_len=256)
    with pytest.raises(ValueError, match=match):
        GPTConfig(**{**base, **kw})


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'gpt5'"):
        model_config("gpt5", 2)


def test_sequence_longer_than_model_is_an_error():
    m = build_model(model_config("cpu-tiny", 1, seq_len=16), seed=0)
    with pytest.raises(ValueError, match="exceeds the model's seq_len 16"):
        m(torch.zeros(1, 17, dtype=torch.long))


# ----------------------------------------------------------------------------------------------
# Mixed precision: attention inputs, residual stream, the loss head
# ----------------------------------------------------------------------------------------------
def _cuda_like_rms_norm(x):
    """rms_norm as CUDA autocast runs it from torch 2.12 on (fp32 policy): fp32 out for bf16 in.
    CPU autocast keeps bf16, so the tests put this in to reproduce the GPU's dtypes on CPU."""
    return torch.nn.functional.rms_norm(x.float(), (x.size(-1),))


def _strict_flash_stand_in(seen):
    """flash_attn_func's dtype contract: q, k, v of one dtype, fp16 or bf16."""
    def attend(q, k, v):
        seen.append((q.dtype, k.dtype, v.dtype))
        if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16):
            raise RuntimeError(f"FlashAttention only support fp16 and bf16 data type, one for all: {seen[-1]}")
        return select_backend("cpu").fn(q, k, v)
    return attend


@pytest.fixture
def bf16_autocast_model(monkeypatch):
    import models.gpt as gpt

    monkeypatch.setattr(gpt, "rms_norm", _cuda_like_rms_norm)
    c = model_config("cpu-tiny", 2, vocab_size=96, seq_len=16)  # vocab != any weight's last dim
    return build_model(c, seed=0), c


def test_attention_gets_one_half_precision_dtype_under_autocast(bf16_autocast_model):
    from models.attention import AttentionBackend

    m, c = bf16_autocast_model
    seen = []
    m.set_attention(AttentionBackend("strict", _strict_flash_stand_in(seen)))
    x = torch.randint(0, c.vocab_size, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = m(x, x)
    loss.backward()
    assert seen and all(s == (torch.bfloat16,) * 3 for s in seen), seen


def test_residual_stream_is_bf16_under_autocast(bf16_autocast_model):
    m, c = bf16_autocast_model
    dtypes = []
    for b in m.blocks:
        b.register_forward_pre_hook(lambda mod, args: dtypes.append(args[0].dtype))
        b.register_forward_hook(lambda mod, args, out: dtypes.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m(torch.randint(0, c.vocab_size, (2, 16)))
    assert dtypes == [torch.bfloat16] * 2 * c.depth, dtypes


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
