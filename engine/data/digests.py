"""Content fingerprints of sources: the data cache is keyed on the bytes of the source's files.

A key made of names, sizes and mtimes (or the interpreter's version) differs between machines
holding the same corpus and stays the same when a file is rewritten in place, so it both rebuilds
needlessly and can serve stale tokens. The fingerprint here is a sha256 over each file's sha256
(with the label that decides the train/val split, engine/data/sources.py: Source.content), so
identical bytes give an identical cache at any path, with any mtimes, on any machine.

Hashing costs a read of the whole source: sha256 runs at ~0.75 s/GiB on this project's 2-core CPU
machine (page cache warm), 0.05 s for the built-in corpus (31.5 MB, 1790 files; ~0.2 s from a cold
disk), but ~15 s for 20 GB of parquet shards on every open by every rank. So each file's digest is
memoised in <cache_dir>/file-digests.json under its absolute path, size, mtime, ctime and inode,
the way git's index does: a file whose stat is unchanged is not re-read. The memo only saves
reads; the key is always content. A file modified in the last MEMO_MIN_AGE_S seconds is not
memoised, since a second write within the filesystem's timestamp granularity could leave its stat
unchanged (git's "racily clean" entries).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from pathlib import Path

from engine.runtime.diskspace import remove_quietly

MEMO_FILE = "file-digests.json"
MEMO_MIN_AGE_S = 2.0          # coarser than any filesystem's mtime granularity we expect (FAT: 2 s)
_CHUNK = 1 << 20


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _read_memo(path: Path) -> dict:
    try:
        memo = json.loads(path.read_text())
    except (OSError, ValueError):  # none, unreadable or damaged: it only saves reads, start afresh
        return {}
    return memo if isinstance(memo, dict) else {}


def _digests(paths: list[str], memo: dict) -> tuple[list[str], bool]:
    """Each path's sha256, from the memo where its stat is unchanged (new digests go into the
    memo); whether the memo changed."""
    out, changed, now = [], False, time.time_ns()
    for p in paths:
        key = os.path.abspath(p)
        st = os.stat(key)
        entry = memo.get(key)
        if isinstance(entry, list) and len(entry) == 2 and entry[0] == _stamp(st):
            out.append(entry[1])
            continue
        digest = file_sha256(key)
        out.append(digest)
        if now - max(st.st_mtime_ns, st.st_ctime_ns) > MEMO_MIN_AGE_S * 1e9:
            memo[key] = [_stamp(st), digest]
            changed = True
    return out, changed


def _lock(memo_dir: Path) -> int | None:
    """An exclusive lock on the memo (torchrun ranks opening one source at once then hash it once:
    the first, the others read the memo); None where the directory is not writable."""
    try:
        memo_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(memo_dir / (MEMO_FILE + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _write_memo(memo_dir: Path, memo: dict) -> None:
    tmp = memo_dir / (MEMO_FILE + f".tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, memo_dir / MEMO_FILE)
    except OSError:  # a full disk: the memo only saves reads, go without it
        remove_quietly(tmp)


def content_fingerprint(kind: str, content: list[tuple[str, str]], memo_dir: Path) -> str:
    """sha256 over (kind, [(label, sha256 of the file's bytes), ...]) of a source's files."""
    fd = _lock(memo_dir)
    try:
        memo = _read_memo(memo_dir / MEMO_FILE)
        digests, changed = _digests([p for _, p in content], memo)
        if changed and fd is not None:
            _write_memo(memo_dir, memo)
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock
    files = [[label, d] for (label, _), d in zip(content, digests)]
    return hashlib.sha256(json.dumps({"kind": kind, "files": files}).encode()).hexdigest()
