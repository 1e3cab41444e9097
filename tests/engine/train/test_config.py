"""Training configuration (engine/train/config.py): every configuration validates or names the bad
value (hypothesis, against an independent oracle); the validation split is checked against the
evaluation before any training; a bad choice names the value and the choices."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.inherit.ars import MODES as ARS_MODES
from engine.runtime.distributed import DistEnv
from engine.train.config import TRAIN_PRESETS, TrainConfig, TrainError, check_choice, check_val_split, validate
from engine.train.schedule import SCHEDULES
from models.config import PRESETS
from tests.helpers.strategies import edge_floats


def test_too_small_validation_split_fails_before_training_naming_the_fix():
    cfg = TrainConfig(depth=12, preset="nanochat", steps=10)  # eval_tokens 10 x 524288
    with pytest.raises(ValueError,
                       match=r"--data builtin: the validation split has 200,000 tokens.*5,242,881.*parquet:"):
        check_val_split(200_000, cfg, 2048, 32, 1)
    check_val_split(5_242_881, cfg, 2048, 32, 1)  # exactly enough: no error


def _env(world_size: int) -> DistEnv:
    return DistEnv(rank=0, local_rank=0, world_size=world_size, device=torch.device("cpu"), backend=None)


@st.composite
def train_configs(draw):
    kw = dict(
        depth=draw(st.integers(-2, 30)),
        preset=draw(st.sampled_from(sorted(PRESETS) + ["huge", ""])),
        out="unused",
        global_batch=draw(st.one_of(st.none(), st.integers(-2, 64))),
        device_batch=draw(st.one_of(st.none(), st.integers(-2, 64))),
        optimizer=draw(st.sampled_from(["adamw", "muon", "sgd"])),
        ars=draw(st.sampled_from(["off", "seed", "detrended", "wild"])),
        warmdown_frac=draw(edge_floats),
        final_lr_frac=draw(edge_floats),
        ckpt_every=draw(st.integers(-2, 10)),
        fisher_online_steps=draw(st.integers(-2, 10)),
        seq_len=draw(st.one_of(st.none(), st.integers(-2, 4096))),
        vocab_size=draw(st.one_of(st.none(), st.integers(-2, 70000))),
        eval_every=draw(st.one_of(st.none(), st.integers(-2, 10))),
        eval_tokens=draw(st.one_of(st.none(), st.integers(-2, 10000))),
        warmup_steps=draw(st.one_of(st.none(), st.integers(-2, 10))),
        max_nonfinite=draw(st.integers(-1, 6)),
        host_sync=draw(st.sampled_from(["auto", "step", "lagged", "sometimes"])),
        lr_mult=draw(st.one_of(st.none(), st.floats(-1, 4), st.just(float("inf")), st.just(float("nan")))),
    )
    for k in draw(st.sets(st.sampled_from(["steps", "tokens", "ratio"]), max_size=3)):
        kw[k] = (draw(st.one_of(st.integers(-2, 10**6), st.floats(-1, 2e4))) if k == "ratio"
                 else draw(st.integers(-2, 10**6)))
    return TrainConfig(**kw), draw(st.sampled_from([1, 2, 3, 4, 8]))


def train_problems(cfg: TrainConfig, ws: int) -> list[str]:
    """An independent oracle: the words a message about each invalid value must contain."""
    bad = []
    if cfg.preset not in PRESETS:
        return [repr(cfg.preset)]  # nothing else can be resolved without a preset
    if cfg.depth < 1:
        bad.append("depth")
    budgets = [k for k in ("steps", "tokens", "ratio") if getattr(cfg, k) is not None]
    if len(budgets) != 1:
        bad.append("exactly one of --steps, --tokens, --ratio")
    for k in ("steps", "tokens"):
        if getattr(cfg, k) is not None and getattr(cfg, k) < 1:
            bad.append(k)
    if cfg.ratio is not None and not 0 < cfg.ratio <= 1e4:
        bad.append("ratio")
    gb = TRAIN_PRESETS[cfg.preset]["global_batch"] if cfg.global_batch is None else cfg.global_batch
    db = TRAIN_PRESETS[cfg.preset]["device_batch"] if cfg.device_batch is None else cfg.device_batch
    if gb < 1 or db < 1:
        bad.append("batch")
    elif gb % ws or gb % (min(db, gb // ws) * ws):
        bad.append(f"global_batch={gb}")
    if cfg.optimizer not in ("adamw", "muon"):
        bad.append(repr(cfg.optimizer))
    if cfg.ars not in ("off", "seed", "detrended"):
        bad.append(repr(cfg.ars))
    if cfg.host_sync not in ("auto", "step", "lagged"):
        bad.append(repr(cfg.host_sync))
    for k in ("warmdown_frac", "final_lr_frac"):
        if not 0 <= getattr(cfg, k) <= 1:
            bad.append(k)
    for k in ("ckpt_every", "fisher_online_steps", "warmup_steps"):
        if getattr(cfg, k) is not None and getattr(cfg, k) < 0:
            bad.append(k)
    for k in ("seq_len", "vocab_size", "eval_every", "eval_tokens", "max_nonfinite"):
        if getattr(cfg, k) is not None and getattr(cfg, k) < 1:
            bad.append(k)
    if cfg.lr_mult is not None and not 0 < cfg.lr_mult < float("inf"):  # None: the preset's, always valid
        bad.append("lr_mult")
    return bad


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(train_configs())
def test_every_train_config_validates_or_names_the_bad_value(case):
    cfg, ws = case
    bad = train_problems(cfg, ws)
    try:
        validate(cfg, _env(ws))
    except (ValueError, TrainError) as e:
        assert bad, f"valid config refused: {e}"
        assert any(word in str(e) or word.replace("_", "-") in str(e) for word in bad), (str(e), bad)
    else:
        assert not bad, f"invalid config accepted: {bad}"


def test_lr_mult_defaults_to_the_presets_tuned_multiplier():
    """cpu-tiny's peak LRs run at x0.5 unless told (measured best, growth-study report); nanochat's
    at x1 (its own tuned LRs); an explicit --lr-mult wins."""
    assert TrainConfig(depth=2).resolved("lr_mult") == 0.5
    assert TrainConfig(depth=2, preset="nanochat").resolved("lr_mult") == 1.0
    assert TrainConfig(depth=2, lr_mult=2.0).resolved("lr_mult") == 2.0


def test_bad_choice_names_the_value_and_the_choices():
    check_choice("--ars", "seed", ARS_MODES)
    with pytest.raises(ValueError, match="--ars must be off, seed or detrended, got 'wild'"):
        check_choice("--ars", "wild", ARS_MODES)
    with pytest.raises(ValueError, match="--schedule must be nanochat or wsd, got 'cosine'"):
        check_choice("--schedule", "cosine", SCHEDULES)
