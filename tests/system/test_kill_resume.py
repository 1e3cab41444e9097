"""A run stopped anywhere resumes to the uninterrupted result, bitwise on CPU: SIGKILL mid-run and
mid-checkpoint-write, an interrupted or damaged checkpoint (named and skipped), no usable
checkpoint at all, a disk that fills up (one message, nothing lost, resumed on a larger disk)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from engine.train import checkpoint as ckpt
from tests.helpers import ROOT
from tests.helpers.runs import ENV, FAST, losses, run_train


def test_sigkill_then_resume_gives_bitwise_identical_losses(tmp_path):
    args = ["--depth", "2", "--steps", "24", "--ckpt-every", "5"]
    run_train(args, tmp_path / "ref")
    ref = losses(tmp_path / "ref")
    out = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "launch/train.py")] + FAST + args + ["--out", str(out)]
    proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # kill mid-run, after the step-10 checkpoint
        if (out / "metrics.jsonl").exists() and len(losses(out)) >= 13:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "final.json").exists(), "the run finished before it could be killed; make it longer"
    run_train(args + ["--resume"], out)
    got = losses(out)
    assert sorted(got) == list(range(1, 25))
    assert got == ref  # bitwise: same floats, every step


@pytest.mark.parametrize("damage,reason", [
    ("no-manifest", "no manifest"),
    ("truncated", "bytes, manifest says"),
    ("bitflip", "fails its sha256 check"),
    ("garbled-manifest", "unreadable manifest"),
])
def test_interrupted_checkpoint_write_is_ignored_on_resume(tmp_path, damage, reason):
    """A kill mid-checkpoint-write leaves a .tmp_step_* directory (never read) or, on a filesystem
    without atomic rename, a step directory without its manifest; damage after the fact truncates
    or flips bytes. Resume names the bad checkpoint, uses the previous one, and loses nothing."""
    args = ["--depth", "1", "--steps", "12", "--ckpt-every", "4"]
    run_train(args, tmp_path / "ref")
    out = tmp_path / "run"
    run_train(args, out)
    (out / "final.json").unlink()
    newest = out / "ckpt/step_000000012"
    tmp = out / "ckpt/.tmp_step_000000012"
    shutil.copytree(newest, tmp)  # a write in progress beside it: half its files, no manifest
    (tmp / "manifest.json").unlink()
    for f in sorted(tmp.glob("*.distcp"))[1:]:
        f.unlink()
    victim = next(newest.glob("*.distcp"))
    if damage == "no-manifest":
        (newest / "manifest.json").unlink()
    elif damage == "truncated":
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    elif damage == "bitflip":
        data = bytearray(victim.read_bytes())
        data[len(data) // 3] ^= 0x01
        victim.write_bytes(bytes(data))
    else:
        m = (newest / "manifest.json").read_text()
        (newest / "manifest.json").write_text(m[: len(m) // 2])
    p = run_train(args + ["--resume"], out)
    assert "step_000000012 is unusable" in p.stderr and reason in p.stderr, p.stderr[-2000:]
    assert losses(out) == losses(tmp_path / "ref")  # bitwise, steps 1..12
    assert (json.loads((out / "final.json").read_text())["val_loss"]
            == json.loads((tmp_path / "ref/final.json").read_text())["val_loss"])
    assert not list((out / "ckpt").glob(".tmp_step_*"))
    assert ckpt.verify(newest) is None  # rewritten whole


def test_no_checkpoint_at_all_is_a_fresh_start(tmp_path):
    """Every checkpoint unusable and no final.json: resume starts over and still equals the reference."""
    args = ["--depth", "1", "--steps", "6", "--ckpt-every", "3"]
    run_train(args, tmp_path / "ref")
    out = tmp_path / "run"
    run_train(args, out)
    (out / "final.json").unlink()
    for ck in ckpt.list_checkpoints(out / "ckpt"):
        (ck / "manifest.json").unlink()
    p = run_train(args + ["--resume"], out)
    assert p.stderr.count("is unusable (no manifest") == 2, p.stderr[-2000:]
    assert losses(out) == losses(tmp_path / "ref")


def test_real_sigkill_during_a_checkpoint_write(tmp_path):
    """A genuine kill mid-write: checkpoint every step, SIGKILL the moment a .tmp_step_* directory
    appears; the rerun ignores the half-written one and reproduces the uninterrupted losses bitwise."""
    args = ["--depth", "1", "--steps", "40", "--ckpt-every", "1"]
    run_train(args, tmp_path / "ref")
    out = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "launch/train.py")] + FAST + args + ["--out", str(out)]
    proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen_steps = 0
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (out / "ckpt").is_dir():
            tmps = [e.name for e in os.scandir(out / "ckpt") if e.name.startswith(".tmp_step_")]
            if tmps and int(tmps[0].rsplit("_", 1)[1]) >= 5:  # a few good checkpoints exist before it
                proc.send_signal(signal.SIGKILL)
                seen_steps = int(tmps[0].rsplit("_", 1)[1])
                break
        time.sleep(0.0005)
    proc.kill()
    proc.wait()
    assert seen_steps, "never saw a checkpoint write in progress"
    assert not (out / "final.json").exists()
    left = [p.name for p in (out / "ckpt").iterdir()]
    assert any(n.startswith(".tmp_step_") for n in left) or f"step_{seen_steps:09d}" in left, left
    p = run_train(args + ["--resume"], out)
    assert losses(out) == losses(tmp_path / "ref"), p.stderr[-2000:]  # bitwise, every step
    assert not list((out / "ckpt").glob(".tmp_step_*"))


def test_train_on_a_full_small_disk_stops_with_one_message_and_resumes(small_fs, tmp_path):
    """The reported experiment: --out on a 6 MB filesystem, checkpoints every 10 steps."""
    out = small_fs(6) / "run"
    p = run_train(["--depth", "2", "--steps", "40", "--ckpt-every", "10"], out, check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1, p.stderr[-3000:]
    assert lines[-1].startswith("error: not enough disk space for checkpoint step 20: it needs about"), lines[-1]
    assert f"The last intact checkpoint is {out}/ckpt/step_000000010" in lines[-1]
    assert "Traceback" not in p.stderr
    assert [c.name for c in ckpt.list_checkpoints(out / "ckpt")] == ["step_000000010"]
    assert not list((out / "ckpt").glob(".tmp_*"))
    assert ckpt.verify(out / "ckpt/step_000000010") is None
    # nothing lost: the run moved to a larger disk resumes from step 10 and finishes
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    run_train(["--depth", "2", "--steps", "40", "--ckpt-every", "10", "--resume"], moved)
    steps = [json.loads(line)["step"] for line in (moved / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(41))
