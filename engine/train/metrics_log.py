"""metrics.jsonl of one run: one line per optimizer step (1-based "step"; step 0 is the
evaluation before training), written as the loop settles each step."""
from __future__ import annotations

import json
from pathlib import Path


def _step_of(line: str) -> int | None:
    """The step of a metrics line, or None for a blank or torn one."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


class MetricsLog:
    """metrics.jsonl, appended one line per optimizer step. On resume, lines past the checkpoint's
    step (written before a crash) are dropped so the file reads as one uninterrupted run; so is a
    torn line (a kill in the middle of a write), which is necessarily after the checkpoint."""

    def __init__(self, path: Path, resume_step: int | None, enabled: bool):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        if resume_step is None:
            path.write_text("")
        elif path.exists():
            steps = [(l, _step_of(l)) for l in path.read_text().splitlines()]
            keep = [l for l, k in steps if k is not None and k <= resume_step]
            path.write_text("".join(l + "\n" for l in keep))
        self.f = open(path, "a")

    def write(self, rec: dict):
        if self.enabled:
            self.f.write(json.dumps(rec) + "\n")
            self.f.flush()

    def close(self):
        if self.enabled:
            self.f.close()
