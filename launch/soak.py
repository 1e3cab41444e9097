"""Soak test (not in CI): a small CPU miniseries (or study: --target study) under random SIGKILLs,
restarted with the same command until it finishes, again and again for --minutes; every finished round
must equal an uninterrupted run of the same command, bitwise (val losses, FLOPs, tuned values, every
metrics.jsonl line but its wall time).

    python launch/soak.py --minutes 30                  # the committed result: docs/results/soak-<date>.{json,md}
    python launch/soak.py --minutes 30 --target study --depths 1:2    # docs/results/soak-<date>-study.{json,md}
    python launch/soak.py --minutes 2 --results /tmp    # a quick look

1. the reference: the miniseries once, uninterrupted, in OUT/reference (its wall time T sets the kill clock);
2. round k in OUT/round<k>: start the command, SIGKILL its process group after a random delay in
   [--min-delay, --max-delay-frac x T] (seeded), start it again, ... until a start runs to completion; compare with 1;
3. rounds continue while time is left; the last round stops being killed when the time is up and runs
   to completion. The exit status is 1 when any round differs from the reference.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.train.guard import HOST_SYNC_MODES  # noqa: E402
from launch.argtypes import nonneg_int, positive_int  # noqa: E402
from models.config import parse_depths  # noqa: E402

# every number of a summary.json run row / ladder entry that does not measure time
TIMELESS = ("depth", "budget_frac", "params", "scaling_params", "tokens", "flops", "fisher_flops", "penalty_flops",
            "val_loss", "val_loss_se", "val_bpb", "growth_max_abs_logit_diff", "steps")
LADDER_KEYS = ("saving", "kind", "inherit_flops", "scratch_flops")


def miniseries_args(a) -> list[str]:
    return ["--depths", a.depths, "--arms", a.arms, "--ratio", str(a.ratio), "--preset", "cpu-tiny",
            "--seq-len", str(a.seq_len), "--global-batch", str(a.global_batch), "--eval-tokens", "1024",
            "--fisher-batches", "2", "--ckpt-every", str(a.ckpt_every), "--seed", str(a.seed),
            "--no-progress", "--no-profile", "--host-sync", a.host_sync]


def study_args(a) -> list[str]:
    """The study's phases at the miniseries' size: tuning (3-point brackets, one extension, an edge
    accepted) on seed+100, then two measured seeds, each phase two training processes at once."""
    return ["--depths", a.depths, "--ratio", str(a.ratio), "--preset", "cpu-tiny", "--seq-len", str(a.seq_len),
            "--global-batch", str(a.global_batch), "--eval-tokens", "1024", "--ckpt-every", str(a.ckpt_every),
            "--scratch-budgets", "0.5,1", "--inherit-budgets", "0.5,1", "--tune-seed", str(a.seed + 100),
            "--seeds", f"{a.seed},{a.seed + 1}", "--max-extend", "1", "--accept-edge", "--no-progress",
            "--no-profile", "--host-sync", a.host_sync]


TARGETS = {"miniseries": ("launch/miniseries.py", miniseries_args), "study": ("launch/study.py", study_args)}


def command(a, out: Path) -> list[str]:
    script, args = TARGETS[a.target]
    script = str(ROOT / script)
    head = [sys.executable, script] if a.nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.nproc}", script]
    return head + args(a) + ["--out", str(out)]


def start(a, out: Path, log) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "PYTHONUNBUFFERED": "1"}
    # its own process group, so a SIGKILL reaches torchrun's workers too (and nothing of ours else)
    return subprocess.Popen(command(a, out), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def kill(proc: subprocess.Popen):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def differences(got: Path, ref: Path) -> list[str]:
    """What differs between two finished miniseries or studies (empty: bitwise equal but for wall times)."""
    try:
        sg, sr = (json.loads((d / "summary.json").read_text()) for d in (got, ref))
    except FileNotFoundError as e:
        return [f"missing {e.filename}"]
    diffs = _summary_differences(sg, sr) if "arms" in sr else _study_differences(got, ref, sg, sr)
    return diffs + _metrics_differences(got, ref)


def _study_differences(got: Path, ref: Path, sg: dict, sr: dict) -> list[str]:
    """A study: the tuned values (and every tuning point's objective) and the answer table."""
    pg, pr = (json.loads((d / "protocol.json").read_text()) for d in (got, ref))
    diffs = [] if pg["tuned"] == pr["tuned"] else ["protocol.json tuned values differ"]
    return diffs + ([] if sg["answer"] == sr["answer"] else ["summary.json answer table differs"])


def _summary_differences(sg: dict, sr: dict) -> list[str]:
    """A miniseries: every run row's and ladder entry's numbers that do not measure time."""
    if set(sg["arms"]) != set(sr["arms"]):
        return [f"arms {sorted(sg['arms'])} vs {sorted(sr['arms'])}"]
    diffs = []
    for arm in sr["arms"]:
        if len(sg["arms"][arm]) != len(sr["arms"][arm]):
            diffs.append(f"{arm}: {len(sg['arms'][arm])} rungs vs {len(sr['arms'][arm])}")
            continue
        for a, b in zip(sg["arms"][arm], sr["arms"][arm]):
            for k in TIMELESS:
                if a.get(k) != b.get(k):
                    diffs.append(f"summary {arm} d{b.get('depth')} {k}: {a.get(k)!r} vs {b.get(k)!r}")
    for arm in sr["ladder"]:
        for k in LADDER_KEYS:
            if sg["ladder"].get(arm, {}).get(k) != sr["ladder"][arm].get(k):
                diffs.append(f"ladder {arm} {k}: {sg['ladder'].get(arm, {}).get(k)!r} vs {sr['ladder'][arm].get(k)!r}")
    return diffs


def _metrics_differences(got: Path, ref: Path) -> list[str]:
    diffs = []
    runs = sorted(str(f.parent.relative_to(ref)) for f in ref.glob("**/metrics.jsonl"))
    for run in runs:
        def lines(d):
            f = d / run / "metrics.jsonl"
            if not f.exists():
                return None
            return [{k: v for k, v in json.loads(line).items() if k != "dt"}
                    for line in f.read_text().splitlines() if line.strip()]

        lg, lr = lines(got), lines(ref)
        if lg != lr:
            first = next((i for i, (x, y) in enumerate(zip(lg or [], lr)) if x != y), min(len(lg or []), len(lr)))
            diffs.append(f"{run}/metrics.jsonl differs from line {first} ({len(lg or [])} vs {len(lr)} lines)")
    return diffs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="time for the killed rounds (the reference is extra)")
    p.add_argument("--seed", type=int, default=0, help="seeds the kill times and the miniseries")
    p.add_argument("--target", default="miniseries", choices=sorted(TARGETS), help="what is killed and restarted")
    p.add_argument("--depths", default="1:3")
    p.add_argument("--arms", default="scratch,inherit")
    p.add_argument("--ratio", type=float, default=0.1)
    p.add_argument("--seq-len", dest="seq_len", type=positive_int, default=64)
    p.add_argument("--global-batch", dest="global_batch", type=positive_int, default=4)
    p.add_argument("--ckpt-every", dest="ckpt_every", type=nonneg_int, default=5)
    p.add_argument("--nproc", type=positive_int, default=1, help="ranks per run (torchrun, CPU gloo) when > 1")
    p.add_argument("--threads", type=positive_int, default=1, help="OMP_NUM_THREADS of the runs")
    p.add_argument("--min-delay", dest="min_delay", type=float, default=0.5, help="shortest time before a kill, s")
    p.add_argument("--max-delay-frac", dest="max_delay_frac", type=float, default=0.6,
                   help="longest time before a kill, as a fraction of the reference's wall time")
    p.add_argument("--max-starts", dest="max_starts", type=positive_int, default=60,
                   help="starts per round before giving up")
    p.add_argument("--host-sync", dest="host_sync", default="auto", choices=HOST_SYNC_MODES,
                   help="the runs' --host-sync (lagged: the device-side non-finite skip, read a step late)")
    p.add_argument("--out", default="runs/soak")
    p.add_argument("--results", default=str(ROOT / "docs/results"), help="where soak-<date>.{json,md} go")
    a = p.parse_args(argv)
    for k in ("minutes", "ratio", "min_delay", "max_delay_frac"):
        if not getattr(a, k) > 0:
            p.error(f"--{k.replace('_', '-')} must be > 0, got {getattr(a, k)}")
    try:
        parse_depths(a.depths)  # refused here, not after the reference run (passed on to the miniseries as given)
    except ValueError as e:
        p.error(str(e))

    out = Path(a.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rng = random.Random(a.seed)
    t_begin = time.time()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    commit = (commit or "unknown") + (" (with uncommitted changes)" if dirty else "")
    date = time.strftime("%Y-%m-%d", time.gmtime())

    # 1. the uninterrupted reference
    ref = out / "reference"
    with open(out / "reference.log", "w") as log:
        t0 = time.time()
        rc = start(a, ref, log).wait()
    t_ref = time.time() - t0
    if rc != 0:
        sys.exit(f"the reference miniseries failed (exit {rc}); see {out / 'reference.log'}")
    print(f"[soak] reference: {t_ref:.1f} s -> {ref}", flush=True)

    # 2. killed rounds
    deadline = time.time() + 60 * a.minutes
    rounds = []
    while time.time() < deadline:
        k = len(rounds)
        run = out / f"round{k}"
        kills, starts, finished = [], 0, False
        with open(out / f"round{k}.log", "w") as log:
            while starts < a.max_starts:
                starts += 1
                proc = start(a, run, log)
                delay = (rng.uniform(a.min_delay, max(a.min_delay, a.max_delay_frac * t_ref))
                         if time.time() < deadline else None)
                try:
                    rc = proc.wait(timeout=delay)
                except subprocess.TimeoutExpired:
                    kill(proc)
                    kills.append(round(delay, 3))
                    continue
                if rc == 0:
                    finished = True
                    break
                log.write(f"\n[soak] start {starts} exited with {rc}\n")
                log.flush()
                rounds.append({"round": k, "starts": starts, "kills": kills, "finished": False, "exit": rc})
                break
        if not finished:
            if not rounds or rounds[-1]["round"] != k:
                rounds.append({"round": k, "starts": starts, "kills": kills, "finished": False})
            print(f"[soak] round {k}: did not finish ({starts} starts); see {out / f'round{k}.log'}", flush=True)
            break
        diffs = differences(run, ref)
        rounds.append({"round": k, "starts": starts, "kills": kills, "finished": True, "equal": not diffs,
                       "differences": diffs[:20]})
        print(f"[soak] round {k}: {len(kills)} SIGKILLs, {starts} starts, "
              f"{'equal to the reference' if not diffs else f'{len(diffs)} DIFFERENCES'}", flush=True)
        if not diffs:
            shutil.rmtree(run, ignore_errors=True)  # keep the disk small; a differing round is kept

    ok = bool(rounds) and all(r.get("equal") for r in rounds)
    import torch

    result = {
        "date": date, "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t_begin)),
        "minutes": a.minutes, "wall_s": time.time() - t_begin, "reference_s": t_ref, "seed": a.seed,
        "command": " ".join(["python", TARGETS[a.target][0]] + TARGETS[a.target][1](a) + ["--out", "OUT"]),
        "commit": commit, "nproc": a.nproc, "threads": a.threads,
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                 "torch": torch.__version__},
        "rounds": rounds, "total_kills": sum(len(r["kills"]) for r in rounds),
        "rounds_finished": sum(r["finished"] for r in rounds),
        "rounds_equal": sum(bool(r.get("equal")) for r in rounds), "all_equal": ok,
        "compared": ("summary.json (every field but wall times)" if a.target == "miniseries" else
                     "protocol.json's tuned values and every tuning point, summary.json's answer table")
                    + " and every metrics.jsonl line but 'dt', bitwise",
    }
    res_dir = Path(a.results)
    res_dir.mkdir(parents=True, exist_ok=True)
    stem = f"soak-{date}" + ("" if a.target == "miniseries" else f"-{a.target}") + (
        "" if a.host_sync == "auto" else f"-{a.host_sync}")
    jpath, mpath = res_dir / f"{stem}.json", res_dir / f"{stem}.md"
    jpath.write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# Soak: random SIGKILLs during a CPU {a.target} ({date})", "",
             f"Command (each start, in a fresh `OUT` per round): `{result['command']}`"
             + (f" under torchrun with {a.nproc} ranks" if a.nproc > 1 else "") + f", OMP_NUM_THREADS={a.threads}.", "",
             f"- {a.minutes:g} minutes of killed rounds after an uninterrupted reference run ({t_ref:.1f} s), "
             f"kill delays uniform in [{a.min_delay:g} s, {max(a.min_delay, a.max_delay_frac * t_ref):.1f} s], seed "
             f"{a.seed}",
             f"- {result['total_kills']} SIGKILLs over {len(rounds)} rounds; {result['rounds_finished']} finished, "
             f"{result['rounds_equal']} equal to the reference",
             f"- compared: {result['compared']}",
             f"- verdict: **{'PASS: every round equals the uninterrupted run' if ok else 'FAIL'}**", "",
             "| round | starts | SIGKILLs | kill delays (s) | equal |", "|---|---|---|---|---|"]
    for r in rounds:
        delays = ", ".join(f"{d:.1f}" for d in r["kills"][:12]) + (" ..." if len(r["kills"]) > 12 else "")
        if r.get("equal"):
            equal = "yes"
        elif r["finished"]:
            equal = "NO: " + "; ".join(r.get("differences", [])[:3])
        else:
            equal = "did not finish"
        lines.append(f"| {r['round']} | {r['starts']} | {len(r['kills'])} | {delays} | {equal} |")
    lines += ["", f"Code: commit {commit}. Host: {result['host']}. Wall time {result['wall_s'] / 60:.1f} min."]
    mpath.write_text("\n".join(lines) + "\n")
    print(f"[soak] {'PASS' if ok else 'FAIL'}: {jpath} {mpath}", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
