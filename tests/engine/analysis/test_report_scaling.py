"""The miniseries report's scaling-law and CORE sections (engine/analysis/report_scaling.py), on synthetic
rung results and metrics (no training), and a tiny CORE bundle."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.analysis import report_scaling as rs
from engine.ladder.config import LadderConfig
from engine.analysis.scaling import predict
from models.config import model_config
from tests.helpers.core import ByteTokenizer, write_bundle
from tests.helpers.scaling import TRUE as LAW  # Hoffmann et al. 2022


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _write_rung(run, N, tokens, n_evals, law, rng, head_start=0.0):
    """metrics.jsonl with a step-0 eval, per-step lines, and n_evals evaluations up to `tokens`."""
    run.mkdir(parents=True, exist_ok=True)
    lines = [{"step": 0, "tokens": 0, "flops": 0.0, "val_loss": 9.0, "val_bpb": 3.0}]
    per = tokens // n_evals
    for k in range(1, n_evals + 1):
        t = per * k
        loss = float(predict(law, N, t + head_start)) * (1 + 0.002 * rng.standard_normal())
        lines.append({"step": 10 * k - 1, "tokens": t - per // 2, "loss": loss + 0.1})  # a training-only line
        lines.append({"step": 10 * k, "tokens": t, "flops": 6.0 * N * t, "loss": loss, "val_loss": loss,
                      "val_bpb": loss / 2})
    (run / "metrics.jsonl").write_text("".join(json.dumps(rec) + "\n" for rec in lines))
    return lines[-1]["val_loss"]


def _ladder(tmp_path, depths, arms=("scratch", "inherit"), n_evals=5, ratio=20, seed=0):
    """Synthetic results + run dirs following engine.ladder.run.rung_dir's layout."""
    from engine.ladder.run import rung_dir

    lc = LadderConfig(depths=list(depths), arms=list(arms), out=str(tmp_path))
    rng = np.random.default_rng(seed)
    results = {}
    for arm in arms:
        rungs, seen = [], 0
        for d in depths:
            N = model_config("cpu-tiny", d).scaling_params
            shared = d == depths[0] and arm != "scratch"
            tokens = int(ratio * N) if (arm == "scratch" or d == depths[0]) else int(ratio * N * 0.5)
            run = rung_dir(tmp_path, arm, d, lc)
            if shared and "scratch" in arms:
                final_loss = next(r for r in results["scratch"] if r["depth"] == d)["val_loss"]
            else:
                final_loss = _write_rung(run, N, tokens, n_evals, LAW, rng, head_start=seen if arm != "scratch" else 0)
            rungs.append({"depth": d, "scaling_params": N, "params": N, "tokens": tokens, "flops": 6.0 * N * tokens,
                          "val_loss": final_loss, "val_bpb": final_loss / 2, "wall_s": 1.0})
            seen += tokens
        results[arm] = rungs
    run_dir_of = lambda arm, d: rung_dir(tmp_path, arm, d, lc)  # noqa: E731
    return lc, results, run_dir_of


def test_points_are_finished_runs(tmp_path):
    lc, results, run_dir_of = _ladder(tmp_path, [2, 3, 4], n_evals=4)
    fin = rs.arm_points(results, run_dir_of, "inherit", "final")
    assert [p[3] for p in fin] == [2, 3, 4] and [p[1] for p in fin] == [r["tokens"] for r in results["inherit"]]
    with pytest.raises(ValueError, match="only finished runs"):
        rs.arm_points(results, run_dir_of, "inherit", "intermediate")


def test_degenerate_fit_is_shown_as_failed():
    assert rs.fit_failure({"E": 1e-11, "alpha": 0.3, "beta": 0.3}).startswith("degenerate fit (E=1e-11")
    assert "alpha=-0.2" in rs.fit_failure({"E": 1.0, "alpha": -0.2, "beta": 0.3})
    assert rs.fit_failure({"E": 1.7, "alpha": 0.34, "beta": 0.28}) is None


