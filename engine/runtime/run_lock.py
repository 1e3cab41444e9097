"""One writer per run directory: an exclusive flock held for the life of the run.

Two processes writing one run directory interleave their metrics lines and overwrite each other's
checkpoints, and neither notices. `run_lock(directory)` takes `directory/.lock` with
`fcntl.flock(LOCK_EX | LOCK_NB)` and keeps the descriptor open until the run ends. The kernel
drops an flock when the last descriptor of its open file goes away, so a run that dies in any way
(an exception, SIGKILL, the OOM killer) leaves no stale lock: a rerun with --resume takes the
lock at once. The file itself stays (deleting it would let a third process lock a fresh inode
while a second still holds the old one); its content, the holder's PID, host, start time and
command line, only serves the message a second process gets, which exits at once (unless the
recorded holder is on this host and already dead or a zombie: then it retries for up to
EXIT_GRACE_S while the kernel finishes releasing the lock).

Under torchrun only rank 0 takes the lock; the outcome is broadcast so every rank stops together.

Filesystems: flock works on local filesystems and on NFS (Linux emulates it with NFS byte-range
locks, so it holds across clients when lockd / NFSv4 locking works). Where the filesystem refuses
locks (ENOLCK, EOPNOTSUPP, ENOSYS: some FUSE and Lustre mounts without `-o flock`) the run stops
and says so; LADDER_RUN_LOCK=off runs without the lock (you then guarantee one writer yourself).
Mounts that accept locks but keep them node-local (Lustre `-o localflock`) cannot be detected: a
second run on another node is not seen there.

The descriptor is opened close-on-exec, so programs the run execs do not inherit the lock; a
child forked without exec shares it until it exits.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from engine.runtime.distributed import broadcast_object

LOCK_FILE = ".lock"
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
EXIT_GRACE_S = 5.0


class RunLockedError(RuntimeError):
    """Another live process holds the run directory's lock (or locks cannot be taken there)."""


def _record(path: Path) -> dict | None:
    try:
        info = json.loads(path.read_text())
        return info if {"pid", "host", "started", "command"} <= set(info) else None
    except (OSError, ValueError, TypeError):
        return None


def _holder(info: dict | None) -> str:
    """'PID 123 on host h (started ..., command ...)' from the lock file, as far as it is readable."""
    if info is None:
        return "another process (its PID and host were not recorded yet)"
    return f"PID {info['pid']} on host {info['host']} (started {info['started']}, command: {info['command']})"


def _exiting(info: dict | None) -> bool:
    """The recorded holder runs on this host and is gone or a zombie: the kernel is dropping its
    lock (a SIGKILLed process group's workers may still be exiting when a rerun starts)."""
    if info is None or info["host"] != socket.gethostname():
        return False
    try:
        state = Path(f"/proc/{int(info['pid'])}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return True  # no such process
    return state in ("Z", "X")


def _try_lock(fd: int, path: Path) -> OSError | None:
    """flock without blocking; while the recorded holder is exiting, retry for up to EXIT_GRACE_S."""
    deadline = time.monotonic() + EXIT_GRACE_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN) or time.monotonic() > deadline \
                    or not _exiting(_record(path)):
                return e
        time.sleep(0.05)


def acquire(directory) -> int:
    """Take the lock on `directory` (created if needed); return the descriptor to keep open."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    e = _try_lock(fd, path)
    if e is not None:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise RunLockedError(f"{directory} is in use by {_holder(_record(path))}; wait for that run to finish "
                                 f"or stop it, or choose another output directory") from None
        if e.errno in _UNSUPPORTED:
            raise RunLockedError(f"the filesystem of {directory} does not support file locks ({e.strerror}), so "
                                 f"two runs could write it at once; use another output directory, or set "
                                 f"LADDER_RUN_LOCK=off and make sure only one run writes there") from None
        raise e
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv)}
    try:  # only for the message a second process gets: a full disk must not stop the run here
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    except OSError:
        pass
    return fd


def release(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def run_lock(directory, env=None):
    """Hold `directory`'s lock for the block (rank 0 takes it; every rank raises if it is taken)."""
    mode = os.environ.get("LADDER_RUN_LOCK", "on")
    if mode not in ("on", "off"):
        raise ValueError(f"LADDER_RUN_LOCK={mode!r}: expected 'on' (the default) or 'off'")
    if mode == "off":
        yield
        return
    fd, error = None, None
    if env is None or env.is_main:
        try:
            fd = acquire(directory)
        except RunLockedError as e:
            error = str(e)
    if env is not None:
        error = broadcast_object(error, env)
    if error is not None:
        raise RunLockedError(error)
    try:
        yield
    finally:
        if fd is not None:
            release(fd)
