"""The miniseries end to end, small enough for CI: a 2-rung ladder (d1 -> d2, scratch vs inherit) on
the built-in corpus, its summary.json contract, its report files, a rerun that skips finished rungs,
exact growth, and 2 torchrun ranks giving the summary of 1 rank."""
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# d1 -> d2 at ratio 0.05: 16 + 45 scratch steps and 22 inherited ones (~15 s on one busy core)
MINI = ["--depths", "1:2", "--arms", "scratch,inherit", "--ratio", "0.05", "--preset", "cpu-tiny", "--seq-len", "64",
        "--global-batch", "4", "--eval-tokens", "1024", "--fisher-batches", "2", "--no-progress", "--no-profile"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

RUNG_KEYS = {"depth", "params", "scaling_params", "tokens", "flops", "fisher_flops", "val_loss", "val_bpb", "wall_s"}
INHERIT_KEYS = RUNG_KEYS | {"start_val_loss", "growth_max_abs_logit_diff", "flops_to_match_scratch"}
LADDER_KEYS = {"flops", "wall_s", "rungs_matched", "flops_saving_vs_scratch"}


def run_miniseries(out, extra=(), nproc=1, check=True, timeout=300):
    script = str(ROOT / "launch/miniseries.py")
    cmd = [sys.executable, script] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script]
    p = subprocess.run(cmd + MINI + list(extra) + ["--out", str(out)], env=ENV, cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"miniseries failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def rung_files(out: Path) -> dict[str, str]:
    """sha256 of every file the rungs wrote (everything under OUT/<arm>/d<k>/)."""
    return {str(f.relative_to(out)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(out.glob("*/d*/**/*")) if f.is_file()}


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    out = tmp_path_factory.mktemp("mini") / "ladder"
    t0 = time.time()
    p = run_miniseries(out)
    return out, p, time.time() - t0


def test_summary_json_contract(ladder):
    out, _, _ = ladder
    s = json.loads((out / "summary.json").read_text())
    assert set(s["arms"]) == {"scratch", "inherit"} and set(s["ladder"]) == {"scratch", "inherit"}
    for arm, rows in s["arms"].items():
        assert [r["depth"] for r in rows] == [1, 2], arm
        for r in rows:
            want = INHERIT_KEYS if arm != "scratch" else RUNG_KEYS
            assert want <= set(r), (arm, r["depth"], sorted(want - set(r)))
            for k in RUNG_KEYS:
                assert isinstance(r[k], (int, float)) and r[k] == r[k], (arm, k, r[k])  # a number, not NaN
            assert r["params"] > r["scaling_params"] > 0 and r["tokens"] > 0 and r["flops"] > 0 and r["wall_s"] > 0
    base_s, d2_s = s["arms"]["scratch"]
    base_i, d2_i = s["arms"]["inherit"]
    assert base_i["val_loss"] == base_s["val_loss"]  # the lowest rung is shared by every arm
    assert d2_i["tokens"] < d2_s["tokens"]  # an inherited rung trains on a fraction of the scratch budget
    assert d2_i["fisher_flops"] > 0 and d2_s["fisher_flops"] == 0
    assert d2_i["growth_max_abs_logit_diff"] < 1e-4
    assert d2_i["flops_to_match_scratch"] is None or d2_i["flops_to_match_scratch"] > 0
    for arm, e in s["ladder"].items():
        assert LADDER_KEYS <= set(e), (arm, sorted(LADDER_KEYS - set(e)))
        assert e["flops"] > 0 and e["wall_s"] > 0 and 0 <= e["rungs_matched"] <= 2
    assert s["ladder"]["scratch"]["flops_saving_vs_scratch"] == 0.0
    saving = s["ladder"]["inherit"]["flops_saving_vs_scratch"]
    assert (saving is None) == (s["ladder"]["inherit"]["rungs_matched"] == 0)


def test_report_and_plots_exist(ladder):
    out, p, _ = ladder
    report = (out / "report.md").read_text()
    assert report.startswith("# Miniseries report") and "inherit" in report
    pngs = sorted(out.glob("*.png"))
    assert pngs and all(f.stat().st_size > 1000 for f in pngs), pngs
    for name in json.loads((out / "summary.json").read_text()).get("plots", []):
        assert (out / Path(name).name).is_file(), name
    assert f"report: {out / 'report.md'}" in p.stdout


def test_growth_is_exact(ladder):
    """The grown d2 starts where d1 ended: its step-0 val loss is d1's final val loss."""
    out, _, _ = ladder
    s = json.loads((out / "summary.json").read_text())
    base, grown = s["arms"]["inherit"]
    assert grown["start_val_loss"] == pytest.approx(base["val_loss"], abs=1e-4)
    first = json.loads((out / "inherit/d2/metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0 and first["val_loss"] == grown["start_val_loss"]


def test_rerun_skips_finished_rungs(ladder):
    out, _, _ = ladder
    before = rung_files(out)
    summary = json.loads((out / "summary.json").read_text())
    p = run_miniseries(out)
    assert "scratch d" not in p.stdout and "growth logit error" not in p.stdout, p.stdout  # nothing trained
    assert rung_files(out) == before  # every rung file untouched, checkpoints included
    again = json.loads((out / "summary.json").read_text())
    assert again["arms"] == summary["arms"] and again["ladder"] == summary["ladder"]
    # (no wall-clock bound: timings belong in benchmarks; the file checks above are the real test)


def test_rerun_with_another_configuration_is_refused(ladder, tmp_path):
    out, _, _ = ladder
    p = run_miniseries(out, ["--seed", "1"], check=False)
    assert p.returncode != 0 and "holds a finished rung of a different configuration" in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]


@pytest.mark.distributed
def test_two_ranks_give_the_summary_of_one(ladder, tmp_path):
    """The whole miniseries, growth included, under torchrun with 2 CPU ranks (FSDP2). fp32 reductions
    sum in another order across 2 ranks, so the stated tolerance is 1e-4 relative on every loss."""
    out1, _, _ = ladder
    out2 = tmp_path / "two"
    run_miniseries(out2, nproc=2, timeout=300)
    s1, s2 = (json.loads((o / "summary.json").read_text()) for o in (out1, out2))
    assert set(s1["arms"]) == set(s2["arms"])
    for arm in s1["arms"]:
        for r1, r2 in zip(s1["arms"][arm], s2["arms"][arm], strict=True):
            assert r1["depth"] == r2["depth"]
            for k in ("params", "scaling_params", "tokens", "flops", "fisher_flops"):
                assert r1[k] == r2[k], (arm, r1["depth"], k)
            for k in ("val_loss", "val_bpb", "start_val_loss"):
                assert r2[k] == pytest.approx(r1[k], rel=1e-4), (arm, r1["depth"], k, r1[k], r2[k])
    for arm in s1["ladder"]:
        assert s2["ladder"][arm]["flops"] == s1["ladder"][arm]["flops"]
        assert s2["ladder"][arm]["rungs_matched"] == s1["ladder"][arm]["rungs_matched"]
    finals = [json.loads(f.read_text()) for f in out2.glob("*/d*/final.json")]
    assert finals and all(f["world_size"] == 2 for f in finals)
    # rerunning under torchrun skips every finished rung on every rank (no rank trains alone)
    before = rung_files(out2)
    p = run_miniseries(out2, nproc=2, timeout=120)
    assert "scratch d" not in p.stdout and "growth logit error" not in p.stdout, p.stdout
    assert rung_files(out2) == before
