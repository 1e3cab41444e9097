"""Faults injected into the code under test: a full disk's OSError, and token ids overwritten in
place in a data cache file."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np


def enospc(path="somewhere") -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def overwrite_tokens(path: Path, at: int, values, dtype=np.uint16):
    a = np.memmap(path, dtype=dtype, mode="r+")
    a[at: at + len(values)] = values
    a.flush()
    del a
