"""The frozen protocol: written before any measured run, a changed setting refused by name with
nothing on disk changed, more measured seeds accepted (tuned values never depend on them); a committed
protocol replicated (its recipes checked, its tuned values reused only when frozen and complete, what
changed recorded)."""
import json

import pytest

from engine.ladder.protocol import (PROTOCOL_FILE, changed_settings, differences, freeze, note_replicates,
                                    open_protocol, protocol_settings, read_source, tuned_from)
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


# ---------------------------------------------------------------- replication ----------------------

def _source(tmp_path, status="frozen", **kw) -> tuple[dict, str]:
    """A written protocol.json (a study of d2..d3, frozen with tuned values unless `status` says not)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    p = open_protocol(tmp_path, protocol_settings(_sc(tmp_path, **kw), CORPUS), "abc")
    if status == "frozen":
        p = freeze(tmp_path, p, {"scratch_lr_mult": {2: 0.5, 3: 1.0}, "tried": [],
                                 "inherit_lr_mult": {"plain": {3: 1.0}, "copy_continue_carry": {3: 2.0}}}, "abd")
    return p, str(tmp_path / PROTOCOL_FILE)


def test_a_source_is_read_and_its_recipes_must_mean_the_same_here(tmp_path):
    p, path = _source(tmp_path)
    assert read_source(path)["settings"] == p["settings"]
    changed = json.loads((tmp_path / PROTOCOL_FILE).read_text())
    changed["settings"]["recipes"]["copy_continue_carry"]["data_order"] = "fresh"
    (tmp_path / PROTOCOL_FILE).write_text(json.dumps(changed))
    with pytest.raises(ValueError, match="recipe 'copy_continue_carry' there is .*\"fresh\".*in this code"):
        read_source(path)


@pytest.mark.parametrize("text, message", [
    (None, "cannot read it"), ("{", "not JSON"), ("[1]", "expected a study's protocol.json"),
    ('{"settings": {"recipes": {"bogus": {}}}}', "unknown recipe 'bogus'"),
])
def test_a_bad_source_is_named(tmp_path, text, message):
    path = tmp_path / "p.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ValueError, match=f"--replicate {path}: .*{message}"):
        read_source(str(path))


def test_reused_tuned_values_need_a_frozen_source_and_say_where_they_were_tuned(tmp_path):
    p, path = _source(tmp_path)
    src = tuned_from(p, path)
    assert src["tune_seed"] == 1000 and src["corpus"] == CORPUS["cache_key"] and src["file"] == path
    assert src["tuned"]["inherit_lr_mult"]["copy_continue_carry"] == {"3": 2.0}
    tuning, tpath = _source(tmp_path / "t", status="tuning")
    with pytest.raises(ValueError, match="no final tuned values \\(status 'tuning'\\)"):
        tuned_from(tuning, tpath)


def test_a_study_reusing_them_checks_seed_depths_and_recipes(tmp_path):
    p, path = _source(tmp_path)
    src = tuned_from(p, path)
    sc = _sc(tmp_path / "new", seeds=[7], tuned_from=src)
    sc.validate()
    assert sc.reused_tuned()["scratch_lr_mult"] == {"2": 0.5, "3": 1.0}
    assert _sc(tmp_path / "new", seeds=[7], depths=[2], tuned_from=src).depths == [2]
    with pytest.raises(ValueError, match="tuned on seed 1000, not --tune-seed 5"):
        _sc(tmp_path / "new", seeds=[7], tune_seed=5, tuned_from=src).validate()
    with pytest.raises(ValueError, match="no tuned value for scratch d4, plain d4, copy_continue_carry d4"):
        _sc(tmp_path / "new", seeds=[7], depths=[2, 3, 4], tuned_from=src).validate()
    # a study of fewer depths reuses only theirs
    small = {**src, "tuned": {**src["tuned"], "scratch_lr_mult": {"1": 2.0, **src["tuned"]["scratch_lr_mult"]}}}
    assert "1" not in _sc(tmp_path / "new", seeds=[7], tuned_from=small).reused_tuned()["scratch_lr_mult"]


def test_a_replication_records_what_it_changed(tmp_path):
    p, path = _source(tmp_path)
    (tmp_path / "new").mkdir()
    new = open_protocol(tmp_path / "new", protocol_settings(
        _sc(tmp_path / "new", seeds=[7, 8], ratio=8.0, train={"data": "packages"}),
        {**CORPUS, "cache_key": "packages-x"}), "abe")
    noted = note_replicates(tmp_path / "new", new, p, path)
    assert noted["replicates"]["changed"] == ["corpus.cache_key", "ratio", "seeds", "train.data"]
    assert json.loads((tmp_path / "new" / PROTOCOL_FILE).read_text())["replicates"]["file"] == path
    assert changed_settings({"tuned_from": None, "a": 1}, {"tuned_from": {"x": 1}, "a": 1}) == []
