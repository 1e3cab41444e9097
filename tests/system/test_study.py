"""launch/study.py as a user runs it, tiny (d1 -> d2, 64-token context): bad input refused in one
sentence before anything trains; a whole study tunes, freezes its protocol before measuring, reports
the answer table first, skips everything on a rerun, writes an interim report of the seeds finished,
and refuses a changed setting by name."""
import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT
from tests.helpers.runs import ENV

TINY = ["--depths", "1:2", "--ratio", "0.05", "--preset", "cpu-tiny", "--seq-len", "64", "--global-batch", "4",
        "--eval-tokens", "1024", "--no-progress", "--no-profile", "--scratch-budgets", "0.5,1",
        "--inherit-budgets", "0.5,1", "--tune-seed", "100", "--seeds", "1,2", "--max-extend", "1", "--accept-edge"]


def run_study(out, extra=(), timeout=600):
    return subprocess.run([sys.executable, str(ROOT / "launch/study.py"), *TINY, *extra, "--out", str(out)], env=ENV,
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _interim(out):
    return subprocess.run([sys.executable, str(ROOT / "launch/study.py"), "--interim", "--out", str(out)], env=ENV,
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("extra, message", [
    (["--recipes", "plain,bogus"], "unknown recipe 'bogus'"),
    (["--tune-seed", "2"], "--tune-seed 2 is also a measured seed in --seeds [1, 2]"),
    (["--seed", "5"], "--seed: a study's seeds are --tune-seed"),
    (["--bracket-points", "4"], "--bracket-points must be an odd integer >= 3"),
])
def test_bad_study_input_is_one_sentence_before_compute(tmp_path, extra, message):
    p = run_study(tmp_path / "s", extra, timeout=120)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_a_whole_study_then_a_rerun_then_a_changed_setting(tmp_path):
    out = tmp_path / "s"
    p = run_study(out)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    protocol = json.loads((out / "protocol.json").read_text())
    assert protocol["status"] == "frozen" and set(protocol["tuned"]["inherit_lr_mult"]) == {"plain",
                                                                                            "copy_continue_carry"}
    report = (out / "report.md").read_text().splitlines()
    assert report[0].startswith("# Study: d1..d2") and any(line.startswith("| d2 |") for line in report[:30])
    corpus = protocol["settings"]["corpus"]
    assert f"Corpus: `builtin`, cache key `{corpus['cache_key']}`" in "\n".join(report[:12])
    assert f"{corpus['tokens']['train']:,} train" in "\n".join(report[:12])
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(map(int, summary["per_seed"])) == [1, 2]
    # the tuning seed's runs live apart and are never among the measured ones
    assert (out / "tune").is_dir() and not (out / "seed100").exists()
    again = run_study(out)
    assert again.returncode == 0 and "stable run:" not in again.stdout, again.stdout[-2000:]
    status = subprocess.run([sys.executable, str(ROOT / "launch/study.py"), "--status", "--out", str(out)], env=ENV,
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and f"study {out}: frozen" in status.stdout, status.stdout + status.stderr
    assert "seed2: " in status.stdout and "0 under way or interrupted" in status.stdout
    assert "measured seeds finished: 1, 2 (`--interim" in status.stdout
    # the interim report of a finished study answers as the study's own; a seed not finished is left out
    interim = _interim(out)
    assert interim.returncode == 0 and "2 of 2 measured seeds finished" in (out / "interim" / "report.md").read_text()
    assert json.loads((out / "interim" / "summary.json").read_text())["answer"] == summary["answer"]
    last = sorted((out / "seed2").rglob("final.json"))[-1]
    last.rename(last.with_suffix(".aside"))
    interim = _interim(out)
    head = (out / "interim" / "report.md").read_text().splitlines()[2]
    assert interim.returncode == 0 and "1 of 2 measured seeds finished (seeds 1); still to finish: 2" in head, head
    assert sorted(json.loads((out / "interim" / "summary.json").read_text())["per_seed"]) == ["1"]
    last.with_suffix(".aside").rename(last)
    changed = run_study(out, ["--ratio", "0.06"])
    assert changed.returncode == 1 and "ratio: 0.05 on disk, 0.06 asked" in changed.stderr, changed.stderr[-2000:]
    # its committed protocol replicated on a fresh seed with its tuned values: nothing tuned, and said so
    rep = subprocess.run([sys.executable, str(ROOT / "launch/study.py"), "--replicate", str(out / "protocol.json"),
                          "--reuse-tuned", "--seeds", "3", "--out", str(tmp_path / "rep")], env=ENV, cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert rep.returncode == 0, rep.stdout[-3000:] + rep.stderr[-3000:]
    assert not (tmp_path / "rep" / "tune").exists() and (tmp_path / "rep" / "seed3").is_dir()
    reprotocol = json.loads((tmp_path / "rep" / "protocol.json").read_text())
    assert reprotocol["tuned"]["scratch_lr_mult"] == protocol["tuned"]["scratch_lr_mult"]
    assert reprotocol["replicates"]["changed"] == ["seeds"], reprotocol["replicates"]
    head = "\n".join((tmp_path / "rep" / "report.md").read_text().splitlines()[:12])
    assert "--reuse-tuned: tuned there on seed 100" in head and "settings changed here: `seeds`" in head
