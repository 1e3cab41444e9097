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
