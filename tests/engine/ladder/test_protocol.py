"""The frozen protocol: written before any measured run, a changed setting refused by name with
nothing on disk changed, more measured seeds accepted (tuned values never depend on them)."""
import json

import pytest

from engine.ladder.protocol import PROTOCOL_FILE, differences, freeze, open_protocol, protocol_settings
from engine.ladder.study import StudyConfig

CORPUS = {"data": "builtin", "cache_key": "builtin-abc-v2048", "tokenizer_hash": "t", "tokens": {"train": 1}}


def _sc(tmp_path, **kw) -> StudyConfig:
    return StudyConfig(**{**dict(depths=[2, 3], recipes=["plain", "copy_continue_carry"], out=str(tmp_path),
                                 tune_seed=1000, seeds=[1001, 1002]), **kw})


def test_settings_hold_every_recipe_in_full_and_the_corpus(tmp_path):
    s = protocol_settings(_sc(tmp_path), CORPUS)
    assert s["recipes"]["copy_continue_carry"] == {"arm": "grow-only", "depth_init": "copy", "data_order": "continue",
                                                   "optimizer_state": "carry"}
    assert s["corpus"] == CORPUS and "out" not in s and "jobs" not in s  # where and how fast: not the protocol


def test_open_then_freeze_then_reopen(tmp_path):
    settings = protocol_settings(_sc(tmp_path), CORPUS)
    p = open_protocol(tmp_path, settings, "abc")
    assert p["status"] == "tuning" and json.loads((tmp_path / PROTOCOL_FILE).read_text())["status"] == "tuning"
    freeze(tmp_path, p, {"scratch_lr_mult": {2: 0.5}}, "abd")
    again = open_protocol(tmp_path, settings, "abe")
    assert again["status"] == "frozen" and again["tuned"]["scratch_lr_mult"] == {"2": 0.5}
    assert again["commits"] == {"started": "abc", "tuned": "abd", "measured": []}


@pytest.mark.parametrize("change, named", [
    (dict(ratio=8.0), "ratio: 2.0 on disk, 8.0 asked"),
    (dict(tune_seed=7), "tune_seed: 1000 on disk, 7 asked"),
    (dict(recipes=["plain", "copy"]), "recipes: "),
    (dict(seeds=[1002, 1001]), "seeds: [1001, 1002] on disk, [1002, 1001] asked"),
    (dict(train={"lam": 1}), "train: {} on disk"),
    (dict(inherit_budgets=[0.5, 1.0]), "inherit_budgets: [0.2, 0.35, 0.5, 0.7, 1.0] on disk, [0.5, 1.0] asked"),
])
def test_a_changed_setting_is_refused_by_name(tmp_path, change, named):
    open_protocol(tmp_path, protocol_settings(_sc(tmp_path), CORPUS), "abc")
    before = (tmp_path / PROTOCOL_FILE).read_text()
    with pytest.raises(ValueError, match="was frozen for another study") as e:
        open_protocol(tmp_path, protocol_settings(_sc(tmp_path, **change), CORPUS), "abc")
    assert named in str(e.value) and "new study directory" in str(e.value)
    assert (tmp_path / PROTOCOL_FILE).read_text() == before


def test_another_corpus_is_refused(tmp_path):
    open_protocol(tmp_path, protocol_settings(_sc(tmp_path), CORPUS), "abc")
    with pytest.raises(ValueError, match="corpus: "):
        open_protocol(tmp_path, protocol_settings(_sc(tmp_path), {**CORPUS, "cache_key": "builtin-xyz-v2048"}), "a")


def test_measured_seeds_may_grow(tmp_path):
    open_protocol(tmp_path, protocol_settings(_sc(tmp_path), CORPUS), "abc")
    p = open_protocol(tmp_path, protocol_settings(_sc(tmp_path, seeds=[1001, 1002, 1003]), CORPUS), "abc")
    assert p["settings"]["seeds"] == [1001, 1002, 1003]
    assert differences({"seeds": [1, 2]}, {"seeds": [1, 2, 3]}) == []
    assert differences({"seeds": [1, 2]}, {"seeds": [2]}) == ["seeds: [1, 2] on disk, [2] asked"]


@pytest.mark.parametrize("kw, message", [
    (dict(tune_seed=1001), "--tune-seed 1001 is also a measured seed"),
    (dict(recipes=["copy"]), "must include 'plain'"),
    (dict(recipes=["plain", "bogus"]), "unknown recipe 'bogus'"),
    (dict(seeds=[1, 1]), "--seeds must be distinct"),
    (dict(depths=[3]), "needs at least two depths"),
    (dict(bracket_points=2), "--bracket-points must be an odd integer >= 3"),
    (dict(jobs=0), "--jobs must be a positive integer"),
    (dict(inherit_budgets=[0.5, 2.0]), "--inherit-budgets must be increasing fractions in (0, 1]"),
])
def test_bad_study_settings_are_named_before_compute(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        _sc(tmp_path, **kw).validate()
    assert not any(tmp_path.iterdir())
