"""The command lines (launch/miniseries.py and the training flags it shares with launch/train.py)
take every setting from one source: each choice is the owning module's constant, each flag's
default is its dataclass field's, every shared training flag reaches the rungs; bad input is
refused with a clear message before anything trains; the output directory is locked. The whole
miniseries: tests/system/test_miniseries.py."""
import argparse
import os
import subprocess
import sys
from dataclasses import MISSING, fields

import pytest

from engine.inherit.ars import MODES as ARS_MODES
from engine.inherit.growth import DEPTH_INITS, PLACEMENTS, WIDTH_INITS
from engine.inherit.penalty import SCHEDULES as PENALTY_SCHEDULES, SUBSPACES
from engine.ladder.config import (DATA_ORDERS, FISHER_MODES, GROW_FROM, NEW_MOMENTS, OPTIMIZER_STATES, RUN_FIELDS,
                                  TRAIN_SETTINGS, LadderConfig, arm_dir_name)
from engine.ladder.run import RungPlan, _train_config
from engine.runtime.distributed import DEVICES
from engine.runtime.run_lock import LOCK_FILE, run_lock
from engine.train.config import TrainConfig
from engine.train.guard import HOST_SYNC_MODES
from engine.train.optim import ADAMW_IMPLS, OPTIMIZERS
from engine.train.schedule import SCHEDULES
from engine.ladder.recipes import MINISERIES_DEFAULTS, RECIPES
from launch import miniseries, train
from models.config import PRESETS
from tests.helpers import ROOT
from tests.helpers.runs import ENV, run_miniseries


@pytest.mark.parametrize("args,message", [
    (["--depths", "3:1"], "--depths '3:1': expected LO:HI"),
    (["--depths", "1,1"], "--depths must be strictly increasing, got [1, 1]"),
    (["--depths", "0:2"], "--depths must be positive, got [0, 1, 2]"),
    (["--depths", "2"], "inheriting arms need at least two depths"),
    (["--arms", "scratch,bogus"], "unknown arm(s) ['bogus']"),
    (["--inherit-budgets", "0.5,1.5"], "expected increasing fractions in (0, 1] like 0.25,0.5,1, got '0.5,1.5'"),
    (["--grow-from", "stable", "--schedule", "nanochat"], "--grow-from stable needs --schedule wsd"),
    (["--ratio", "0"], "expected a positive finite number, got '0'"),
    (["--fisher-batches", "0"], "expected a positive integer, got '0'"),
    (["--preset", "huge"], "invalid choice: 'huge'"),
    (["--global-batch", "3", "--device-batch", "2"], "global_batch=3 is not a multiple of device_batch"),
    (["--data", "text:/nonexistent/corpus.txt"], "/nonexistent/corpus.txt"),
    (["--seq-len", "10000000"], "seq_len"),
])
def test_bad_miniseries_input_is_refused_with_a_clear_message(tmp_path, args, message):
    out = tmp_path / "bad"
    p = run_miniseries(out, args, check=False, timeout=120)
    assert p.returncode != 0 and message in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    assert not list(out.glob("*/d*/ckpt/step_*")), "something was trained before the input was refused"


def test_miniseries_locks_its_output_directory(tmp_path):
    out = tmp_path / "series"
    with run_lock(out):
        p = subprocess.run([sys.executable, str(ROOT / "launch/miniseries.py"), "--out", str(out), "--no-progress"],
                           env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1].startswith(f"error: {out} is in use by PID {os.getpid()} on host ")
    assert sorted(x.name for x in out.iterdir()) == [LOCK_FILE]  # nothing written


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
                   "width_init": WIDTH_INITS, "optimizer_state": OPTIMIZER_STATES, "subspace": SUBSPACES,
                   "penalty_schedule": PENALTY_SCHEDULES, "ars": ARS_MODES, "fisher": FISHER_MODES,
                   "placement": PLACEMENTS, "new_moments": NEW_MOMENTS,
                   "recipe": sorted(RECIPES)}
    got = {k: a.choices for k, a in _actions(miniseries.build_parser()).items() if a.choices is not None}
    assert {k: list(v) for k, v in got.items()} == {k: list(v) for k, v in {**want, **want_ladder}.items()}


