"""A run's identity is every setting that changes its numbers (issue: a rerun with another lambda into
the same OUT reused the old runs and labelled them with the new lambda). Each setting a rung uses
either names its own directory or is refused, by name, against the rung's recorded identity."""
import json
from pathlib import Path

import pytest
import torch

from engine.ladder.config import ARMS, GROWTH_FIELDS, PENALTY_FIELDS, LadderConfig, arm_dir_name, rung_identity
from engine.ladder.recipes import RECIPES, recipe
from engine.ladder.run import IDENTITY_FILE, check_identity, rung_dir
from engine.runtime.distributed import DistEnv

# one non-default value per setting a grown rung can use
CHANGED = dict(inherit_lr_mult=2.0, grow_from="stable", data_order="continue", inherit_warmup_frac=0.1,
               optimizer_state="carry", depth_init="copy", width_init="split", placement="middle", distill=0.5,
               distill_frac=0.25, lam=2e4, gamma=0.2, subspace="svd", svd_rank=4, svd_energy=0.9,
               penalty_schedule="linear", penalty_form="decoupled", penalty_decay_frac=0.5, fisher="posthoc",
               fisher_batches=7, ars="detrended", new_moments="own-step", ramp_frac=0.05)
ENV = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), backend=None)


def _lc(**kw) -> LadderConfig:
    return LadderConfig(depths=[2, 3, 4], arms=["scratch", "inherit"], out="x", **kw)


def test_every_setting_is_listed_once():
    assert set(CHANGED) == set(GROWTH_FIELDS) | set(PENALTY_FIELDS) | {"ars"}
    assert not set(GROWTH_FIELDS) & set(PENALTY_FIELDS)


@pytest.mark.parametrize("name", sorted(CHANGED))
def test_each_setting_names_its_own_directory(name):
    """The full-method arm (growth, penalty, ARS) uses every setting: each changes its directory's name."""
    base, other = _lc(), _lc(**{name: CHANGED[name]})
    assert arm_dir_name("inherit", other, 3) != arm_dir_name("inherit", base, 3)
    assert f"+{name}=" in arm_dir_name("inherit", other, 3)
    assert rung_identity("inherit", other, 3)[name] == CHANGED[name]


@pytest.mark.parametrize("name", sorted(PENALTY_FIELDS))
def test_an_arm_without_the_penalty_is_not_split_by_penalty_settings(name):
    """grow-only does not use lambda, gamma, the subspace or the Fisher: its runs are shared across them."""
    assert arm_dir_name("grow-only", _lc(**{name: CHANGED[name]}), 3) == "grow-only"
    assert arm_dir_name("scratch", _lc(**{name: CHANGED[name]}), 3) == "scratch"


def test_per_rung_values_name_the_rung_and_every_rung_above_it():
    """A rung's per-rung LR and lambda belong to it and, through the parent it grew from, to every rung
    above; a scratch rung depends on its own LR only."""
    lc = _lc(lr_mult_by_depth={3: 0.25}, inherit_lr_mult_by_depth={4: 2.0}, lam_by_depth={3: 0.0})
    assert arm_dir_name("scratch", lc, 2) == "scratch"
    assert arm_dir_name("scratch", lc, 3) == "scratch+lr_mult_d3=0.25"
    assert arm_dir_name("inherit", lc, 3) == "inherit+lr_mult_d3=0.25+lam_d3=0"
    assert arm_dir_name("inherit", lc, 4) == "inherit+lr_mult_d3=0.25+inherit_lr_mult_d4=2+lam_d3=0"
    assert rung_dir(Path("o"), "inherit", 2, lc).as_posix() == "o/scratch/d2"


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_each_named_recipe_has_its_own_directory(name):
    """Two recipes never share a grown rung's directory (plain growth is the grow-only arm itself)."""
    r = recipe(name)
    lc = LadderConfig(depths=[2, 3], arms=["scratch", r.arm], out="x", **r.fields_for("adamw"))
    others = {n: recipe(n) for n in RECIPES if n != name}
    mine = arm_dir_name(r.arm, lc, 3)
    for o in others.values():
        olc = LadderConfig(depths=[2, 3], arms=["scratch", o.arm], out="x", **o.fields_for("adamw"))
        assert arm_dir_name(o.arm, olc, 3) != mine
    assert ARMS[r.arm][0]


def test_a_changed_identity_is_refused_by_name(tmp_path):
    """What the directory name cannot show (a directory made by hand, renamed, or by older code) is
    caught by the rung's identity.json: each differing setting named, nothing overwritten."""
    check_identity(tmp_path, rung_identity("inherit", _lc(), 3), ENV)
    recorded = (tmp_path / IDENTITY_FILE).read_text()
    check_identity(tmp_path, rung_identity("inherit", _lc(), 3), ENV)  # same: accepted
    with pytest.raises(ValueError, match=r"holds runs of a different setting \(gamma: 0.1 there, 0.2 asked, "
                                         r"lam: 100000.0 there, 20000.0 asked\)"):
        check_identity(tmp_path, rung_identity("inherit", _lc(lam=2e4, gamma=0.2), 3), ENV)
    assert (tmp_path / IDENTITY_FILE).read_text() == recorded


def test_a_setting_added_since_reads_as_its_default(tmp_path):
    ident = rung_identity("grow-only", _lc(), 3)
    (tmp_path / IDENTITY_FILE).write_text(json.dumps({k: v for k, v in ident.items() if k != "placement"}))
    check_identity(tmp_path, ident, ENV)
    with pytest.raises(ValueError, match=r"placement: 'end' there, 'middle' asked"):
        check_identity(tmp_path, rung_identity("grow-only", _lc(placement="middle"), 3), ENV)
