"""The miniseries end to end, small enough for CI: a 2-rung ladder (d1 -> d2, scratch vs inherit) with
budget curves on the built-in corpus, its summary.json contract, its report files, a rerun that skips
finished runs, exact growth, WSD branches equal to standalone runs, and 2 torchrun ranks giving the
summary of 1 rank."""
import hashlib
import json
import shutil
import math
import time
from pathlib import Path

import pytest

from engine.runtime.distributed import init_distributed
from engine.train.config import TrainConfig
from engine.train.trainer import train_rung
from engine.train.config import TRAIN_PRESETS
from tests.helpers.runs import INHERIT, run_miniseries


RUN_KEYS = {"depth", "budget_frac", "params", "scaling_params", "tokens", "flops", "fisher_flops", "val_loss",
            "val_loss_se", "val_bpb", "wall_s", "cost"}


ANSWER_KEYS = {"status", "flops_to_match", "fraction", "marginal_saving", "standalone_saving", "iso_loss", "grown_from"}


def rung_files(out: Path) -> dict[str, str]:
    """sha256 of every file the runs wrote (everything under OUT/<arm>/d<k>/)."""
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
    assert set(s["arms"]) == {"scratch", INHERIT} and set(s["answer"]) == set(s["ladder"]) == {INHERIT}
    for arm, rows in s["arms"].items():
        assert [(r["depth"], r["budget_frac"]) for r in rows] == [(1, 0.5), (1, 1.0), (2, 0.5), (2, 1.0)], arm
        for r in rows:
            assert RUN_KEYS <= set(r), (arm, r["depth"], sorted(RUN_KEYS - set(r)))
            for k in RUN_KEYS:
                assert isinstance(r[k], (int, float)) and r[k] == r[k], (arm, k, r[k])  # a number, not NaN
            assert r["params"] > r["scaling_params"] > 0 and r["tokens"] > 0 and r["flops"] > 0 and r["wall_s"] > 0
    sc, inh = s["arms"]["scratch"], s["arms"][INHERIT]
    assert inh[:2] == sc[:2]  # the lowest rung is shared by every arm
    assert inh[2]["tokens"] < inh[3]["tokens"] == sc[3]["tokens"]  # budgets are fractions of the scratch budget
    assert inh[3]["fisher_flops"] > 0 and sc[3]["fisher_flops"] == 0
    assert inh[3]["growth_max_abs_logit_diff"] < 1e-4
    a = s["answer"][INHERIT]["d2"]
    assert ANSWER_KEYS <= set(a) and a["target_loss"] == sc[3]["val_loss"] and a["scratch_flops"] == sc[3]["cost"]
    assert a["grown_from"]["budget_frac"] in (0.5, 1.0) and a["growth_factor"] > 1
    lad = s["ladder"][INHERIT]
    assert lad["scratch_flops"] == sc[1]["cost"] + sc[3]["cost"] and lad["kind"] in ("exact", "at most", "at least")
    assert math.isclose(lad["saving"], 1 - lad["inherit_flops"] / lad["scratch_flops"])


def test_branches_are_finished_wsd_runs(ladder, tmp_path, one_thread):
    """A budget run branched from the stable run equals a standalone run of that budget with the WSD
    schedule and the same warmup, bitwise (the point of WSD branching). One thread, as the ladder's
    subprocess (OMP_NUM_THREADS=1): with two, CPU reductions split differently and the val loss
    differs in the 7th digit (measured on the machine of 2026-12-02: 6.5190027 vs 6.5190032)."""
    out, _, _ = ladder
    branch = out / "scratch/d2/b0.5"
    cfg = json.loads((branch / "run.json").read_text())["config"]
    stand = dict(cfg, out=str(tmp_path / "standalone"), init_from=None, keep_ckpt_steps=[], resume=False)
    got = train_rung(TrainConfig(**stand), init_distributed("cpu"))
    want = json.loads((branch / "final.json").read_text())
    for k in ("val_loss", "val_bpb", "flops", "tokens", "steps"):
        assert got[k] == want[k], k
    m = [json.loads(line) for line in (branch / "metrics.jsonl").read_text().splitlines()]
    assert (m[0]["step"] == round(0.8 * cfg["steps"]) + 1 and m[-1]["step"] == cfg["steps"]
            and m[-1]["lr_mult"] == pytest.approx(0.05))


