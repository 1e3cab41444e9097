"""The metrics log (engine/train/metrics_log.py) on resume."""
import json

from engine.train.metrics_log import MetricsLog


def test_metrics_log_drops_a_torn_last_line_on_resume(tmp_path):
    """A kill in the middle of a metrics write leaves a torn line; resuming drops it with the lines
    past the checkpoint instead of failing on it."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    log = MetricsLog(path, resume_step=2, enabled=True)
    log.write({"step": 3})
    log.close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 1, 2, 3]
