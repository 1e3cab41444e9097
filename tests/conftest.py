"""Fixtures shared by test files in several folders."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Intra-op threads spin-wait; on a shared 2-core CPU one thread is many times faster for small
    tensors. Restored afterwards so other test modules are unaffected. Use it per module with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def small_fs(tmp_path):
    """Mount a tmpfs of the given size (MB) under tmp_path; skipped where mounting is not allowed."""
    mounts = []

    def mount(mb: int) -> Path:
        d = tmp_path / f"fs{len(mounts)}"
        d.mkdir()
        if os.geteuid() != 0 or not shutil.which("mount"):
            pytest.skip("mounting a small tmpfs needs root and mount(8); the injected-error tests cover the same paths")
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(d)], capture_output=True,
                           text=True)
        if p.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({p.stderr.strip()}); the injected-error tests cover the same "
                        "paths")
        mounts.append(d)
        return d

    yield mount
    for d in mounts:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)
