"""Configuration has one source of truth: each choice is the owning module's constant (the command
lines' `choices=`, TrainConfig's and LadderConfig's checks), each flag's default is its dataclass
field's, the miniseries passes every training setting it has a flag for and refuses an unknown one,
one preset table, one --depths grammar."""
import argparse
from dataclasses import MISSING, fields

import pytest

from engine.inherit.ars import MODES as ARS_MODES
from engine.inherit.growth import DEPTH_INITS, PLACEMENTS
from engine.inherit.penalty import SCHEDULES as PENALTY_SCHEDULES, SUBSPACES
from engine.ladder.config import (DATA_ORDERS, FISHER_MODES, GROW_FROM, OPTIMIZER_STATES, RUN_FIELDS, TRAIN_SETTINGS,
                                  LadderConfig)
from engine.runtime.distributed import DEVICES
from engine.train.config import TRAIN_PRESETS, TrainConfig, check_choice
from engine.train.guard import HOST_SYNC_MODES
from engine.train.optim import ADAMW_IMPLS, OPTIMIZERS
from engine.train.schedule import SCHEDULES
from launch import miniseries, train
from models.config import PRESETS, model_config, parse_depths


def _train_parser(rung=True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    train.add_training_args(p, rung=rung)
    return p


def _actions(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in p._actions if a.dest != "help"}


def _default(config, name):
    f = {f.name: f for f in fields(config)}[name]
    return f.default_factory() if f.default is MISSING else f.default


def test_every_choice_is_the_owners_constant():
    want = {"preset": sorted(PRESETS), "device": DEVICES, "optimizer": OPTIMIZERS, "adamw_impl": ADAMW_IMPLS,
            "host_sync": HOST_SYNC_MODES, "ars": ARS_MODES}
    got = {k: a.choices for k, a in _actions(_train_parser()).items() if a.choices is not None}
    assert {k: list(v) for k, v in got.items()} == {k: list(v) for k, v in want.items()}
    want_ladder = {"schedule": SCHEDULES, "grow_from": GROW_FROM, "data_order": DATA_ORDERS, "depth_init": DEPTH_INITS,
                   "optimizer_state": OPTIMIZER_STATES, "subspace": SUBSPACES, "penalty_schedule": PENALTY_SCHEDULES,
                   "ars": ARS_MODES, "fisher": FISHER_MODES, "placement": PLACEMENTS}
    got = {k: a.choices for k, a in _actions(miniseries.build_parser()).items() if a.choices is not None}
    assert {k: list(v) for k, v in got.items()} == {k: list(v) for k, v in {**want, **want_ladder}.items()}


def test_flag_defaults_are_the_dataclass_defaults():
    for dest, a in _actions(_train_parser()).items():
        if dest in {f.name for f in fields(TrainConfig)} and not a.required and dest not in ("steps", "tokens", "ratio"):
            assert a.default == _default(TrainConfig, dest), dest
    ns = miniseries.build_parser().parse_args([])
    embedded = set(miniseries.DEFAULTS)
    for f in fields(LadderConfig):
        if f.name in vars(ns) and f.name not in embedded | {"lam", "gamma", "seed", "preset"}:
            assert getattr(ns, f.name) == _default(LadderConfig, f.name), f.name
    assert ns.seed == _default(LadderConfig, "seed") == _default(TrainConfig, "seed")
    assert ns.preset == _default(LadderConfig, "preset") == _default(TrainConfig, "preset")


def test_default_miniseries_config_is_pinned():
    """The embedded default (`make miniseries`): what every one of its rungs is given."""
    p = miniseries.build_parser()
    (lc,) = miniseries.ladder_configs(p, p.parse_args([]))
    assert (lc.depths, lc.arms, lc.ratio, lc.scratch_budgets, lc.inherit_budgets, lc.out) == (
        [2, 3], ["scratch", "grow-only"], 2.0, [0.5, 0.75, 1.0], [0.2, 0.35, 0.5, 0.7, 1.0], "runs/miniseries")
    assert (lc.lam, lc.gamma, lc.lam_by_depth, lc.gamma_by_depth) == (1e5, 0.1, {}, {})
    assert lc.train == dict(data="builtin", device="auto", optimizer="adamw", adamw_impl="kernel", host_sync="auto",
                            max_nonfinite=5, lr_mult=1.0, weight_decay=0.0, warmdown_frac=0.65, ckpt_every=0,
                            progress=True, profile=True)
    assert list(lc.train) == ["data", "device", "optimizer", "adamw_impl", "host_sync", "max_nonfinite", "lr_mult",
                              "weight_decay", "warmdown_frac", "ckpt_every", "progress", "profile"]


def test_every_shared_training_flag_reaches_the_rungs():
    """No flag of add_training_args(rung=False) is dropped: each is a LadderConfig field or a
    training setting the miniseries passes to every rung."""
    ladder_fields = {f.name for f in fields(LadderConfig)}
    for dest in _actions(_train_parser(rung=False)):
        assert dest in TRAIN_SETTINGS or dest in ladder_fields, dest
    assert set(TRAIN_SETTINGS) | set(RUN_FIELDS) == {f.name for f in fields(TrainConfig)}
    assert not set(TRAIN_SETTINGS) & set(RUN_FIELDS)
    p = miniseries.build_parser()
    (lc,) = miniseries.ladder_configs(p, p.parse_args(["--seq-len", "64", "--weight-decay", "0.1", "--no-progress"]))
    assert (lc.train["seq_len"], lc.train["weight_decay"], lc.train["progress"]) == (64, 0.1, False)


def test_unknown_training_setting_is_refused_by_name():
    lc = LadderConfig(depths=[1, 2], arms=["scratch"], out="x", train={"seq_len": 64, "warmup": 3})
    with pytest.raises(ValueError, match=r"unknown training setting\(s\) \['warmup'\].*accepted: \[.*'seq_len'"):
        lc.validate()
    lc.train = {"steps": 3}  # the ladder sets the budget of each run itself
    with pytest.raises(ValueError, match=r"\['steps'\].*the ladder sets .*'steps'"):
        lc.validate()


def test_one_preset_table():
    for name, preset in PRESETS.items():
        assert TRAIN_PRESETS[name] is preset["train"]
        assert set(preset["train"]) <= {f.name for f in fields(TrainConfig) if f.default is None}
        c = model_config(name, 2)
        assert {k: getattr(c, k) for k in preset if k != "train"} == {k: v for k, v in preset.items() if k != "train"}


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


def test_bad_choice_names_the_value_and_the_choices():
    check_choice("--ars", "seed", ARS_MODES)
    with pytest.raises(ValueError, match="--ars must be off, seed or detrended, got 'wild'"):
        check_choice("--ars", "wild", ARS_MODES)
    with pytest.raises(ValueError, match="--schedule must be nanochat or wsd, got 'cosine'"):
        check_choice("--schedule", "cosine", SCHEDULES)


@pytest.mark.parametrize("argv,message", [
    (["--seeds", "a,1"], "--seeds: expected a comma list of integer seeds like 0,1, got 'a,1'"),
    (["--depths", "2:4,1"], "--depths must be strictly increasing, got [2, 3, 4, 1]"),
    (["--fisher", "exact"], "invalid choice: 'exact'"),
])
def test_bad_miniseries_flags_are_refused_by_name(argv, message, capsys):
    p = miniseries.build_parser()
    with pytest.raises(SystemExit):
        miniseries.ladder_configs(p, p.parse_args(argv))
    assert message in capsys.readouterr().err
