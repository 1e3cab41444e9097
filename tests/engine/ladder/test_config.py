"""Ladder configuration (engine/ladder/config.py): every configuration validates or names the bad
value (hypothesis, against an independent oracle); an unknown training setting is refused by name."""
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.inherit.growth import PLACEMENTS
from engine.ladder.config import ARMS, LadderConfig, arm_dir_name, parse_per_rung
from launch import miniseries
from tests.helpers.runs import PLAIN
from tests.helpers.strategies import budget_lists, edge_floats


@st.composite
def ladder_configs(draw):
    subspace = draw(st.sampled_from(["coords", "svd", "pca"]))
    return LadderConfig(
        depths=draw(st.lists(st.integers(-1, 8), max_size=5)),
        arms=draw(st.lists(st.sampled_from(list(ARMS) + ["bogus"]), max_size=4)),
        out="unused",
        ratio=draw(st.one_of(st.floats(-1, 2e4), st.sampled_from([0.0, float("nan"), float("inf")]))),
        scratch_budgets=draw(budget_lists),
        inherit_budgets=draw(budget_lists),
        schedule=draw(st.sampled_from(["wsd", "nanochat", "cosine"])),
        cooldown_frac=draw(edge_floats),
        inherit_lr_mult=draw(edge_floats),
        grow_from=draw(st.sampled_from(["cooled", "stable", "annealed"])),
        data_order=draw(st.sampled_from(["restart", "continue", "shuffle"])),
        optimizer_state=draw(st.sampled_from(["fresh", "carry", "reset"])),
        depth_init=draw(st.sampled_from(["identity", "copy", "zero"])),
        width_init=draw(st.sampled_from(["zero", "split", "copy"])),
        lam=draw(st.one_of(st.floats(-1, 1e6), st.sampled_from([float("nan"), float("inf"), "ewc", "bogus"]))),
        gamma=draw(edge_floats),
        subspace=subspace,
        svd_rank=draw(st.one_of(st.none(), st.integers(-1, 8))),
        svd_energy=draw(st.one_of(st.none(), edge_floats)),
        penalty_schedule=draw(st.sampled_from(["constant", "linear", "cosine"])),
        penalty_decay_frac=draw(edge_floats),
        penalty_form=draw(st.sampled_from(["coupled", "decoupled", "fused"])),
        ars=draw(st.sampled_from(["seed", "detrended", "off", "on"])),
        fisher=draw(st.sampled_from(["online", "posthoc", "exact"])),
        fisher_batches=draw(st.integers(-1, 4)),
        placement=draw(st.sampled_from(list(PLACEMENTS) + ["top"])),
        inherit_warmup_frac=draw(edge_floats),
        distill=draw(edge_floats),
        distill_frac=draw(st.one_of(edge_floats, st.just(0.5))),
    )


