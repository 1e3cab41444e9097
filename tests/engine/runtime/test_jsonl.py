"""The JSON-lines reader (engine/runtime/jsonl.py): a torn last line (a kill mid-write) and blank
lines dropped."""
import json

import pytest

from engine.runtime.jsonl import read_jsonl, read_jsonl_tail


def test_read_jsonl_drops_torn_and_blank_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n\n{"step": 2}\n{"step": 3, "val_lo')  # killed mid-write
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    with pytest.raises(OSError):
        read_jsonl(tmp_path / "missing.jsonl")


def test_the_tail_drops_the_line_its_window_cuts_and_a_torn_last_one(tmp_path):
    path = tmp_path / "m.jsonl"
    lines = [json.dumps({"step": s, "pad": "x" * 20}) for s in range(100)]
    path.write_text("\n".join(lines) + '\n{"step": 10')
    window = len(lines[-1]) * 3 + 20  # the last three lines, part of the fourth and the torn one
    assert [r["step"] for r in read_jsonl_tail(path, window)] == [97, 98, 99]
    assert [r["step"] for r in read_jsonl_tail(path, 10**6)] == list(range(100))  # the whole file: nothing cut
