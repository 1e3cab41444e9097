"""Free-space checks and write-error messages for everything a run writes.

A full disk shows up in many disguises: `OSError(ENOSPC)` from a plain write, a `RuntimeError`
from torch's zip writer ("unexpected pos ..."), a DCP `CheckpointException` wrapping either. None
of them tells the user what happened or what is still safe. This module turns all of them into one
`StorageError` whose message names the path, the bytes needed and free, the last intact checkpoint
and what to do:

- `ensure_free(path, need, what, advice)` is called before a large write whose size is known
  (a checkpoint: the previous checkpoint's size or the state's byte count);
- `write_failure(path, need, what, cause, advice)` builds the message after a write failed;
- `storage_guard(out, advice=...)` wraps a whole run so that a write error anywhere (metrics,
  reports, run.json, the Fisher file) ends in that same one message instead of a traceback.

What is safe after a failure depends on the run's checkpoints, which this module does not read:
`checkpoint_advice(last_intact)` words it from the newest intact checkpoint that
engine.train.checkpoint found, and callers pass their advice in.

The callers remove their own partial temporary files; nothing here deletes anything.
"""
from __future__ import annotations

import errno
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

# Writes also need room for metadata (DCP's .metadata, extra.json, the manifest) and filesystems
# round up to blocks: ask for this much more than the payload.
SLACK_FRACTION = 0.05
SLACK_BYTES = 1 << 20
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# torch's zip writer reports a failed write as a RuntimeError with one of these texts
_TORCH_WRITE_ERRORS = ("PytorchStreamWriter failed", "inline_container", "unexpected pos")


class StorageError(RuntimeError):
    """A write could not be done (disk full, quota, I/O error); the message says what is safe."""


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged process may still write on the filesystem holding `path` (or its
    nearest existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def with_slack(nbytes: int) -> int:
    return int(nbytes * (1 + SLACK_FRACTION)) + SLACK_BYTES


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def ensure_free(path: Path, need: int, what: str, advice=lambda: "") -> None:
    """Raise StorageError when fewer than `need` bytes are free where `path` lives; `advice()`
    (called only then) says what is safe and what to do."""
    free = free_bytes(path)
    if free < need:
        raise StorageError(f"not enough disk space for {what}: it needs about {fmt_bytes(need)} in {path}, "
                           f"only {fmt_bytes(free)} free, so it was not written. {advice()}".rstrip())


def write_failure(path: Path, need: int | None, what: str, cause: BaseException, advice: str = "") -> StorageError:
    """The StorageError for a write of `what` into `path` that raised `cause`."""
    free = free_bytes(path)
    full = is_disk_full(cause) or (need is not None and free < need)
    head = f"the disk is full: writing {what} to {path} failed" if full else f"writing {what} to {path} failed"
    needed = f"it needs about {fmt_bytes(need)}, " if need is not None else ""
    return StorageError(f"{head} ({_first_line(cause)}); {needed}{fmt_bytes(free)} free. {advice}".rstrip())


def _wrapped(e: BaseException) -> list[BaseException]:
    """The exceptions `e` wraps: its cause and context, and a DCP CheckpointException's per-rank
    failures (a dict rank -> (exception, traceback))."""
    inner = [x for x in (e.__cause__, e.__context__) if x is not None]
    failures = getattr(e, "failures", None)
    if isinstance(failures, dict):
        inner += [f[0] if isinstance(f, tuple) else f for f in failures.values()]
    return inner


def _chain(e: BaseException) -> list[BaseException]:
    out, stack = [], [e]
    while stack:
        x = stack.pop()
        if all(x is not y for y in out):
            out.append(x)
            stack += _wrapped(x)
    return out


def is_disk_full(e: BaseException) -> bool:
    """True when `e` (or anything it wraps) is an out-of-space / quota error."""
    return any(isinstance(x, OSError) and x.errno in _FULL_ERRNOS for x in _chain(e))


def is_write_error(e: BaseException) -> bool:
    """An error a failed file write produces: OSError, or torch's zip writer's RuntimeError."""
    return any(isinstance(x, OSError) or (isinstance(x, RuntimeError) and any(s in str(x) for s in _TORCH_WRITE_ERRORS))
               for x in _chain(e))


def _first_line(e: BaseException) -> str:
    """The innermost error's first line (a CheckpointException's own text is a traceback dump)."""
    inner = [x for x in _chain(e) if not _wrapped(x)]
    x = inner[0] if inner else e
    text = str(x).strip().splitlines()
    line = f"{type(x).__name__}: {text[0]}" if text else type(x).__name__
    return line if len(line) <= 160 else line[:157] + "..."


def checkpoint_advice(last_intact: Path | None) -> str:
    """What is still safe in a run's checkpoint directory after a failed write, and what to do,
    given its newest intact checkpoint (engine.train.checkpoint finds it; None when there is none)."""
    if last_intact is None:
        return "No checkpoint of this run exists yet; free space or choose an --out on a larger disk, then rerun."
    return (f"The last intact checkpoint is {last_intact}; free space (or move the run to a larger disk) and rerun "
            f"the same command (launch/train.py: with --resume) to continue from it.")


def rerun_advice(out: Path) -> str:
    """What to do after a failed write in `out` when nothing more specific is known."""
    return (f"Free space (or move {out} to a larger disk) and rerun the same command (a miniseries keeps its "
            f"finished rungs and resumes an interrupted one from its newest intact checkpoint).")


@contextmanager
def storage_guard(out, what: str = "run output", advice: Callable[[], str] | None = None):
    """Turn a write error anywhere inside the block into one StorageError naming `out`'s state;
    `advice()` (called only then; default `rerun_advice(out)`) says what is safe and what to do."""
    try:
        yield
    except StorageError:
        raise
    except (OSError, RuntimeError) as e:
        if not is_write_error(e):
            raise
        path = Path(getattr(e, "filename", None) or out)
        text = advice() if advice is not None else rerun_advice(Path(out))
        raise write_failure(path, None, what, e, text) from e


def remove_quietly(path: Path) -> None:
    """Delete a partial file or directory left by a failed write (it may itself be half gone)."""
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        try:
            p.unlink()
        except FileNotFoundError:
            pass
