"""The miniseries command line (launch/miniseries.py): bad input refused with a clear message before
anything trains; its output directory locked. The whole miniseries: tests/system/test_miniseries.py."""
import os
import subprocess
import sys

import pytest

from engine.runtime.run_lock import LOCK_FILE, run_lock
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
