"""The one reader of JSON-lines files (metrics.jsonl, profile_windows.jsonl).

A run appends one JSON object per line and may be killed in the middle of a write, so the last
line of a file can be torn. `read_jsonl` returns every complete line's object and drops a torn
or blank line, wherever it is; it imports nothing of this project, so every layer may use it.
"""
from __future__ import annotations

import json
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    """The objects of every complete JSON line of `path`; a missing file raises OSError as open() does."""
    with open(path) as f:
        return _objects(f)


def read_jsonl_tail(path: Path, max_bytes: int = 65536) -> list[dict]:
    """The objects of the complete JSON lines in the last `max_bytes` of `path` (the first line there
    may be cut: it is dropped unless the window is the whole file), for a progress read of a long file."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - max_bytes))
        lines = f.read().decode("utf-8", errors="replace").splitlines()
    return [r for r in _objects(lines[1:] if size > max_bytes else lines) if isinstance(r, dict)]


def _objects(lines) -> list:
    """json.loads of each line, a blank or torn one (a kill in the middle of a write) dropped."""
    records = []
    for line in lines:
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a torn line: a kill in the middle of a write
    return records
