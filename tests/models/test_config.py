"""Model configuration (models/config.py): exact counts against hand arithmetic, the nanochat
anchors, bad values and presets refused by name, the one preset table (its train part read by
engine.train.config), the one --depths grammar."""
from dataclasses import fields

import pytest

from engine.train.config import TRAIN_PRESETS, TrainConfig
from models.config import PRESETS, GPTConfig, model_config, parse_depths


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


def test_one_preset_table_per_layer():
    """The model's shapes in models/config.PRESETS, the trainer's defaults in TRAIN_PRESETS, same names."""
    assert set(TRAIN_PRESETS) == set(PRESETS)
    for name, preset in PRESETS.items():
        assert set(TRAIN_PRESETS[name]) <= {f.name for f in fields(TrainConfig) if f.default is None}
        c = model_config(name, 2)
        assert {k: getattr(c, k) for k in preset} == preset


@pytest.mark.parametrize("spec,depths", [("2:5", [2, 3, 4, 5]), ("2,3,5", [2, 3, 5]), ("2:4,8", [2, 3, 4, 8]),
                                         (" 3 ", [3]), ("1:1", [1])])
def test_parse_depths(spec, depths):
    assert parse_depths(spec) == depths


@pytest.mark.parametrize("spec,message", [
    ("3:1", "--depths '3:1': expected LO:HI"), ("a,b", "--depths 'a,b': expected LO:HI"),
    ("1:2:3", "--depths '1:2:3': expected"), ("", "--depths is empty"), ("0:2", "must be positive, got [0, 1, 2]"),
    ("1,1", "strictly increasing, got [1, 1]"), ("5,3", "strictly increasing, got [5, 3]"),
])
def test_parse_depths_refuses_bad_input_by_name(spec, message):
    with pytest.raises(ValueError) as e:
        parse_depths(spec)
    assert message in str(e.value)
