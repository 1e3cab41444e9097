"""Faults real clusters have, each caught and named with nothing lost: a full disk while writing a
checkpoint, metrics or the data cache (on a real small tmpfs where the platform allows mounting
one, and by injected write errors everywhere); a corrupted, truncated or out-of-range data cache
shard and a damaged tokenizer file; two runs on one directory; a SIGKILLed run whose lock must not
block --resume."""
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.train import checkpoint as ckpt
from engine.runtime import diskspace
from engine.data import prepare as prepare_mod
from engine.data import prepare_data
from engine.data.integrity import CacheCorruptError, checksum, verify
from engine.runtime.diskspace import StorageError, storage_guard
from engine.runtime.distributed import init_distributed
from engine.runtime.run_lock import LOCK_FILE, RunLockedError, run_lock
from tests.test_data import make_text
from tests.test_trainer import ENV, FAST, ROOT, run_train


def _enospc(path="somewhere") -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


# ---- a real small filesystem -------------------------------------------------------------------

@pytest.fixture
def small_fs(tmp_path):
    """Mount a tmpfs of the given size (MB) under tmp_path; skipped where mounting is not allowed."""
    mounts = []

    def mount(mb: int) -> Path:
        d = tmp_path / f"fs{len(mounts)}"
        d.mkdir()
        if os.geteuid() != 0 or not shutil.which("mount"):
            pytest.skip("mounting a small tmpfs needs root and mount(8); the injected-error tests cover the same paths")
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(d)], capture_output=True, text=True)
        if p.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({p.stderr.strip()}); the injected-error tests cover the same paths")
        mounts.append(d)
        return d

    yield mount
    for d in mounts:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


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


def test_json_write_on_a_full_disk_leaves_no_partial_file(small_fs):
    d = small_fs(1)
    (d / "filler").write_bytes(b"\0" * (diskspace.free_bytes(d) - 4096))
    with pytest.raises(StorageError, match=rf"^the disk is full: writing run output to {d}/run.json failed \(OSError: "
                                           rf".*No space left on device.*\); .* free\. Free space .* and rerun the same command"):
        with storage_guard(d):
            ckpt.write_json_atomic(d / "run.json", {"x": "y" * 100_000})
    assert sorted(p.name for p in d.iterdir()) == ["filler"]


# ---- injected write errors (any platform) ------------------------------------------------------

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
            raise _enospc(path)
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


def test_storage_guard_names_write_errors_and_passes_others(tmp_path):
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(StorageError, match=rf"the disk is full: writing run output to {tmp_path}/metrics.jsonl failed "
                                           rf"\(OSError: .*No space left"):
        with storage_guard(tmp_path):
            raise _enospc(tmp_path / "metrics.jsonl")
    with pytest.raises(StorageError, match=r"unexpected pos 704 vs 598"):
        with storage_guard(tmp_path):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    with pytest.raises(RuntimeError, match="^a bug$"):  # not a write error: left alone
        with storage_guard(tmp_path):
            raise RuntimeError("a bug")


# ---- the data cache ----------------------------------------------------------------------------

