"""One writer per run directory (engine/runtime/run_lock.py): a second lock names the holder; a
filesystem without locks is named, with the switch that turns the lock off."""
from __future__ import annotations

import errno
import fcntl
import os
import socket

import pytest

from engine.runtime.run_lock import RunLockedError, run_lock


def test_a_second_lock_on_a_directory_names_the_holder(tmp_path):
    with run_lock(tmp_path / "run"):
        with pytest.raises(RunLockedError, match=rf"{tmp_path / 'run'} is in use by PID {os.getpid()} on host "
                                                 rf"{socket.gethostname()} \(started .*\); wait for that run"):
            with run_lock(tmp_path / "run"):
                pass
    with run_lock(tmp_path / "run"):  # released at exit
        pass


def test_lock_on_a_filesystem_without_locks(tmp_path, monkeypatch):
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
