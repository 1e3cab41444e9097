"""The profile report (engine/analysis/profile_report.py): from a tiny real training run and a miniseries of two
through the CLI, and from hand-made run directories (a shared base rung, GPU numbers, budget
branches charged their own work)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from profiling import Profiler
from profiling.profiler import META_FILE, WINDOWS_FILE
from engine.analysis.profile_report import build_profile, main as profile_report_main, write_report
from tests.helpers.profiling import read_profile_windows


def _tiny_run(run_dir: Path, steps: int = 6, fisher: bool = False) -> None:
    from models.config import model_config
    from models.gpt import build_model

    cfg = model_config("cpu-tiny", 2)
    torch.manual_seed(0)
    model = build_model(cfg, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    B, T = 2, 64
    tokens = B * T
    prof = Profiler(run_dir, torch.device("cpu"), window_steps=4, flops_per_token=cfg.flops_per_token)
    t_start = time.perf_counter()
    for step in range(steps):
        with prof.stage("step"):
            with prof.stage("data"):
                x = torch.randint(0, cfg.vocab_size, (B, T + 1))
            with prof.stage("forward"):
                loss = model(x[:, :-1], x[:, 1:])
            with prof.stage("backward"):
                loss.backward()
            if fisher:
                with prof.stage("fisher"):
                    sq = [p.grad.square() for p in model.parameters()]
                with prof.stage("penalty"):
                    sum(s.sum() for s in sq)
            with prof.stage("optimizer"):
                opt.step()
                opt.zero_grad(set_to_none=True)
        prof.step_end(step, tokens, cfg.flops_per_token * tokens)
    with prof.stage("eval"):
        with torch.no_grad():
            val = model(x[:, :-1], x[:, 1:]).item()
    prof.close()
    final = {"depth": 2, "params": cfg.num_params, "scaling_params": cfg.scaling_params, "tokens": steps * tokens,
             "flops": cfg.flops_per_token * steps * tokens, "val_loss": val,
             "wall_s": time.perf_counter() - t_start, "device": "cpu", "world_size": 1}
    (run_dir / "final.json").write_text(json.dumps(final))


@pytest.fixture
def one_thread():
    # torch's two OpenMP threads spin badly when the 2 shared cores are oversubscribed (a 30 ms
    # step became 1 s): one thread keeps the test fast and stable
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_report_from_tiny_real_run(tmp_path, one_thread):
    run = tmp_path / "run"
    _tiny_run(run, fisher=True)
    assert len(read_profile_windows(run)) == 2  # 4 + 2 steps (the eval lands in the last window)
    p = build_profile(run)
    assert p["kind"] == "run" and p["steps"] == 6
    assert sum(s["fraction"] for s in p["stages"].values()) == pytest.approx(1.0, abs=1e-9)
    assert ({"step", "data", "forward", "backward", "optimizer", "fisher", "penalty", "eval", "other"}
            <= set(p["stages"]))
    inh = p["stages"]["fisher"]["seconds"] + p["stages"]["penalty"]["seconds"]
    step_time = p["total_s"] - p["stages"]["eval"]["inclusive_s"]
    assert p["inheritance_overhead_fraction"] == pytest.approx(inh / step_time)
    assert 0 < p["inheritance_overhead_fraction"] < 1
    assert p["mfu_source"].startswith("assumed") and p["mfu_used"] == 0.4
    assert all(line.startswith(("*measured*", "*projected*")) for line in p["lines"])
    md = write_report(run)
    for f in ("profile.json", "profile.md", "profile_stages.png"):
        assert (run / f).stat().st_size > 0
    assert (run / "profile_stages.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    j = json.loads((run / "profile.json").read_text())
    assert "inheritance_overhead_fraction" in j and j["stages"]["forward"]["seconds"] > 0
    assert "*projected*" in md.read_text() and "*measured*" in md.read_text()

    # a miniseries made of two such rungs, through the CLI
    ms = tmp_path / "ms"
    (ms / "scratch").mkdir(parents=True)
    (ms / "inherit").mkdir()
    (ms / "summary.json").write_text("{}")
    _tiny_run(ms / "scratch" / "d2", steps=4)
    _tiny_run(ms / "inherit" / "d2", steps=2, fisher=True)
    assert profile_report_main([str(ms), "--price-per-gpu-hour", "2.5", "--assumed-mfu", "0.5"]) == 0
    j = json.loads((ms / "profile.json").read_text())
    assert j["kind"] == "miniseries" and [r["label"] for r in j["rungs"]] == ["inherit/d2", "scratch/d2"]
    assert sum(s["fraction"] for s in j["stages"].values()) == pytest.approx(1.0, abs=1e-9)
    assert j["inheritance_overhead_over"] == ["inherit/d2"] and j["mfu_used"] == 0.5
    assert j["projection"]["inherit"]["fraction_of_scratch_flops"] == pytest.approx(0.5)
    assert j["projection"]["scratch"]["price_per_gpu_hour"] == 2.5
    assert len(j["per_step_vs_scratch"]) == 1
    assert (ms / "profile_stages.png").exists()


def _fake_rung(d: Path, depth: int, flops: float, wall: float, steps: int, stages: dict, gpu: bool = False,
               energy_j: float | None = None, fisher_flops: float = 0.0) -> None:
    """A hand-made train run dir: final.json, one window, meta (values chosen for hand arithmetic)."""
    d.mkdir(parents=True)
    st = {n: {"inclusive_s": s, "exclusive_s": s, "calls": steps} for n, s in stages.items()}
    w = {"window": 0, "steps": steps, "wall_s": wall, "stages": st, "tokens": 100 * steps, "model_flops": flops,
         "extra_flops": 0.0, "sampler": {"kind": "nvml" if gpu else "cpu", "energy_j": energy_j}}
    (d / WINDOWS_FILE).write_text(json.dumps(w) + "\n")
    meta = {"device_type": "cuda" if gpu else "cpu", "device_name": "NVIDIA H100 80GB HBM3" if gpu else "cpu",
            "peak_flops_per_s": 1e15 if gpu else 1e10, "peak_source": "test", "sampler_kind": "nvml" if gpu else "cpu",
            "world_size": 1}
    (d / META_FILE).write_text(json.dumps(meta))
    final = {"depth": depth, "flops": flops, "fisher_flops": fisher_flops, "wall_s": wall, "val_loss": 3.0,
             "device": "cuda" if gpu else "cpu", "world_size": 1, "tokens": 100 * steps}
    (d / "final.json").write_text(json.dumps(final))


def test_report_shared_base_rung_and_gpu_numbers(tmp_path):
    root = tmp_path / "seed0"  # the multi-seed layout: OUT/seed<k>/<arm>/d<depth>/
    kw = dict(gpu=True, energy_j=3.6e6)
    _fake_rung(root / "scratch" / "d2", 2, flops=4e17, wall=1000.0, steps=10, stages={"forward": 400.0, "ars": 0.0},
               **kw)
    _fake_rung(root / "scratch" / "d3", 3, flops=8e17, wall=2000.0, steps=10, stages={"forward": 800.0, "ars": 0.0},
               **kw)
    _fake_rung(root / "inherit" / "d3", 3, flops=3e17, wall=1100.0, steps=5,
               stages={"forward": 500.0, "penalty": 50.0, "ars": 50.0, "eval": 100.0}, fisher_flops=1e17, **kw)
    p = build_profile(tmp_path, price_per_gpu_hour=3.0)
    assert [r["label"] for r in p["rungs"]] == ["seed0/inherit/d3", "seed0/scratch/d2", "seed0/scratch/d3"]
    # inherit is charged the shared scratch d2 rung: (4e17 + 3e17 + 1e17 Fisher) / (4e17 + 8e17)
    assert p["arms"]["inherit"]["flops"] == pytest.approx(8e17) and p["arms"]["inherit"]["rungs"] == 2
    assert p["inherit_flops_fraction"] == pytest.approx(8 / 12)
    assert p["arms"]["scratch"]["gpu_hours"] == pytest.approx(3000 / 3600)
    assert (p["arms"]["scratch"]["dollars"] == pytest.approx(2.5)
            and p["arms"]["scratch"]["energy_kwh"] == pytest.approx(2.0))
    # overhead over the inheriting rung only: (50 + 50) / (1100 - 100 eval)
    assert p["inheritance_overhead_over"] == ["seed0/inherit/d3"]
    assert p["inheritance_overhead_fraction"] == pytest.approx(0.1)
    assert p["inheritance_slowdown"] == pytest.approx(100 / 900)
    # step time per step: inherit 1000/5 = 200 s vs scratch d3 2000/10 = 200 s
    assert p["per_step_vs_scratch"][0]["slower_per_step"] == pytest.approx(0.0)
    # measured MFU on GPU (wall-weighted: model flops / wall / 1e15 per rung)
    mfus = [(3e17 / 1100 / 1e15, 1100), (4e17 / 1000 / 1e15, 1000), (8e17 / 2000 / 1e15, 2000)]
    assert p["mfu_used"] == pytest.approx(sum(m * w for m, w in mfus) / 4100) and p["mfu_source"].startswith("measured")
    assert p["projection"]["inherit"]["dollars"] == pytest.approx(p["projection"]["scratch"]["dollars"] * 8 / 12)


def test_budget_runs_are_charged_their_own_work(tmp_path):
    """A WSD branch (run.json's init_from) is charged its FLOPs and wall time minus those of the
    stable checkpoint it started from, so an arm costs its stable run once plus each cooldown."""
    root = tmp_path / "ms"
    _fake_rung(root / "scratch" / "d2" / "stable", 2, flops=8e17, wall=800.0, steps=8, stages={"forward": 400.0})
    ck = root / "scratch" / "d2" / "stable" / "ckpt" / "step_000000008"
    ck.mkdir(parents=True)
    (ck / "extra.json").write_text(json.dumps({"flops": 8e17, "wall_s": 800.0}))
    _fake_rung(root / "scratch" / "d2" / "b1", 2, flops=10e17, wall=1000.0, steps=2, stages={"forward": 100.0})
    (root / "scratch" / "d2" / "b1" / "run.json").write_text(json.dumps({"config": {"init_from": str(ck)}}))
    p = build_profile(root)
    assert [r["label"] for r in p["rungs"]] == ["scratch/d2/b1", "scratch/d2/stable"]
    assert p["rungs"][0]["flops"] == pytest.approx(2e17) and p["rungs"][0]["wall_s"] == pytest.approx(200.0)
    assert (p["arms"]["scratch"]["flops"] == pytest.approx(10e17)
            and p["arms"]["scratch"]["wall_s"] == pytest.approx(1000.0))
