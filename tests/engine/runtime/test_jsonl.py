"""The JSON-lines reader (engine/runtime/jsonl.py): a torn last line (a kill mid-write) and blank
lines dropped."""
import pytest

from engine.runtime.jsonl import read_jsonl


def test_read_jsonl_drops_torn_and_blank_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n\n{"step": 2}\n{"step": 3, "val_lo')  # killed mid-write
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    with pytest.raises(OSError):
        read_jsonl(tmp_path / "missing.jsonl")