def test_flag_defaults_are_the_dataclass_defaults():
    for dest, a in _actions(_train_parser()).items():
        if (dest in {f.name for f in fields(TrainConfig)} and not a.required
                and dest not in ("steps", "tokens", "ratio")):
            assert a.default == _default(TrainConfig, dest), dest
    ns = miniseries.build_parser().parse_args([])
    for f in fields(LadderConfig):  # a recipe's field is "the recipe's" (None) until given
        skip = {"lam", "gamma", "inherit_lr_mult", "seed", "preset", "depths", "arms"} | set(MINISERIES_DEFAULTS)
        if f.name in vars(ns) and f.name not in skip:
            want = None if f.name in miniseries.RECIPE_FIELDS else _default(LadderConfig, f.name)
            assert getattr(ns, f.name) == want, f.name
    assert ns.lam is ns.gamma is ns.inherit_lr_mult is None  # strings when given: per rung as --lam
    assert ns.seed == _default(LadderConfig, "seed") == _default(TrainConfig, "seed")
    assert ns.preset == _default(LadderConfig, "preset") == _default(TrainConfig, "preset")


def test_default_miniseries_config_is_pinned():
    """The embedded default (`make miniseries`): what every one of its rungs is given."""
    p = miniseries.build_parser()
    (lc,) = miniseries.ladder_configs(p, p.parse_args([]))
    assert (lc.depths, lc.arms, lc.ratio, lc.scratch_budgets, lc.inherit_budgets, lc.out) == (
        [2, 3], ["scratch", "grow-only"], 2.0, [0.5, 0.75, 1.0], [0.2, 0.35, 0.5, 0.7, 1.0], "runs/miniseries")
    assert (lc.lam, lc.gamma, lc.lam_by_depth, lc.gamma_by_depth) == (1e5, 0.1, {}, {})
    # the measured best recipe (copying + continue + carried moments); LadderConfig's is exact growth, restart, fresh
    assert (lc.depth_init, lc.width_init, lc.data_order, lc.optimizer_state) == ("copy", "zero", "continue", "carry")
    assert arm_dir_name("grow-only", lc) == "grow-only+data_order=continue+optimizer_state=carry+depth_init=copy"
    assert lc.train == dict(data="builtin", device="auto", optimizer="adamw", adamw_impl="kernel", host_sync="auto",
                            max_nonfinite=5, weight_decay=0.0, warmdown_frac=0.65, ckpt_every=0,
                            progress=True, profile=True)
    assert list(lc.train) == ["data", "device", "optimizer", "adamw_impl", "host_sync", "max_nonfinite",
                              "weight_decay", "warmdown_frac", "ckpt_every", "progress", "profile"]


@pytest.mark.parametrize("argv, state", [([], "carry"), (["--optimizer", "muon"], "fresh"),
                                          (["--optimizer-state", "fresh"], "fresh"),
                                          (["--optimizer", "muon", "--optimizer-state", "fresh"], "fresh")])
def test_default_optimizer_state_follows_the_optimizer(argv, state):
    """The default carries Adam moments only where the optimizer keeps them (Muon does not, for the
    matrices); a given --optimizer-state wins."""
    p = miniseries.build_parser()
    (lc,) = miniseries.ladder_configs(p, p.parse_args(argv))
    assert lc.optimizer_state == state


def test_carry_with_muon_is_refused_by_name(capsys):
    p = miniseries.build_parser()
    with pytest.raises(SystemExit):
        miniseries.ladder_configs(p, p.parse_args(["--optimizer", "muon", "--optimizer-state", "carry"]))
    assert "--optimizer-state carry needs --optimizer adamw" in capsys.readouterr().err


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


