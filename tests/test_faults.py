"""Faults real clusters have, each caught and named with nothing lost: a full disk while writing a
checkpoint (on a real small tmpfs where the platform allows mounting one, and by injected write
errors everywhere); two runs on one directory; a SIGKILLed run whose lock must not block --resume."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine.train import checkpoint as ckpt
from engine.runtime import diskspace
from engine.runtime.diskspace import StorageError
from engine.runtime.distributed import init_distributed
from engine.runtime.run_lock import LOCK_FILE, run_lock
from tests.helpers.faults import enospc
from tests.test_trainer import ENV, FAST, ROOT, run_train


def _tiny_model_and_opt():
    from engine.train.optim import LadderOptimizer, model_param_groups
    from models.config import model_config
    from models.gpt import GPT

    model = GPT(model_config("cpu-tiny", 1, seq_len=64))
    model.init_weights(0)
    opt = LadderOptimizer(model_param_groups(model, matrix_lr=1e-3, embedding_lr=1e-3, unembedding_lr=1e-3, muon=False,
                                             weight_decay=0.0))
    return model, opt


def _assert_loadable(ck: Path, model):
    """`ck` verifies and loads into a fresh model with the weights `model` had when it was saved."""
    assert ckpt.verify(ck) is None
    fresh, opt = _tiny_model_and_opt()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    ckpt.load(ck, fresh, opt)
    for (n, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), n


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
    steps = [json.loads(l)["step"] for l in (moved / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(41))


def test_real_enospc_inside_dcp_removes_the_partial_checkpoint(small_fs, monkeypatch):
    """Free space estimated wrong (forced to 0): the write itself hits ENOSPC on a real filesystem."""
    d = small_fs(4)
    model, opt = _tiny_model_and_opt()
    env = init_distributed("cpu")
    ckpt.save(d / "ckpt", 1, model, opt, {}, env)
    size = ckpt.checkpoint_bytes(d / "ckpt/step_000000001")
    (d / "filler").write_bytes(b"\0" * max(0, diskspace.free_bytes(d) - size // 2))
    monkeypatch.setattr(ckpt, "_needed_bytes", lambda *a: 0)
    with pytest.raises(StorageError, match=r"^the disk is full: writing checkpoint step 2 to .*\.tmp_step_000000002 "
                                           r"failed .*The last intact checkpoint is .*step_000000001") as e:
        ckpt.save(d / "ckpt", 2, model, opt, {}, env)
    assert "free" in str(e.value)
    assert [c.name for c in ckpt.list_checkpoints(d / "ckpt")] == ["step_000000001"]
    assert not list((d / "ckpt").glob(".tmp_*"))
    _assert_loadable(d / "ckpt/step_000000001", model)


def test_injected_write_error_during_checkpoint_keeps_earlier_ones(tmp_path, monkeypatch):
    model, opt = _tiny_model_and_opt()
    env = init_distributed("cpu")
    ckpt.save(tmp_path / "ckpt", 1, model, opt, {}, env)
    real_save = ckpt.dcp.save

    def half_written(state, checkpoint_id):
        Path(checkpoint_id).mkdir(parents=True, exist_ok=True)
        (Path(checkpoint_id) / "__0_0.distcp").write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(ckpt.dcp, "save", half_written)
    with pytest.raises(StorageError, match=r"writing checkpoint step 2 to .* failed \(RuntimeError: \[enforce fail.*"
                                           r"The last intact checkpoint is .*step_000000001"):
        ckpt.save(tmp_path / "ckpt", 2, model, opt, {}, env)
    assert not list((tmp_path / "ckpt").glob(".tmp_*"))
    monkeypatch.setattr(ckpt.dcp, "save", real_save)
    _assert_loadable(tmp_path / "ckpt/step_000000001", model)


def test_injected_enospc_in_the_manifest_write_is_named_as_a_full_disk(tmp_path, monkeypatch):
    model, opt = _tiny_model_and_opt()
    env = init_distributed("cpu")
    ckpt.save(tmp_path / "ckpt", 1, model, opt, {}, env)
    real = ckpt.write_json_atomic

    def full(path, obj):
        if Path(path).name == ckpt.MANIFEST:
            raise enospc(path)
        return real(path, obj)

    monkeypatch.setattr(ckpt, "write_json_atomic", full)
    with pytest.raises(StorageError, match=r"^the disk is full: writing checkpoint step 2 .*No space left on device"):
        ckpt.save(tmp_path / "ckpt", 2, model, opt, {}, env)
    assert [c.name for c in ckpt.list_checkpoints(tmp_path / "ckpt")] == ["step_000000001"]
    assert not list((tmp_path / "ckpt").glob(".tmp_*"))


def test_space_shortage_is_caught_before_writing(tmp_path, monkeypatch):
    model, opt = _tiny_model_and_opt()
    env = init_distributed("cpu")
    ckpt.save(tmp_path / "ckpt", 1, model, opt, {}, env)
    size = ckpt.checkpoint_bytes(tmp_path / "ckpt/step_000000001")
    assert size >= ckpt.state_bytes({"m": ckpt.model_state(model)})  # the estimate: the previous checkpoint
    monkeypatch.setattr(diskspace, "free_bytes", lambda path: size // 2)
    with pytest.raises(StorageError, match=rf"not enough disk space for checkpoint step 2: it needs about "
                                           rf"{diskspace.fmt_bytes(diskspace.with_slack(size))} in {tmp_path / 'ckpt'}, "
                                           rf"only {diskspace.fmt_bytes(size // 2)} free, so it was not written"):
        ckpt.save(tmp_path / "ckpt", 2, model, opt, {}, env)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step_000000001"]


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
            f"{json.loads((out / LOCK_FILE).read_text())['started']}, command: {json.loads((out / LOCK_FILE).read_text())['command']}); "
            f"wait for that run to finish or stop it, or choose another output directory")
        _, err = first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 0, err[-2000:]
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()]
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


def test_miniseries_locks_its_output_directory(tmp_path):
    out = tmp_path / "series"
    with run_lock(out):
        p = subprocess.run([sys.executable, str(ROOT / "launch/miniseries.py"), "--out", str(out), "--no-progress"],
                           env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1].startswith(f"error: {out} is in use by PID {os.getpid()} on host ")
    assert sorted(x.name for x in out.iterdir()) == [LOCK_FILE]  # nothing written