def _budget_points(depths, arms=("scratch", "inherit"), fracs=(0.25, 0.5, 1.0), ratio=20, seed=0):
    """Cooled budget runs as the ladder writes them: one final dict per (rung, budget), losses
    from LAW with 0.2% noise."""
    rng = np.random.default_rng(seed)
    results = {}
    for arm in arms:
        results[arm] = []
        for d in depths:
            N = model_config("cpu-tiny", d).scaling_params
            for f in fracs:
                tokens = int(ratio * N * f)
                loss = float(predict(LAW, N, tokens)) * (1 + 0.002 * rng.standard_normal())
                results[arm].append({"depth": d, "scaling_params": N, "tokens": tokens, "val_loss": loss})
    return results


def test_scaling_section_side_by_side(tmp_path):
    # 4 rungs x 3 budgets per arm: genuine (N, D, L) points that separate the N and D terms
    lc = LadderConfig(depths=[2, 3, 4, 5], arms=["scratch", "inherit"], out=str(tmp_path))
    results, run_dir_of = _budget_points([2, 3, 4, 5]), None
    out, lines = rs.scaling_section(lc, results, run_dir_of, n_bootstrap=20)
    assert set(out) == {"scratch", "inherit"}
    assert set(out["scratch"]) == set(out["inherit"]) == {"final"}
    for arm in out:
        for v, fit in out[arm].items():
            assert "error" not in fit, (arm, v, fit)
            assert all(math.isfinite(fit[k]) for k in ("E", "A", "alpha", "B", "beta", "ratio_opt"))
            assert fit["ci"]["alpha"] is not None and fit["n_bootstrap"] == 20
    # every arm's ratio is read at the same compute
    cs = {fit["ratio_opt_compute"] for a in out.values() for fit in a.values()}
    assert len(cs) == 1
    # scratch's final points come from the law itself: the exponents are recovered roughly
    assert out["scratch"]["final"]["alpha"] == pytest.approx(LAW["alpha"], abs=0.15)
    # one budget per rung (D proportional to N) cannot separate the terms: shown as failed, not as a result
    lc6, same_ratio, rd = _ladder(tmp_path / "same", [2, 3, 4, 5, 6, 7], n_evals=3)
    out6, _ = rs.scaling_section(lc6, same_ratio, rd, n_bootstrap=0)
    assert "error" in out6["scratch"]["final"] and "rejected_fit" in out6["scratch"]["final"]
    json.dumps(out)  # summary.json-serialisable
    text = "\n".join(lines)
    assert "## Scaling-law fits" in text and "| | scratch | inherit |" in text
    assert "own" in text and "cooled" in text
    assert "inherit vs scratch" in text and ("intervals overlap" in text or "do not overlap" in text)
    for k in ("| E |", "| A |", "| alpha |", "| B |", "| beta |", "| ratio_opt |"):
        assert k in text


def test_too_few_rungs_says_so(tmp_path):
    lc, results, run_dir_of = _ladder(tmp_path, [2, 3, 4], n_evals=4)
    out, lines = rs.scaling_section(lc, results, run_dir_of, n_bootstrap=10)
    for arm in ("scratch", "inherit"):
        assert "error" in out[arm]["final"] and "3 distinct" in out[arm]["final"]["error"]
        assert out[arm]["final"]["depths"] == [2, 3, 4]
    text = "\n".join(lines)
    assert "failed: 3 distinct" in text
    assert "not enough points to compare inherit with scratch" in text  # the final-points comparison


def test_scratch_only_has_no_comparison(tmp_path):
    lc, results, run_dir_of = _ladder(tmp_path, [2, 3], arms=("scratch",), n_evals=3)
    out, lines = rs.scaling_section(lc, results, run_dir_of, n_bootstrap=0)
    assert set(out) == {"scratch"}
    assert any("Needs the scratch arm and at least one inheriting arm" in line for line in lines)


def _fake_fit(alpha, ci):
    return {"E": 1.0, "A": 10.0, "B": 10.0, "alpha": alpha, "beta": 0.3, "ratio_opt": 20.0,
            "ci": {"alpha": ci, "beta": [0.25, 0.35], "ratio_opt": [15.0, 25.0]}, "n_points": 9, "n_distinct": 9,
            "residual_rms": 0.01}