def ladder_problems(lc: LadderConfig) -> list[str]:
    bad = []
    if not lc.depths:
        bad.append("--depths")
    elif any(d < 1 for d in lc.depths) or any(b <= a for a, b in zip(lc.depths, lc.depths[1:])):
        bad.append(str(lc.depths))
    unknown = [a for a in lc.arms if a not in ARMS]
    if unknown or not lc.arms or len(set(lc.arms)) != len(lc.arms):
        bad.append(str(unknown or lc.arms))
    for name, b in (("--scratch-budgets", lc.scratch_budgets), ("--inherit-budgets", lc.inherit_budgets)):
        if not b or any(not 0 < f <= 1 for f in b) or sorted(set(b)) != list(b):
            bad.append(name)
    if lc.schedule not in ("wsd", "nanochat"):
        bad.append(repr(lc.schedule))
    if not 0 < lc.cooldown_frac < 1:
        bad.append("--cooldown-frac")
    if not 0 < lc.inherit_lr_mult < math.inf:
        bad.append("--inherit-lr-mult")
    if lc.grow_from not in ("cooled", "stable"):
        bad.append(repr(lc.grow_from))
    if lc.data_order not in ("restart", "continue"):
        bad.append(repr(lc.data_order))
    if lc.depth_init not in ("identity", "copy"):
        bad.append(repr(lc.depth_init))
    if lc.width_init not in ("zero", "split"):
        bad.append(repr(lc.width_init))
    if lc.optimizer_state not in ("fresh", "carry"):
        bad.append(repr(lc.optimizer_state))
    if lc.grow_from == "stable" and lc.schedule == "nanochat":
        bad.append("--grow-from stable")
    lam_on = lc.lam == "ewc" or (not isinstance(lc.lam, str) and lc.lam > 0)
    if lc.grow_from == "stable" and lc.fisher == "online" and lam_on and any(ARMS.get(a, (0, 0))[1] for a in lc.arms):
        bad.append("--grow-from stable")  # a stable run accumulates no online Fisher for the penalty
    if not 0 < lc.ratio <= 1e4:
        bad.append("--ratio")
    lam_ok = lc.lam == "ewc" or (not isinstance(lc.lam, str) and 0 <= lc.lam < math.inf)
    if not (lam_ok and 0 <= lc.gamma < math.inf):
        bad.append("--lam")
    if lc.subspace not in ("coords", "svd"):
        bad.append(repr(lc.subspace))
    if lc.subspace == "svd" and lc.svd_rank is None and lc.svd_energy is None:
        bad.append("--svd-rank")
    if lc.svd_rank is not None and lc.svd_rank < 1:
        bad.append("--svd-rank")
    if lc.svd_energy is not None and not 0 < lc.svd_energy <= 1:
        bad.append("--svd-energy")
    if lc.penalty_schedule not in ("constant", "linear"):
        bad.append(repr(lc.penalty_schedule))
    if not 0 <= lc.penalty_decay_frac <= 1:
        bad.append("--penalty-decay-frac")
    if lc.penalty_form not in ("coupled", "decoupled"):
        bad.append(repr(lc.penalty_form))
    if lc.penalty_form == "decoupled" and lc.subspace != "coords":
        bad.append("--penalty-form decoupled")
    if lc.ars not in ("seed", "detrended", "off"):
        bad.append(repr(lc.ars))
    if lc.fisher not in ("online", "posthoc"):
        bad.append(repr(lc.fisher))
    if not 0 <= lc.inherit_warmup_frac < 1:
        bad.append("--inherit-warmup-frac")
    if lc.fisher_batches < 1:
        bad.append("--fisher-batches")
    if lc.placement not in PLACEMENTS:
        bad.append(repr(lc.placement))
    if not 0 <= lc.distill <= 1:
        bad.append("--distill")
    if not 0 < lc.distill_frac <= 1 or (lc.distill == 0 and lc.distill_frac != 0.5):
        bad.append("--distill-frac")
    if lc.depths and len(lc.depths) < 2 and any(ARMS.get(a, (False,))[0] for a in lc.arms):
        bad.append("at least two depths")
    return bad


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ladder_configs())
def test_every_ladder_config_validates_or_names_the_bad_value(lc):
    bad = ladder_problems(lc)
    try:
        lc.validate()
    except ValueError as e:
        assert bad, f"valid config refused: {e}"
        assert any(word in str(e) for word in bad), (str(e), bad)
    else:
        assert not bad, f"invalid config accepted: {bad}"


def test_unknown_training_setting_is_refused_by_name():
    lc = LadderConfig(depths=[1, 2], arms=["scratch"], out="x", train={"seq_len": 64, "warmup": 3})
    with pytest.raises(ValueError, match=r"unknown training setting\(s\) \['warmup'\].*accepted: \[.*'seq_len'"):
        lc.validate()
    lc.train = {"steps": 3}  # the ladder sets the budget of each run itself
    with pytest.raises(ValueError, match=r"\['steps'\].*the ladder sets .*'steps'"):
        lc.validate()


def test_stable_parent_with_an_online_fisher_penalty_is_refused():
    """A stable-phase checkpoint has no online Fisher beside it: a penalty arm growing from it would
    fail at growth; it is refused before compute, and the same recipe without a penalty is accepted."""
    lc = LadderConfig(depths=[1, 2], arms=["scratch", "inherit"], out="x", grow_from="stable", fisher="online")
    with pytest.raises(ValueError, match=r"--grow-from stable with --fisher online.*--fisher posthoc"):
        lc.validate()
    LadderConfig(depths=[1, 2], arms=["scratch", "inherit"], out="x", grow_from="stable", fisher="posthoc").validate()
    LadderConfig(depths=[1, 2], arms=["scratch", "grow-only"], out="x", grow_from="stable", fisher="online").validate()


def test_lam_ewc_and_its_bad_values_are_named():
    """--lam takes a number or "ewc" (per rung too); any other word is refused naming it."""
    LadderConfig(depths=[1, 2, 3], arms=["scratch", "inherit"], out="x", lam="ewc", lam_by_depth={3: 2e4}).validate()
    LadderConfig(depths=[1, 2, 3], arms=["scratch", "inherit"], out="x", lam=1e5, lam_by_depth={3: "ewc"}).validate()
    with pytest.raises(ValueError, match=r"--lam must be a finite number >= 0 or 'ewc', got 'ewx'"):
        LadderConfig(depths=[1, 2], arms=["inherit"], out="x", lam="ewx").validate()
    with pytest.raises(ValueError, match=r"per-rung .* got \{'lam d2': 'bogus'\}"):
        LadderConfig(depths=[1, 2], arms=["inherit"], out="x", lam_by_depth={2: "bogus"}).validate()
    with pytest.raises(ValueError, match=r"per-rung .* got \{'gamma d2': 'ewc'\}"):
        LadderConfig(depths=[1, 2], arms=["inherit"], out="x", gamma_by_depth={2: "ewc"}).validate()
    assert parse_per_rung("ewc,3=2e4", "lam", words=("ewc",)) == ("ewc", {3: 2e4})
    assert parse_per_rung("1e5,d3=ewc", "lam", words=("ewc",)) == (1e5, {3: "ewc"})
    with pytest.raises(ValueError, match=r"--gamma 'ewc'"):
        parse_per_rung("ewc", "gamma")


