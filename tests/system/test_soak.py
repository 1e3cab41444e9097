"""The soak's promise, short: SIGKILL anywhere in a miniseries, then the same command again, equals
an uninterrupted run (every number that does not measure time, bitwise on CPU); and the soak's
comparison (launch/soak.py) catches one changed bit."""
import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch.soak import LADDER_KEYS, TIMELESS, differences
from tests.helpers import ROOT
from tests.helpers.runs import ENV, INHERIT, MINI, run_miniseries


KILL_FLAGS = ["--ckpt-every", "5"]  # checkpoints every 5 steps inside each rung


def rung_metrics(out: Path) -> dict[str, list[dict]]:
    return {str(f.parent.relative_to(out)): [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
            for f in sorted(out.glob("*/d*/*/metrics.jsonl"))}


def assert_same_ladder(got: Path, ref: Path):
    """Bitwise: every number that does not measure time is the same float."""
    s_got, s_ref = (json.loads((d / "summary.json").read_text()) for d in (got, ref))
    assert set(s_got["arms"]) == set(s_ref["arms"])
    for arm in s_ref["arms"]:
        for a, b in zip(s_got["arms"][arm], s_ref["arms"][arm], strict=True):
            assert {k: a.get(k) for k in TIMELESS} == {k: b.get(k) for k in TIMELESS}, arm
    for arm in s_ref["ladder"]:
        for k in LADDER_KEYS:
            assert s_got["ladder"][arm][k] == s_ref["ladder"][arm][k], (arm, k)
    m_got, m_ref = rung_metrics(got), rung_metrics(ref)
    assert set(m_got) == set(m_ref)
    drop = ("dt",)  # wall time per step
    for run in m_ref:
        a = [{k: v for k, v in r.items() if k not in drop} for r in m_got[run]]
        b = [{k: v for k, v in r.items() if k not in drop} for r in m_ref[run]]
        assert a == b, run


@pytest.fixture(scope="module")
def reference_ladder(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ladder"
    run_miniseries(out, KILL_FLAGS)
    return out


def _steps_logged(path: Path) -> int:
    try:
        return sum(1 for line in path.read_text().splitlines() if line.strip() and '"loss"' in line)
    except FileNotFoundError:
        return 0


# kill points: (name, predicate on OUT telling when to send SIGKILL)
KILL_POINTS = {
    # mid-step inside the scratch d2 rung, after its step-10 checkpoint
    "mid-scratch-rung": lambda o: _steps_logged(o / "scratch/d2/stable/metrics.jsonl") >= 12,
    # the moment the last scratch rung is final: the run is loading d1, building the Fisher, growing
    "mid-growth": lambda o: (o / "scratch/d2/b1/final.json").exists(),
    # mid-step inside the inherited rung, after its step-5 checkpoint
    "mid-inherited-rung": lambda o: _steps_logged(o / INHERIT / "d2/stable/metrics.jsonl") >= 8,
    # the inherited rung is final: the run is writing the report
    "mid-report": lambda o: (o / INHERIT / "d2/b1/final.json").exists(),
}


@pytest.mark.parametrize("point", [
    "mid-inherited-rung",
    pytest.param("mid-growth", marks=pytest.mark.slow),
    pytest.param("mid-scratch-rung", marks=pytest.mark.slow),
    pytest.param("mid-report", marks=pytest.mark.slow),
])
def test_sigkill_mid_miniseries_then_rerun_equals_uninterrupted(reference_ladder, tmp_path, point):
    out = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "launch/miniseries.py")] + MINI + KILL_FLAGS + ["--out", str(out)]
    proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not KILL_POINTS[point](out):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists(), "the miniseries finished before the kill; kill earlier"
    run_miniseries(out, KILL_FLAGS)  # the same command again
    assert_same_ladder(out, reference_ladder)


def test_soak_comparison_sees_a_changed_loss(reference_ladder, tmp_path):
    """launch/soak.py's verdict: equal to itself, and one changed bit in a val loss or a metrics line is caught."""
    assert differences(reference_ladder, reference_ladder) == []
    copy = tmp_path / "copy"
    shutil.copytree(reference_ladder, copy)
    s = json.loads((copy / "summary.json").read_text())
    s["arms"][INHERIT][-1]["val_loss"] = math.nextafter(s["arms"][INHERIT][-1]["val_loss"], 0.0)
    (copy / "summary.json").write_text(json.dumps(s))
    m = copy / "scratch/d2/stable/metrics.jsonl"
    lines = m.read_text().splitlines()
    rec = json.loads(lines[3])
    rec["loss"] = math.nextafter(rec["loss"], 0.0)
    lines[3] = json.dumps(rec)
    m.write_text("\n".join(lines) + "\n")
    diffs = differences(copy, reference_ladder)
    assert any(f"summary {INHERIT} d2 val_loss" in d for d in diffs), diffs
    assert any("scratch/d2/stable/metrics.jsonl differs from line 3" in d for d in diffs), diffs