def test_report_and_plots_exist(ladder):
    out, p, _ = ladder
    report = (out / "report.md").read_text()
    assert report.startswith("# Miniseries report") and report.splitlines()[2] == "## The answer"
    assert f"**{INHERIT} d2**" in report and f"**{INHERIT} ladder**" in report
    pngs = sorted(out.glob("*.png"))
    assert pngs and all(f.stat().st_size > 1000 for f in pngs), pngs
    for name in json.loads((out / "summary.json").read_text()).get("plots", []):
        assert (out / Path(name).name).is_file(), name
    assert f"report: {out / 'report.md'}" in p.stdout


def test_growth_is_exact(ladder):
    """The grown d2 starts where the d1 run it grew from ended: the stable run's step-0 val loss is
    that run's final val loss."""
    out, _, _ = ladder
    s = json.loads((out / "summary.json").read_text())
    src = s["grown_from"][INHERIT]["d2"]
    first = json.loads((out / INHERIT / "d2/stable/metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0 and first["val_loss"] == pytest.approx(src["val_loss"], abs=1e-4)


def test_rerun_skips_finished_rungs(ladder):
    out, _, _ = ladder
    before = rung_files(out)
    summary = json.loads((out / "summary.json").read_text())
    p = run_miniseries(out)
    assert "steps ->" not in p.stdout and "growth logit error" not in p.stdout, p.stdout  # nothing trained
    assert rung_files(out) == before  # every run file untouched, checkpoints included
    again = json.loads((out / "summary.json").read_text())
    assert again["arms"] == summary["arms"] and again["ladder"] == summary["ladder"]


def test_rerun_with_another_configuration_is_refused(ladder, tmp_path):
    out, _, _ = ladder
    p = run_miniseries(out, ["--seed", "1"], check=False)
    assert p.returncode != 0 and "holds a finished run of a different configuration" in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]


def test_rerun_with_another_lambda_lands_in_its_own_directory(ladder, tmp_path):
    """The issue's case: another lambda into the same OUT neither reuses the old grown runs nor
    overwrites them; the new arm gets its own directory, the scratch rungs are shared."""
    out = tmp_path / "copy"
    shutil.copytree(ladder[0], out)
    before = {f: f.read_bytes() for f in out.glob(f"{INHERIT}/d2/*/final.json")}
    p = run_miniseries(out, ["--lam", "2e4"])
    assert "scratch" not in "".join(line for line in p.stdout.splitlines() if "stable run:" in line), p.stdout
    new = out / "inherit+lam=20000+fisher_batches=2"
    assert (new / "d2" / "b1" / "final.json").exists()
    assert json.loads((new / "d2" / "identity.json").read_text())["lam"] == 2e4
    assert {f: f.read_bytes() for f in before} == before  # the old arm untouched
    s = json.loads((out / "summary.json").read_text())
    assert set(s["arms"]) == {"scratch", "inherit+lam=20000+fisher_batches=2"}


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
            assert (r1["depth"], r1["budget_frac"]) == (r2["depth"], r2["budget_frac"])
            for k in ("params", "scaling_params", "tokens", "flops", "fisher_flops"):
                assert r1[k] == r2[k], (arm, r1["depth"], k)
            for k in ("val_loss", "val_bpb"):
                assert r2[k] == pytest.approx(r1[k], rel=1e-4), (arm, r1["depth"], k, r1[k], r2[k])
    for arm in s1["ladder"]:
        assert s2["ladder"][arm]["scratch_flops"] == s1["ladder"][arm]["scratch_flops"]
    finals = [json.loads(f.read_text()) for f in out2.glob("*/d*/*/final.json")]
    assert finals and all(f["world_size"] == 2 for f in finals)
    # rerunning under torchrun skips every finished rung on every rank (no rank trains alone)
    before = rung_files(out2)
    p = run_miniseries(out2, nproc=2, timeout=120)
    assert "steps ->" not in p.stdout and "growth logit error" not in p.stdout, p.stdout
    assert rung_files(out2) == before


def test_recipe_knobs_share_scratch_and_do_what_they_say(ladder):
    """A second recipe in the same OUT reuses the scratch rungs (nothing of them retrains) and lives in
    its own directory. --grow-from stable grows from the stable checkpoint the chosen budget cooled
    from; --data-order continue starts the grown rung's stream where that checkpoint's stopped, so it
    reads new tokens; --inherit-lr-mult scales the peak LR; --optimizer-state carry starts from the
    parent's moments and step count (their padding and rescaling: tests/engine/inherit/test_growth.py)."""
    out, _, _ = ladder
    scratch_before = {k: v for k, v in rung_files(out).items() if k.startswith("scratch/")}
    p = run_miniseries(out, ["--arms", "scratch,grow-only", "--grow-from", "stable", "--data-order", "continue",
                             "--inherit-lr-mult", "2", "--optimizer-state", "carry"])
    assert "scratch" not in "".join(line for line in p.stdout.splitlines()
                                    if "steps ->" in line and "/scratch/" in line)
    assert {k: v for k, v in rung_files(out).items() if k.startswith("scratch/")} == scratch_before
    arm = out / "grow-only+inherit_lr_mult=2+grow_from=stable+data_order=continue+optimizer_state=carry"
    s = json.loads((out / "summary.json").read_text())
    src = s["grown_from"][arm.name]["d2"]
    assert src["kind"] == "stable" and "/stable/ckpt/step_" in src["checkpoint"]
    parent = json.loads((Path(src["checkpoint"]) / "extra.json").read_text())
    parent_stream = parent["loader"]["seq_consumed"]
    run = json.loads((arm / "d2/stable/run.json").read_text())
    first_ckpt = sorted((arm / "d2/stable/ckpt").iterdir())[0]
    extra = json.loads((first_ckpt / "extra.json").read_text())
    assert extra["loader"]["seq_consumed"] == parent_stream + extra["step"] * 4  # read on: global batch 4
    assert run["config"]["lr_mult"] == 2.0 * TRAIN_PRESETS["cpu-tiny"]["lr_mult"]  # x2 of the rung's preset LR
    assert extra["optim_step"] == parent["optim_step"] + extra["step"]  # Adam's step count carried with its moments
    m = [json.loads(line) for line in (arm / "d2/stable/metrics.jsonl").read_text().splitlines() if '"lr"' in line]
    scratch_m = [json.loads(line) for line in (out / "scratch/d2/stable/metrics.jsonl").read_text().splitlines()
                 if '"lr"' in line]
    assert m[-1]["lr"] == pytest.approx(2 * scratch_m[-1]["lr"])  # both at the constant peak


def test_round3_levers_run_and_name_their_arm(ladder):
    """--new-moments own-step and --ramp-frac (tests/engine/train/test_levers.py has their arithmetic)
    through the launcher: their own directory beside the shared scratch rungs, the ramp's length in
    steps and the correction recorded in the run's growth facts, every budget finished."""
    out, _, _ = ladder
    p = run_miniseries(out, ["--arms", "scratch,grow-only", "--depth-init", "copy", "--optimizer-state", "carry",
                             "--new-moments", "own-step", "--ramp-frac", "0.25"])
    assert "/scratch/" not in "".join(line for line in p.stdout.splitlines() if "steps ->" in line)
    arm = out / "grow-only+optimizer_state=carry+depth_init=copy+new_moments=own-step+ramp_frac=0.25"
    run = json.loads((arm / "d2/stable/final.json").read_text())
    assert run["growth"]["ramp_steps"] == round(0.25 * 45) and run["growth"]["new_moments"] == "own-step"
    s = json.loads((out / "summary.json").read_text())
    rows = [r for r in s["arms"][arm.name] if r["depth"] == 2]
    assert [r["budget_frac"] for r in rows] == [0.5, 1.0] and all(math.isfinite(r["val_loss"]) for r in rows)
