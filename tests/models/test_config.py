"""Model configuration (models/config.py): exact counts against hand arithmetic, the nanochat
anchors, bad values and presets refused by name."""
import pytest

from models.config import GPTConfig, model_config


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
