"""metrics.jsonl of one run: one line per optimizer step (1-based "step"; step 0 is the
evaluation before training), written as the loop settles each step."""
from __future__ import annotations

import json
from pathlib import Path

from engine.runtime.jsonl import read_jsonl


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
            # json.dumps(json.loads(line)) gives back the bytes json.dumps wrote (shortest float repr)
            keep = [r for r in read_jsonl(path) if isinstance(r.get("step"), int) and r["step"] <= resume_step]
            path.write_text("".join(json.dumps(r) + "\n" for r in keep))
        self.f = open(path, "a")

    def write(self, rec: dict):
        if self.enabled:
            self.f.write(json.dumps(rec) + "\n")
            self.f.flush()

    def close(self):
        if self.enabled:
            self.f.close()
