"""launch/study.py's --replicate: a committed protocol's settings become the defaults, round-trip
exactly through the command line, and any flag given overrides them (tiny; nothing trains here; the
whole replicated study runs in tests/system/test_study.py)."""
import json

import pytest

from engine.ladder.protocol import PROTOCOL_FILE, freeze, open_protocol, protocol_settings
from launch.study import interim_report, parse, status_lines, study_config
from tests.helpers import ROOT

CORPUS = {"data": "packages", "cache_key": "packages-abc-v2048", "tokenizer_hash": "t", "tokens": {"train": 1}}
ASKED = ["--depths", "2:4", "--ratio", "8", "--data", "packages", "--recipes", "plain,copy_continue_carry",
         "--tune-seed", "2000", "--seeds", "2101,2102", "--scratch-budgets", "0.25,0.5,1", "--inherit-budgets",
         "0.1,0.5,1", "--bracket-points", "5", "--max-extend", "2", "--refine", "--accept-edge", "--eval-tokens",
         "131072", "--ckpt-every", "200", "--no-progress", "--no-compile", "--lr-mult", "0.5", "--weight-decay", "0.01"]


def _settings(argv, out):
    p, ns, _ = parse([*argv, "--out", str(out)])
    return protocol_settings(study_config(p, ns), CORPUS)


def _written(tmp_path, frozen=True) -> str:
    (tmp_path / "src").mkdir()
    p = open_protocol(tmp_path / "src", _settings(ASKED, tmp_path / "src"), "abc")
    if frozen:
        freeze(tmp_path / "src", p, {"scratch_lr_mult": {"2": 1, "3": 1, "4": 0.5}, "tried": [], "edges": [],
                                     "inherit_lr_mult": {"plain": {"3": 1, "4": 1},
                                                         "copy_continue_carry": {"3": 1, "4": 2}}}, "abd")
    return str(tmp_path / "src" / PROTOCOL_FILE)


def test_a_replicated_protocol_round_trips_through_the_flags(tmp_path):
    path = _written(tmp_path)
    assert _settings(["--replicate", path], tmp_path / "rep") == json.loads(open(path).read())["settings"]


@pytest.mark.parametrize("path", sorted(ROOT.glob("docs/results/*/protocol*.json")), ids=lambda p: p.parent.name)
def test_every_committed_protocol_can_be_replicated_as_it_is(tmp_path, path):
    settings = json.loads(path.read_text())["settings"]
    p, ns, _ = parse(["--replicate", str(path), "--out", str(tmp_path)])
    assert protocol_settings(study_config(p, ns), settings["corpus"]) == settings


def test_flags_given_override_the_source(tmp_path):
    path = _written(tmp_path)
    s = _settings(["--replicate", path, "--seeds", "7,8,9", "--data", "builtin", "--tune-seed", "6"], tmp_path / "rep")
    assert (s["seeds"], s["tune_seed"], s["train"]["data"], s["ratio"]) == ([7, 8, 9], 6, "builtin", 8.0)


def test_reuse_tuned_carries_the_source_values_and_its_tuning_seed(tmp_path):
    path = _written(tmp_path)
    p, ns, source = parse(["--replicate", path, "--reuse-tuned", "--seeds", "7", "--out", str(tmp_path / "rep")])
    sc = study_config(p, ns)
    assert sc.tuned_from["file"] == path and sc.tune_seed == 2000 and source["status"] == "frozen"
    assert sc.reused_tuned()["inherit_lr_mult"]["copy_continue_carry"] == {"3": 1, "4": 2}


@pytest.mark.parametrize("argv, message", [
    (["--reuse-tuned"], "--reuse-tuned takes the tuned values of the protocol given by --replicate"),
    (["--replicate", "{tmp}/none.json"], "cannot read it"),
    (["--replicate", "{src}", "--reuse-tuned", "--tune-seed", "5"], "tuned on seed 2000, not --tune-seed 5"),
    (["--replicate", "{src}", "--reuse-tuned", "--depths", "2:5"], "no tuned value for scratch d5"),
    (["--lr-mult", "0.5,4=0.25"], "--lr-mult is the scratch brackets' centre in a study, one multiplier"),
])
def test_bad_replication_input_is_one_sentence(tmp_path, capsys, argv, message):
    src = _written(tmp_path)
    argv = [a.format(tmp=tmp_path, src=src) for a in argv]
    with pytest.raises(SystemExit) as e:
        p, ns, _ = parse([*argv, "--seeds", "7", "--out", str(tmp_path / "rep")])
        study_config(p, ns)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_tuned_values_of_an_unfinished_protocol_are_refused(tmp_path, capsys):
    path = _written(tmp_path, frozen=False)
    with pytest.raises(SystemExit):
        parse(["--replicate", path, "--reuse-tuned", "--seeds", "7"])
    assert "no final tuned values (status 'tuning')" in capsys.readouterr().err


@pytest.mark.parametrize("frozen, message", [
    (None, "holds no study (no protocol.json)"),
    (False, "is still tuning: its protocol is not frozen"),
    (True, "no measured seed of {src} has finished yet (seed 2101 is at {src}/seed2101/scratch"),
])
def test_an_interim_report_needs_a_frozen_study_with_a_finished_seed(tmp_path, frozen, message):
    src = tmp_path / "src"
    if frozen is None:
        src.mkdir()
    else:
        _written(tmp_path, frozen)
    with pytest.raises(ValueError) as e:
        interim_report(str(src))
    assert message.format(src=src) in str(e.value)
    assert not (src / "seed2101").exists() and not (src / "interim").exists()  # read, nothing written


@pytest.mark.parametrize("frozen", [False, True])
def test_status_names_finished_seeds_only_once_some_finished(tmp_path, frozen):
    _written(tmp_path, frozen)
    lines = status_lines(str(tmp_path / "src"))
    assert lines[0].startswith(f"study {tmp_path / 'src'}: {'frozen' if frozen else 'tuning'}")
    assert not any("measured seeds finished" in line for line in lines)
    assert not (tmp_path / "src" / "seed2101").exists()