def test_compare_sentence_overlap_and_not():
    ref = _fake_fit(0.30, [0.28, 0.32])
    s = rs.compare_sentence("inherit", _fake_fit(0.5, [0.45, 0.55]), ref, "final")
    assert "inheritance changes alpha beyond the bootstrap intervals" in s
    assert "alpha from 0.3 [0.28, 0.32] to 0.5 [0.45, 0.55] (intervals do not overlap)" in s
    assert "beta from" in s and "(intervals overlap)" in s
    s = rs.compare_sentence("inherit", _fake_fit(0.31, [0.29, 0.33]), ref, "final")
    assert "no change detectable beyond the bootstrap intervals" in s
    s = rs.compare_sentence("inherit", {"error": "2 distinct (N, D) points"}, ref, "final")
    assert "not enough points to compare" in s and "2 distinct" in s
    nf = _fake_fit(0.31, None)
    nf["ci"] = {"alpha": None, "beta": None, "ratio_opt": None}
    assert "no intervals" in rs.compare_sentence("inherit", nf, ref, "final")


# ---- CORE ---------------------------------------------------------------------------------------


def _tiny_model(depth):
    from models.gpt import build_model

    return build_model(model_config("cpu-tiny", depth, vocab_size=257, seq_len=64), seed=depth)


def test_core_section_per_arm_shared_base_once(tmp_path):
    bundle = write_bundle(tmp_path / "bundle")
    lc, results, run_dir_of = _ladder(tmp_path / "runs", [1, 2], n_evals=1)
    calls = []

    def load(run):
        depth = (int(Path(run).parent.name.lstrip("d")) if Path(run).name.startswith("b")
                 else int(Path(run).name.lstrip("d")))
        calls.append((str(run), depth))
        if depth == 2 and "inherit" in str(run):
            raise FileNotFoundError(f"rung {run} is finished but has no intact checkpoint to grow from")
        return _tiny_model(depth)

    out, lines = rs.core_section(lc, results, run_dir_of, bundle, "cpu", max_per_task=2, tokenizer=ByteTokenizer(),
                                 load_model=load)
    assert len(calls) == 3  # d1 shared by both arms: loaded and evaluated once
    a = out["arms"]
    assert a["scratch"]["d1"] == a["inherit"]["d1"] and math.isfinite(a["scratch"]["d1"]["core"])
    assert set(a["scratch"]["d2"]["tasks"]) == {"mc_task", "schema_task", "lm_task"}
    assert "error" in a["inherit"]["d2"] and out["max_per_task"] == 2
    json.dumps(out)
    text = "\n".join(lines)
    assert "## CORE" in text and "| rung | scratch | inherit |" in text and "first 2 items per task" in text
    assert "| d2 | " in text and "error" in text


def test_core_section_loads_real_checkpoints(tmp_path):
    """The default loader (engine.train.checkpoint.load_run_model) on a checkpoint written by
    engine.train.checkpoint."""
    from engine.train import checkpoint as ckpt
    from engine.runtime.distributed import DistEnv
    from engine.ladder.run import rung_dir
    from engine.train.optim import LadderOptimizer, model_param_groups

    bundle = write_bundle(tmp_path / "bundle")
    lc = LadderConfig(depths=[1], arms=["scratch"], out=str(tmp_path / "runs"),
                      train={"vocab_size": 257, "seq_len": 64})
    env = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), backend=None)
    model = _tiny_model(1)
    opt = LadderOptimizer(model_param_groups(model, matrix_lr=1e-3, embedding_lr=1e-3, unembedding_lr=1e-3,
                                             weight_decay=0.0, muon=False))
    run = rung_dir(tmp_path / "runs", "scratch", 1, lc)
    ckpt.save(run / "ckpt", 1, model, opt, {}, env)
    ckpt.write_json_atomic(run / "run.json", {"model_config": model.config.to_dict()})  # as the trainer writes it
    results = {"scratch": [{"depth": 1, "scaling_params": 1, "tokens": 1, "val_loss": 1.0}]}
    out, _ = rs.core_section(lc, results, lambda arm, d: rung_dir(tmp_path / "runs", arm, d, lc), bundle, "cpu",
                             max_per_task=2, tokenizer=ByteTokenizer())
    from engine.analysis.core_eval import evaluate_core

    want = evaluate_core(model, ByteTokenizer(), bundle, device="cpu", max_per_task=2)["core"]
    assert out["arms"]["scratch"]["d1"]["core"] == pytest.approx(want)
