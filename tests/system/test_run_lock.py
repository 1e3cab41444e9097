"""One writer per run directory, between real processes: a second run exits at once naming the
first; a SIGKILLed run's lock does not block --resume."""
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from engine.runtime.run_lock import LOCK_FILE
from engine.train import checkpoint as ckpt
from tests.helpers import ROOT
from tests.helpers.runs import ENV, FAST, run_train


def _start_train(out: Path, *args) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "launch/train.py"), *FAST, "--depth", "2", *args, "--out", str(out)]
    return subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(pred, proc: subprocess.Popen, what: str, limit_s: float = 300):
    deadline = time.monotonic() + limit_s
    while not pred():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"never saw {what}: {proc.communicate()[1][-2000:]}")
        time.sleep(0.05)


def _lock_pid(out: Path):
    try:
        return json.loads((out / LOCK_FILE).read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def test_two_runs_on_one_directory(tmp_path):
    """The second run exits at once naming the first; the first, paused meanwhile, finishes alone."""
    out = tmp_path / "run"
    first = _start_train(out, "--steps", "6")
    try:
        _wait_for(lambda: _lock_pid(out) == first.pid, first, "the first run's lock")
        first.send_signal(signal.SIGSTOP)  # holds the lock, writes nothing: the second run cannot race it
        second = run_train(["--depth", "2", "--steps", "6"], out, check=False)
        first.send_signal(signal.SIGCONT)
        assert second.returncode == 1
        assert second.stderr.strip().splitlines()[-1] == (
            f"error: {out} is in use by PID {first.pid} on host {socket.gethostname()} (started "
            f"{json.loads((out / LOCK_FILE).read_text())['started']}, command: "
            f"{json.loads((out / LOCK_FILE).read_text())['command']}); wait for that run to finish or stop it, or "
            "choose another output directory")
        _, err = first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 0, err[-2000:]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(7))  # one run's lines, once each


def test_sigkilled_run_leaves_no_lock_that_blocks_resume(tmp_path):
    out = tmp_path / "run"
    args = ["--steps", "100", "--ckpt-every", "2"]
    proc = _start_train(out, *args)
    _wait_for(lambda: ckpt.list_checkpoints(out / "ckpt"), proc, "a checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (out / "final.json").exists()  # killed mid-run
    assert _lock_pid(out) == proc.pid  # the file stays; the lock went with the process
    run_train(["--depth", "2", *args, "--resume"], out)
    assert json.loads((out / "final.json").read_text())["steps"] == 100
