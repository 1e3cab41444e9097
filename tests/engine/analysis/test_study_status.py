"""A study's progress from its directory alone: finished runs counted, a run under way named with its
step, its pace and the time it has left; a directory without a study refused by name."""
import json

import pytest

from engine.analysis.study_status import study_status


def _run(path, total, steps, finished=False, dt=0.5):
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"total_steps": total}))
    lines = [json.dumps({"step": 0, "val_loss": 5.0})] + [json.dumps({"step": s, "dt": dt, "loss": 4.0})
                                                          for s in range(1, steps + 1)]
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n" + '{"step": 99')  # a torn last line
    if finished:
        (path / "final.json").write_text("{}")


def test_status_counts_finished_runs_and_times_the_ones_under_way(tmp_path):
    (tmp_path / "protocol.json").write_text(json.dumps({
        "status": "frozen", "settings": {"depths": [2, 3], "recipes": {"plain": {}}, "tune_seed": 5, "seeds": [7, 10]},
        "tuned": {"scratch_lr_mult": {"2": 1, "3": 0.5}, "inherit_lr_mult": {"plain": {"3": 2}}}}))
    _run(tmp_path / "tune/scratch/d2/b1", 10, 10, finished=True)
    _run(tmp_path / "seed10/scratch/d3/b1", 10, 10, finished=True)
    _run(tmp_path / "seed7/scratch/d3/stable", 1000, 400, dt=0.3)
    lines = study_status(tmp_path)
    assert lines[0] == f"study {tmp_path}: frozen; depths [2, 3], recipes plain, tuning seed 5, measured seeds 7, 10"
    assert lines[1] == "  tuned: scratch d2 x1, d3 x0.5; plain d3 x2"
    assert lines[2] == "tune: 1 run(s) finished, 0 under way or interrupted"
    # seeds in numeric order (seed7 before seed10); 600 steps left at 0.3 s/step = 3 min
    assert lines[3] == "seed7: 0 run(s) finished, 1 under way or interrupted"
    assert lines[4].startswith("  seed7/scratch/d3/stable: step 400/1000, ~3 min left at 0.30 s/step; last written")
    assert lines[5] == "seed10: 1 run(s) finished, 0 under way or interrupted" and len(lines) == 6


def test_a_directory_without_a_study_is_named(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path} holds no study \\(no protocol.json\\)"):
        study_status(tmp_path)
