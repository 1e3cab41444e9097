"""Storage errors (engine/runtime/diskspace.py): a write error named as a full disk or a failed
write with the directory and free space, other errors left alone, no partial file left."""
from __future__ import annotations

import pytest

from engine.runtime import diskspace
from engine.runtime.diskspace import StorageError, storage_guard
from engine.train import checkpoint as ckpt
from tests.helpers.faults import enospc


def test_json_write_on_a_full_disk_leaves_no_partial_file(small_fs):
    d = small_fs(1)
    (d / "filler").write_bytes(b"\0" * (diskspace.free_bytes(d) - 4096))
    with pytest.raises(StorageError, match=rf"^the disk is full: writing run output to {d}/run.json failed \(OSError: "
                                           r".*No space left on device.*\); .* free\. Free space .* and rerun the "
                                           r"same command"):
        with storage_guard(d):
            ckpt.write_json_atomic(d / "run.json", {"x": "y" * 100_000})
    assert sorted(p.name for p in d.iterdir()) == ["filler"]


def test_storage_guard_names_write_errors_and_passes_others(tmp_path):
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(StorageError, match=rf"the disk is full: writing run output to {tmp_path}/metrics.jsonl failed "
                                           rf"\(OSError: .*No space left"):
        with storage_guard(tmp_path):
            raise enospc(tmp_path / "metrics.jsonl")
    with pytest.raises(StorageError, match=r"unexpected pos 704 vs 598"):
        with storage_guard(tmp_path):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    with pytest.raises(RuntimeError, match="^a bug$"):  # not a write error: left alone
        with storage_guard(tmp_path):
            raise RuntimeError("a bug")
