"""The run-directory reader (engine/analysis/runs.py); the JSON-lines reader under it:
tests/engine/runtime/test_jsonl.py."""
import json

from engine.analysis.runs import eval_records, full_budget, last_eval, rung_cost


def test_last_eval_skips_a_torn_evaluation_line(tmp_path):
    lines = [{"step": 1, "loss": 5.0}, {"step": 2, "val_loss": 4.0, "val_loss_se": 0.1}, {"step": 3, "loss": 4.5}]
    text = "".join(json.dumps(r) + "\n" for r in lines)
    (tmp_path / "metrics.jsonl").write_text(text + '{"step": 4, "val_loss": 3.')
    assert last_eval(tmp_path) == lines[1]
    assert eval_records(tmp_path) == [lines[1]]
    (tmp_path / "metrics.jsonl").write_text(json.dumps(lines[0]) + "\n")
    assert last_eval(tmp_path) == {}


def test_rung_cost_adds_fisher_and_penalty_work():
    assert rung_cost({"flops": 3.0, "fisher_flops": 1.0, "penalty_flops": 0.5}) == 4.5
    assert rung_cost({"flops": 3.0}) == 3.0
    assert rung_cost({"flops": 3.0, "fisher_flops": None, "penalty_flops": None}) == 3.0


def test_full_budget_is_the_largest_budget_run():
    rung = {"runs": [{"budget_frac": 0.5, "id": "a"}, {"budget_frac": 1.0, "id": "b"},
                     {"budget_frac": 0.25, "id": "c"}]}
    assert full_budget(rung)["id"] == "b"
