"""launch/train.py and launch/miniseries.py run as a user runs them, in subprocesses on the
built-in corpus, small and fast (d1/d2 cpu-tiny shapes, 64-token context, 4-sequence batches),
and the metrics they write read back."""
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT


# Small and fast: d2 cpu-tiny shapes with a 64-token context and 4-sequence batches.
FAST = ["--preset", "cpu-tiny", "--seq-len", "64", "--global-batch", "4", "--eval-tokens", "1024",
        "--no-progress", "--no-profile"]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_train(args, out, check=True, nproc=1, timeout=600):
    cmd = [sys.executable, str(ROOT / "launch/train.py")] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        str(ROOT / "launch/train.py")]
    p = subprocess.run(cmd + FAST + args + ["--out", str(out)], env=ENV, cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"train failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def losses(out):
    return {m["step"]: m["loss"] for m in map(json.loads, (Path(out) / "metrics.jsonl").read_text().splitlines())
            if "loss" in m}


# The plain recipe (exact growth, the parent's stream re-read, a fresh AdamW): LadderConfig's defaults, not
# the launcher's (depth copying + continue + carried moments, the measured best)
PLAIN = ["--depth-init", "identity", "--data-order", "restart", "--optimizer-state", "fresh"]

# d1 -> d2 at ratio 0.05 (16 and 45 scratch steps), two budgets per rung, WSD branches
MINI = ["--depths", "1:2", "--arms", "scratch,inherit", "--ratio", "0.05", "--preset", "cpu-tiny", "--seq-len", "64",
        "--global-batch", "4", "--eval-tokens", "1024", "--fisher-batches", "2", "--no-progress", "--no-profile",
        "--scratch-budgets", "0.5,1", "--inherit-budgets", "0.5,1", *PLAIN]


# MINI's inherit arm: its directory and label name the Fisher batches (2, not LadderConfig's 20), a
# setting of its identity (engine/ladder/config.rung_identity)
INHERIT = "inherit+fisher_batches=2"


def run_miniseries(out, extra=(), nproc=1, check=True, timeout=300):
    script = str(ROOT / "launch/miniseries.py")
    cmd = [sys.executable, script] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script]
    p = subprocess.run(cmd + MINI + list(extra) + ["--out", str(out)], env=ENV, cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"miniseries failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p
