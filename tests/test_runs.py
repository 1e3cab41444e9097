"""The run-directory reader (engine/analysis/runs.py) and the JSON-lines reader under it
(engine/runtime/jsonl.py)."""
import json

import pytest

from engine.analysis.runs import full_budget, last_eval, rung_cost
from engine.runtime.jsonl import read_jsonl


def test_read_jsonl_drops_torn_and_blank_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n\n{"step": 2}\n{"step": 3, "val_lo')  # killed mid-write
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    with pytest.raises(OSError):
        read_jsonl(tmp_path / "missing.jsonl")


def test_last_eval_skips_a_torn_evaluation_line(tmp_path):
    lines = [{"step": 1, "loss": 5.0}, {"step": 2, "val_loss": 4.0, "val_loss_se": 0.1}, {"step": 3, "loss": 4.5}]
    text = "".join(json.dumps(r) + "\n" for r in lines)
    (tmp_path / "metrics.jsonl").write_text(text + '{"step": 4, "val_loss": 3.')
    assert last_eval(tmp_path) == lines[1]
    (tmp_path / "metrics.jsonl").write_text(json.dumps(lines[0]) + "\n")
    assert last_eval(tmp_path) == {}


def test_rung_cost_adds_fisher_and_penalty_work():
    assert rung_cost({"flops": 3.0, "fisher_flops": 1.0, "penalty_flops": 0.5}) == 4.5
    assert rung_cost({"flops": 3.0}) == 3.0
    assert rung_cost({"flops": 3.0, "fisher_flops": None, "penalty_flops": None}) == 3.0


def test_full_budget_is_the_largest_budget_run():
    rung = {"runs": [{"budget_frac": 0.5, "id": "a"}, {"budget_frac": 1.0, "id": "b"}, {"budget_frac": 0.25, "id": "c"}]}
    assert full_budget(rung)["id"] == "b"