@pytest.fixture
def corpus(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    for i in range(8):
        (d / f"doc{i}.txt").write_text(make_text(300, i))
    return f"text:{d}"


def _flip(path: Path, at: int, values, dtype=np.uint16):
    a = np.memmap(path, dtype=dtype, mode="r+")
    a[at: at + len(values)] = values
    a.flush()
    del a


@pytest.mark.parametrize("values,what", [([60000, 61000], "out of the vocabulary"), ([7, 8, 9], "within the vocabulary")])
def test_corrupted_shard_is_named_and_rebuilt(corpus, tmp_path, capfd, values, what):
    b = prepare_data(corpus, 512, tmp_path / "cache", progress=False)
    want = np.array(b.train)
    _flip(b.directory / "train.bin", 100, values)
    b2 = prepare_data(corpus, 512, tmp_path / "cache", progress=False)
    err = capfd.readouterr().err
    assert f"warning: data cache file {b.directory / 'train.bin'} fails its crc32 check in bytes 0.." in err, err
    assert f"rebuilding the cache {b.directory} from {corpus!r}" in err
    assert np.array_equal(b2.train, want)
    assert prepare_data(corpus, 512, tmp_path / "cache", progress=False).manifest["build_id"] == b2.manifest["build_id"]


def test_truncated_shard_and_damaged_tokenizer_are_named_and_rebuilt(corpus, tmp_path, capfd):
    b = prepare_data(corpus, 512, tmp_path / "cache", progress=False)
    want = np.array(b.val)
    with open(b.directory / "val.bin", "r+b") as f:
        f.truncate(100)
    assert np.array_equal(prepare_data(corpus, 512, tmp_path / "cache", progress=False).val, want)
    assert f"{b.directory / 'val.bin'} has 100 bytes, the manifest says {2 * len(want)}" in capfd.readouterr().err
    text = (b.directory / "tokenizer.json").read_text()
    (b.directory / "tokenizer.json").write_text(text.replace("A", "B", 1))
    prepare_data(corpus, 512, tmp_path / "cache", progress=False)
    assert f"{b.directory / 'tokenizer.json'} fails its crc32 check" in capfd.readouterr().err


def test_token_ids_are_range_checked_where_checksums_match(corpus, tmp_path):
    b = prepare_data(corpus, 512, tmp_path / "cache", progress=False)
    path = b.directory / "train.bin"
    _flip(path, 37, [600])
    with pytest.raises(CacheCorruptError, match=rf"{path} holds token id 600 at position 37, outside the vocabulary \[0, 512\)"):
        verify(path, checksum(path), np.uint16, 512)


def test_cache_from_before_checksums_gets_them_without_a_rebuild(corpus, tmp_path, monkeypatch, capfd):
    b = prepare_data(corpus, 512, tmp_path / "cache", progress=False)
    m = json.loads((b.directory / "manifest.json").read_text())
    del m["checksums"]
    (b.directory / "manifest.json").write_text(json.dumps(m))
    with monkeypatch.context() as mp:
        mp.setattr(prepare_mod, "train_tokenizer", lambda *a: pytest.fail("rebuilt a sound cache"))
        b2 = prepare_data(corpus, 512, tmp_path / "cache", progress=False)
    assert b2.manifest["build_id"] == b.manifest["build_id"] and "checksums" in b2.manifest
    # ... but one whose ids are out of range is named and rebuilt
    (b.directory / "manifest.json").write_text(json.dumps(m))
    _flip(b.directory / "train.bin", 5, [700])
    b3 = prepare_data(corpus, 512, tmp_path / "cache", progress=False)
    assert "holds token id 700 at position 5, outside the vocabulary [0, 512)" in capfd.readouterr().err
    assert b3.manifest["build_id"] != b.manifest["build_id"] and int(b3.train.max()) < 512


def test_full_disk_while_building_the_cache_removes_partial_files(corpus, tmp_path, monkeypatch):
    real = prepare_mod._tokenize_split

    def fills_up(src, split, tok, out, progress):
        if split == "val":
            out.with_suffix(".bin.tmp").write_bytes(b"\0" * 10)
            raise _enospc(out.with_suffix(".bin.tmp"))
        return real(src, split, tok, out, progress)

    monkeypatch.setattr(prepare_mod, "_tokenize_split", fills_up)
    with pytest.raises(StorageError, match=r"^the disk is full: writing the data cache to .* failed \(OSError: .*No space "
                                           r"left on device.*The partial cache files were removed; free space or point "
                                           r"--cache-dir"):
        prepare_data(corpus, 512, tmp_path / "cache", progress=False)
    (d,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert not list(d.glob("*.tmp*")) and not (d / "manifest.json").exists()
    monkeypatch.undo()
    assert len(prepare_data(corpus, 512, tmp_path / "cache", progress=False).train) > 0


# ---- one writer per run directory --------------------------------------------------------------

def test_a_second_lock_on_a_directory_names_the_holder(tmp_path):
    with run_lock(tmp_path / "run"):
        with pytest.raises(RunLockedError, match=rf"{tmp_path / 'run'} is in use by PID {os.getpid()} on host "
                                                 rf"{socket.gethostname()} \(started .*\); wait for that run"):
            with run_lock(tmp_path / "run"):
                pass
    with run_lock(tmp_path / "run"):  # released at exit
        pass


def test_lock_on_a_filesystem_without_locks(tmp_path, monkeypatch):
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(RunLockedError, match=r"does not support file locks .*LADDER_RUN_LOCK=off"):
        with run_lock(tmp_path):
            pass
    monkeypatch.setenv("LADDER_RUN_LOCK", "off")
    with run_lock(tmp_path):
        pass
    monkeypatch.setenv("LADDER_RUN_LOCK", "maybe")
    with pytest.raises(ValueError, match=r"LADDER_RUN_LOCK='maybe': expected 'on' \(the default\) or 'off'"):
        with run_lock(tmp_path):
            pass


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