def test_penalty_decay_frac_bad_values_are_named():
    for bad in (-0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match=rf"--penalty-decay-frac must be in \[0, 1\], got {bad}"):
            LadderConfig(depths=[1, 2], arms=["inherit"], out="x", penalty_decay_frac=bad).validate()


def test_penalty_form_bad_values_are_named():
    with pytest.raises(ValueError, match=r"--penalty-form must be coupled or decoupled, got 'fused'"):
        LadderConfig(depths=[1, 2], arms=["inherit"], out="x", penalty_form="fused").validate()
    with pytest.raises(ValueError, match=r"--penalty-form decoupled needs --subspace coords, got 'svd'"):
        LadderConfig(depths=[1, 2], arms=["inherit"], out="x", penalty_form="decoupled", subspace="svd",
                     svd_rank=2).validate()
    LadderConfig(depths=[1, 2], arms=["inherit"], out="x", penalty_form="decoupled", lam=1.0, gamma=0.0).validate()


@pytest.mark.parametrize("lam, lam_by_depth, named", [(1e5, {}, "{'--lam': 100000.0}"),
                                                      (1.0, {2: 2e4}, "'--lam d2': 20000.0"),
                                                      ("ewc", {}, "'--lam': 'ewc'")])
def test_decoupled_penalty_refuses_a_coupled_scale_lambda(lam, lam_by_depth, named):
    """The decoupled pull is lambda per unit of LR: the coupled default 1e5 there would pin the inherited
    weights at the anchor, so it is refused with the scale that fits (before: silently kept)."""
    with pytest.raises(ValueError, match=r"--penalty-form decoupled takes lambda as a pull per unit of learning rate.*"
                                         r"e\.g\. --lam 1") as e:
        LadderConfig(depths=[1, 2], arms=["inherit"], out="x", penalty_form="decoupled", lam=lam,
                     lam_by_depth=lam_by_depth).validate()
    assert named in str(e.value)


def test_width_init_flag_names_the_arm_and_bad_values():
    """--width-init split reaches LadderConfig and names the grown arm's directory (the default does
    not; the launcher's depth copying does); a bad value is refused naming it and the allowed ones,
    before any compute."""
    p = miniseries.build_parser()
    (lc,) = miniseries.ladder_configs(p, p.parse_args(["--width-init", "split", *PLAIN]))
    assert lc.width_init == "split" and arm_dir_name("grow-only", lc) == "grow-only+width_init=split"
    (lc,) = miniseries.ladder_configs(p, p.parse_args(PLAIN))
    assert lc.width_init == "zero" and arm_dir_name("grow-only", lc) == "grow-only"
    (lc,) = miniseries.ladder_configs(p, p.parse_args(["--width-init", "split"]))
    assert (arm_dir_name("grow-only", lc)
            == "grow-only+data_order=continue+optimizer_state=carry+depth_init=copy+width_init=split")
    with pytest.raises(ValueError, match=r"--width-init must be zero or split, got 'copy'"):
        LadderConfig(depths=[1, 2], arms=["grow-only"], out="x", width_init="copy").validate()


def test_distill_flags_name_the_arm_and_bad_values():
    """--distill W (and --distill-frac F) reach LadderConfig and name the grown arm's directory; a
    weight outside [0, 1], or a schedule without a weight, is refused by name before any compute."""
    p = miniseries.build_parser()
    (lc,) = miniseries.ladder_configs(p, p.parse_args([*PLAIN, "--distill", "0.5",
                                                       "--distill-frac", "0.25"]))
    assert (lc.distill, lc.distill_frac) == (0.5, 0.25)
    assert arm_dir_name("grow-only", lc) == "grow-only+distill=0.5+distill_frac=0.25"
    with pytest.raises(ValueError, match=r"--distill must be a weight in \[0, 1\], got 1.5"):
        LadderConfig(depths=[1, 2], arms=["grow-only"], out="x", distill=1.5).validate()
    with pytest.raises(ValueError, match=r"--distill-frac 0.25 without --distill"):
        LadderConfig(depths=[1, 2], arms=["grow-only"], out="x", distill_frac=0.25).validate()