@pytest.mark.parametrize("argv,message", [
    (["--seeds", "a,1"], "--seeds: expected a comma list of integer seeds like 0,1, got 'a,1'"),
    (["--depths", "2:4,1"], "--depths must be strictly increasing, got [2, 3, 4, 1]"),
    (["--fisher", "exact"], "invalid choice: 'exact'"),
    (["--lr-mult", "fast"], "--lr-mult 'fast': expected VALUE or VALUE,DEPTH=VALUE"),
    (["--lr-mult", "0"], "--lr-mult values must be finite numbers > 0, got {'every rung': 0.0}"),
    (["--lr-mult", "0.5,3=nan"], "--lr-mult values must be finite numbers > 0, got {'d3': nan}"),
    (["--lr-mult", "0.5,7=0.25"], "per-rung --lr-mult given for depth(s) [7], which are not rungs of [2, 3]"),
    (["--inherit-lr-mult", "x2"], "--inherit-lr-mult 'x2': expected VALUE or VALUE,DEPTH=VALUE"),
    (["--inherit-lr-mult", "1,3=-1"], "--inherit-lr-mult values must be finite numbers > 0, got {'d3': -1.0}"),
    (["--inherit-lr-mult", "1,2=2"], "per-rung --inherit-lr-mult given for depth(s) [2], which are not grown rungs"),
])
def test_bad_miniseries_flags_are_refused_by_name(argv, message, capsys):
    p = miniseries.build_parser()
    with pytest.raises(SystemExit):
        miniseries.ladder_configs(p, p.parse_args(argv))
    assert message in capsys.readouterr().err


def test_per_rung_lr_mult_reaches_each_rungs_scratch_and_grown_runs(tmp_path):
    """--lr-mult 0.5,4=0.25: d4's scratch runs at x0.25, its grown runs at x0.25 times the grown
    rung's multiplier, every other rung at x0.5 (the tuned LR falls with depth: growth study part 4)."""
    p = miniseries.build_parser()
    (lc,) = miniseries.ladder_configs(p, p.parse_args(["--depths", "2:4", "--lr-mult", "0.5,d4=0.25",
                                                          "--inherit-lr-mult", "2", "--out", str(tmp_path)]))
    assert (lc.train["lr_mult"], lc.lr_mult_by_depth) == (0.5, {4: 0.25})

    def lr(depth, rung_mult):
        plan = RungPlan(depth, tmp_path, 100, [1.0], 2, rung_mult, 0, "off", {})
        return _train_config(lc, plan, tmp_path / "run", 100).lr_mult

    assert (lr(3, 1.0), lr(4, 1.0), lr(3, lc.inherit_lr_mult), lr(4, lc.inherit_lr_mult)) == (0.5, 0.25, 1.0, 0.5)
    (hot,) = miniseries.ladder_configs(p, p.parse_args(["--depths", "2:4", "--lr-mult", "0.5,4=0.25",
                                                           "--inherit-lr-mult", "1,4=2", "--out", str(tmp_path)]))
    assert (hot.inherit_lr_mult, hot.inherit_lr_mult_by_depth) == (1.0, {4: 2.0})
    assert arm_dir_name("grow-only", hot).endswith("+inherit_lr_mult_d4=2")  # its own directory: recipes never mix
    assert (hot.inherit_lr_mult_at(3), hot.inherit_lr_mult_at(4)) == (1.0, 2.0)
    assert (lr(3, hot.inherit_lr_mult_at(3)), lr(4, hot.inherit_lr_mult_at(4))) == (0.5, 0.5)
    (plain,) = miniseries.ladder_configs(p, p.parse_args(["--out", str(tmp_path)]))
    assert "lr_mult" not in plain.train and plain.lr_mult_by_depth == {}  # no flag: the preset's own multiplier
