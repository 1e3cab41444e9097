"""Tests of the profiling package: timers, windows, samplers, cost arithmetic, report."""
from __future__ import annotations

import json
import math
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import torch

from profiling import Profiler
from profiling import cost
from profiling.nvml import CpuSampler, NvmlSampler, RaplCounter, SamplerUnavailable, make_sampler, visible_nvml_targets
from profiling.profiler import META_FILE, WINDOWS_FILE
from profiling.report import build_profile, main as profile_report_main, write_report
from profiling.timers import CudaEventTimer, HostTimer

SLACK = 0.25  # upper-bound slack for sleeps on a shared 2-core machine (lower bounds are exact)


def _sampler_threads():
    return [t for t in threading.enumerate() if t.name == "profiling-sampler"]


# ------------------------------------------------------------------------------------------
# timers
# ------------------------------------------------------------------------------------------


def test_host_timer_inclusive_exclusive_with_sleeps():
    t = HostTimer()
    t.push("outer")
    time.sleep(0.03)
    t.push("inner")
    time.sleep(0.05)
    t.pop()
    t.push("inner")
    time.sleep(0.02)
    t.pop()
    t.pop()
    d = t.drain()
    assert d["inner"]["calls"] == 2 and d["outer"]["calls"] == 1
    assert 0.07 <= d["inner"]["inclusive_s"] < 0.07 + SLACK
    assert d["inner"]["exclusive_s"] == d["inner"]["inclusive_s"]  # leaf
    assert 0.10 <= d["outer"]["inclusive_s"] < 0.10 + SLACK
    assert 0.03 <= d["outer"]["exclusive_s"] < 0.03 + SLACK
    # exclusive times never overlap: they add up to the outermost inclusive time
    assert math.isclose(d["outer"]["exclusive_s"] + d["inner"]["inclusive_s"], d["outer"]["inclusive_s"], rel_tol=1e-9)
    assert t.drain() == {}


class _FakeEvent:
    """Stands in for torch.cuda.Event: records the host clock, answers elapsed_time in ms."""

    def record(self):
        self.t = time.perf_counter()

    def elapsed_time(self, other):
        return (other.t - self.t) * 1e3


def test_cuda_event_timer_resolution_and_carry_over():
    t = CudaEventTimer(torch.device("cpu"))
    t._event = lambda: _FakeEvent()  # the real one needs CUDA; the bookkeeping is what we test
    t.push("step")
    t.push("forward")
    time.sleep(0.02)
    t.pop()
    t.push("long")  # still open at the window edge: must carry over
    time.sleep(0.01)
    d1 = t.drain()
    assert set(d1) == {"forward"} and 0.02 <= d1["forward"]["inclusive_s"] < 0.02 + SLACK
    t.push("inner")
    time.sleep(0.02)
    t.pop()
    t.pop()  # long
    t.pop()  # step
    d2 = t.drain()
    assert set(d2) == {"inner", "long", "step"}
    assert 0.03 <= d2["long"]["inclusive_s"] and 0.01 <= d2["long"]["exclusive_s"] < 0.01 + SLACK
    # step's exclusive excludes both children, including forward resolved in the earlier window
    assert math.isclose(d2["step"]["exclusive_s"],
                        d2["step"]["inclusive_s"] - d1["forward"]["inclusive_s"] - d2["long"]["inclusive_s"], abs_tol=1e-9)
    assert t.depth == 0 and t._records == []


# ------------------------------------------------------------------------------------------
# Profiler windows
# ------------------------------------------------------------------------------------------


def _read_windows(d: Path):
    return [json.loads(l) for l in (d / WINDOWS_FILE).read_text().splitlines()]


def test_window_cadence_and_exact_fractions(tmp_path):
    prof = Profiler(tmp_path, torch.device("cpu"), window_steps=3, flops_per_token=10, sample_interval_s=0.01)
    for step in range(10):
        with prof.stage("step"):
            with prof.stage("forward"):
                time.sleep(0.002)
            with prof.stage("optimizer"):
                pass
        prof.step_end(step, tokens=5)
        if step == 2:
            assert len(prof.windows) == 1  # closed exactly at the window_steps-th step
        if step == 3:
            assert len(prof.windows) == 1
    assert len(prof.windows) == 3
    prof.close()
    ws = _read_windows(tmp_path)
    assert [(w["step_first"], w["step_last"], w["steps"]) for w in ws] == [(0, 2, 3), (3, 5, 3), (6, 8, 3), (9, 9, 1)]
    for w in ws:
        assert w["tokens"] == 5 * w["steps"] and w["model_flops"] == 50 * w["steps"]
        assert w["stages"]["step"]["calls"] == w["steps"]
        tracked = sum(s["exclusive_s"] for s in w["stages"].values())
        assert math.isclose(tracked + w["untracked_s"], w["wall_s"], rel_tol=1e-9)
        assert w["untracked_s"] >= 0 and w["mfu"] is not None and w["sampler"]["kind"] == "cpu"
    # windows tile the run
    for a, b in zip(ws, ws[1:]):
        assert math.isclose(a["t_start"] + a["wall_s"], b["t_start"], abs_tol=1e-9)
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta["sampler_kind"] == "cpu" and "not cuda" in meta["sampler_reason"]
    assert "probe" in meta["peak_source"] and meta["peak_flops_per_s"] > 0
    assert meta["real"]["gpu_energy"] is False and meta["real"]["cpu_time"] is True
    assert not _sampler_threads()


def test_close_flushes_trailing_stages_and_is_idempotent(tmp_path):
    prof = Profiler(tmp_path, "cpu", window_steps=100)
    with prof.stage("forward"):
        pass
    prof.step_end(0, 1, 1.0)
    with prof.stage("eval"):
        time.sleep(0.01)
    prof.close()
    prof.close()
    prof.step_end(1, 1, 1.0)  # after close: ignored
    ws = _read_windows(tmp_path)
    assert len(ws) == 1 and set(ws[0]["stages"]) == {"forward", "eval"}


def test_resume_keeps_earlier_windows_before_the_first_new_step(tmp_path):
    def session(steps):
        prof = Profiler(tmp_path, "cpu", window_steps=3)
        for step in steps:
            with prof.stage("forward"):
                pass
            prof.step_end(step, 1, 1.0)
        prof.close()

    session(range(1, 8))  # windows 1-3, 4-6, 7
    session(range(4, 10))  # resumed from a checkpoint at step 3: 4-6 and 7 are redone
    ws = _read_windows(tmp_path)
    assert [(w["session"], w["step_first"], w["step_last"]) for w in ws] == [(1, 1, 3), (2, 4, 6), (2, 7, 9)]
    assert [w["window"] for w in ws] == [0, 1, 2]
    session(range(1, 3))  # a restart from step 1 drops everything earlier
    assert [(w["session"], w["step_first"]) for w in _read_windows(tmp_path)] == [(3, 1)]


def test_disabled_profiler_writes_nothing_and_costs_nothing(tmp_path):
    before = set(threading.enumerate())
    prof = Profiler(tmp_path / "run", torch.device("cpu"), enabled=False)
    assert prof.stage("a") is prof.stage("b")  # one shared nullcontext
    n = 20_000
    t0 = time.perf_counter()
    for i in range(n):
        with prof.stage("forward"):
            pass
        prof.step_end(i, 10, 1.0)
    per_step = (time.perf_counter() - t0) / n
    prof.close()
    assert not (tmp_path / "run").exists()
    assert set(threading.enumerate()) == before
    assert prof.windows == []
    assert per_step < 20e-6, per_step  # ~0.3 us in practice; generous for a loaded machine


# ------------------------------------------------------------------------------------------
# samplers
# ------------------------------------------------------------------------------------------


def test_cpu_sampler_start_stop_and_window():
    s = CpuSampler(interval_s=0.01, reason="test")
    s.start()
    s.start()  # idempotent
    assert len(_sampler_threads()) == 1
    s.begin()
    t0 = time.perf_counter()
    x = 0
    while time.perf_counter() - t0 < 0.05:
        x += 1
    w = s.window(t0, time.perf_counter())
    s.stop()
    s.stop()
    assert not _sampler_threads()
    assert w["kind"] == "cpu" and w["cpu_time_s"] > 0
    assert w["rss_bytes"] is None or w["rss_max_bytes"] >= w["rss_bytes"] > 0
    m = s.meta()
    assert m["kind"] == "cpu" and m["reason"] == "test" and m["real"]["gpu_energy"] is False
    if not m["rapl"]["available"]:
        assert w["energy_j"] is None  # never an invented number


def test_rapl_wraparound(tmp_path):
    z = tmp_path / "intel-rapl:0"
    z.mkdir()
    (tmp_path / "intel-rapl:0:0").mkdir()  # a sub-zone: must not be summed
    (tmp_path / "intel-rapl:0:0" / "energy_uj").write_text("5")
    (z / "max_energy_range_uj").write_text("1000000\n")
    (z / "energy_uj").write_text("900000\n")
    r = RaplCounter(str(tmp_path))
    assert r.available and len(r.zones) == 1
    (z / "energy_uj").write_text("950000\n")
    assert math.isclose(r.read(), 0.05)
    (z / "energy_uj").write_text("100000\n")  # wrapped: +50000 to the max, +100000 after
    assert math.isclose(r.read(), 0.05 + 0.15)
    assert RaplCounter(str(tmp_path / "nowhere")).available is False


def _fake_pynvml(fail_after: int | None = None, gpus: int = 2, energy_step_mj: int = 1000):
    """A pynvml stand-in. Every query counts; after `fail_after` queries everything raises."""
    nv = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    state = {"calls": 0, "energy": [10_000] * gpus, "shutdown": 0, "init": 0}

    def q(fn):
        def wrapped(*a):
            state["calls"] += 1
            if fail_after is not None and state["calls"] > fail_after:
                raise NVMLError("GPU is lost")
            return fn(*a)
        return wrapped

    def energy(h):
        state["energy"][h] += energy_step_mj
        return state["energy"][h]

    nv.NVMLError = NVMLError
    nv.NVML_CLOCK_SM = 1
    nv.nvmlClocksEventReasonGpuIdle = 1
    nv.nvmlClocksEventReasonSwPowerCap = 4
    nv.nvmlInit = lambda: state.__setitem__("init", state["init"] + 1)
    nv.nvmlShutdown = lambda: state.__setitem__("shutdown", state["shutdown"] + 1)
    nv.nvmlDeviceGetCount = lambda: gpus
    nv.nvmlDeviceGetHandleByIndex = lambda i: i
    nv.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    nv.nvmlDeviceGetTotalEnergyConsumption = q(energy)
    nv.nvmlDeviceGetPowerUsage = q(lambda h: 350_000)
    nv.nvmlDeviceGetUtilizationRates = q(lambda h: types.SimpleNamespace(gpu=90, memory=40))
    nv.nvmlDeviceGetMemoryInfo = q(lambda h: types.SimpleNamespace(used=2 ** 30, total=80 * 2 ** 30))
    nv.nvmlDeviceGetClockInfo = q(lambda h, c: 1980)
    nv.nvmlDeviceGetCurrentClocksEventReasons = q(lambda h: 4)
    nv._state = state
    return nv


def _wait(pred, timeout=5.0):
    t0 = time.time()
    while not pred() and time.time() - t0 < timeout:
        time.sleep(0.005)
    return pred()


def test_nvml_sampler_with_fake_module(monkeypatch):
    nv = _fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    s = NvmlSampler(interval_s=0.005)  # imports the fake through sys.modules
    s.start()
    s.begin()
    t0 = time.perf_counter()
    assert _wait(lambda: len(s._samples) >= 3)
    w = s.window(t0, time.perf_counter())
    s.stop()
    assert not _sampler_threads() and nv._state["shutdown"] == 1
    assert w["kind"] == "nvml" and len(w["gpus"]) == 2
    g = w["gpus"][0]
    assert g["energy_j"] == pytest.approx(1.0) and g["energy_source"] == "nvml_total_energy_counter"  # 1000 mJ
    assert w["energy_j"] == pytest.approx(2.0)
    assert g["power_w_mean"] == pytest.approx(350.0) and g["sm_util_mean"] == 90 and g["sm_clock_mhz_min"] == 1980
    assert g["clock_event_reasons"] == ["SwPowerCap"] and g["mem_used_max_bytes"] == 2 ** 30
    assert w["power_w_mean"] == pytest.approx(700.0)
    assert s.meta()["real"]["gpu_energy"] is True


def test_nvml_sampler_survives_failure_mid_run(monkeypatch):
    nv = _fake_pynvml(fail_after=40)
    s = NvmlSampler(interval_s=0.002, targets=[0], pynvml_module=nv, max_failures=3)
    s.start()
    s.begin()
    t0 = time.perf_counter()
    assert _wait(lambda: s.error is not None)  # polling gave up cleanly instead of crashing
    assert _wait(lambda: not s.running)
    w = s.window(t0, time.perf_counter())  # still answers, with what was real
    assert w["gpus"][0]["energy_source"] in (None, "mean_sampled_power_x_wall")
    assert "error" in w and "GPU is lost" in w["error"]
    w2 = s.window(t0, time.perf_counter())
    assert w2["energy_j"] is None  # no samples, no counter: nothing invented
    s.stop()
    assert not _sampler_threads() and nv._state["shutdown"] == 1
    assert "GPU is lost" in s.meta()["error"]


def test_profiler_with_failing_nvml_writes_error(tmp_path):
    nv = _fake_pynvml(fail_after=60)
    s = NvmlSampler(interval_s=0.002, targets=[0], pynvml_module=nv, max_failures=2)
    prof = Profiler(tmp_path, "cpu", window_steps=2, sampler=s)
    for step in range(6):
        with prof.stage("forward"):
            time.sleep(0.01)
        prof.step_end(step, 1, 1.0)
    prof.close()
    ws = _read_windows(tmp_path)
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert len(ws) == 3 and meta["sampler_kind"] == "nvml" and "GPU is lost" in meta["sampler"]["error"]
    e0 = ws[0]["sampler"]["energy_j"]  # the counter (1 J per read) or, once NVML failed, the power fallback/None
    assert e0 is None or e0 == pytest.approx(1.0) or ws[0]["sampler"]["gpus"][0]["energy_source"] == "mean_sampled_power_x_wall"
    assert "error" in ws[-1]["sampler"]
    assert not _sampler_threads()


def test_make_sampler_falls_back_when_nvml_absent_or_broken(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # "import pynvml" raises ImportError
    s = make_sampler(torch.device("cuda"), nvml=True)
    assert isinstance(s, CpuSampler) and "pynvml" in s.reason
    broken = _fake_pynvml()
    broken.nvmlInit = lambda: (_ for _ in ()).throw(broken.NVMLError("Driver Not Loaded"))
    s = make_sampler(torch.device("cuda"), pynvml_module=broken)
    assert isinstance(s, CpuSampler) and "Driver Not Loaded" in s.reason
    with pytest.raises(SamplerUnavailable):
        NvmlSampler(pynvml_module=broken)
    assert isinstance(make_sampler(torch.device("cuda"), nvml=False), CpuSampler)
    assert make_sampler(torch.device("cpu")).reason == "device is cpu, not cuda"


def test_visible_targets():
    assert visible_nvml_targets({}) is None
    assert visible_nvml_targets({"CUDA_VISIBLE_DEVICES": "2,3"}) == [2, 3]
    assert visible_nvml_targets({"CUDA_VISIBLE_DEVICES": "GPU-abc,1,-1,0"}) == ["GPU-abc", 1]
    assert visible_nvml_targets({"CUDA_VISIBLE_DEVICES": ""}) == []


# ------------------------------------------------------------------------------------------
# cost arithmetic (hand-computed values)
# ------------------------------------------------------------------------------------------


def test_cost_arithmetic():
    assert cost.model_flops(1_000, 2_000) == 2e6
    assert cost.stage_flops(10.0, fisher=2.0, penalty=1.0)["total"] == 13.0
    assert cost.mfu(4e15, 10.0, 1e15) == pytest.approx(0.4)
    assert cost.mfu(8e15, 10.0, 1e15, n_devices=2) == pytest.approx(0.4)
    assert cost.mfu(1.0, 0.0, 1e15) is None and cost.mfu(1.0, 1.0, None) is None
    assert cost.gpu_hours(4 * 3600, 8) == 32.0
    assert cost.dollars(32.0) == 96.0 and cost.dollars(2.0, 24.0) == 48.0
    assert cost.kwh(3.6e6) == 1.0 and cost.kwh(700 * 3600) == pytest.approx(0.7)
    assert cost.peak_from_name("NVIDIA H100 80GB HBM3")[0] == 989e12
    assert cost.peak_from_name("NVIDIA H100 PCIe")[0] == 756e12
    assert cost.peak_from_name("NVIDIA H200")[0] == 989e12
    assert cost.peak_from_name("NVIDIA A100-SXM4-80GB")[0] == 312e12
    assert cost.peak_from_name("AMD EPYC")[0] is None


def _nanochat_rung(d):  # method.md section 1, by hand: no models.config involved
    D = math.ceil(64 * d / 128) * 128
    n = d * (4 * D * D + 2 * 4 * D * D) + 32768 * D
    return n, 6 * n + 12 * d * D * 2048


def test_ladder_projection_hand_computed():
    rungs = cost.ladder_flops("nanochat", range(10, 21), 8)
    n10, fpt10 = _nanochat_rung(10)
    assert (n10, fpt10) == (70_123_520, 578_027_520)  # d10 ~70M scaling params (anchors.md)
    assert rungs[0]["scaling_params"] == n10 and rungs[0]["flops_per_token"] == fpt10
    total = sum(fpt * 8 * n for n, fpt in map(_nanochat_rung, range(10, 21)))
    p = cost.project_ladder(0.4)
    assert p["flops"] == pytest.approx(total)
    gh = total / (0.4 * 989e12) / 3600
    assert p["gpu_hours"] == pytest.approx(gh) and p["wall_hours"] == pytest.approx(gh / 8)
    assert p["dollars"] == pytest.approx(gh * 3.0) and p["energy_kwh"] == pytest.approx(gh * 0.7)
    assert 3.5 < p["wall_hours"] < 4.5  # the seeds' "~4 hours on 8xH100" at MFU 0.4
    half = cost.project_ladder(0.4, fraction=0.5, price_per_gpu_hour=2.0)
    assert half["dollars"] == pytest.approx(gh * 0.5 * 2.0)


def test_cpu_peak_probe_cached():
    a = cost.peak_flops(torch.device("cpu"))
    b = cost.peak_flops(torch.device("cpu"))
    assert a == b and a["peak_flops_per_s"] > 1e8 and "measured by probe" in a["source"]


# ------------------------------------------------------------------------------------------
# a report from a tiny real training run
# ------------------------------------------------------------------------------------------


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
    assert len(_read_windows(run)) == 2  # 4 + 2 steps (the eval lands in the last window)
    p = build_profile(run)
    assert p["kind"] == "run" and p["steps"] == 6
    assert sum(s["fraction"] for s in p["stages"].values()) == pytest.approx(1.0, abs=1e-9)
    assert {"step", "data", "forward", "backward", "optimizer", "fisher", "penalty", "eval", "other"} <= set(p["stages"])
    inh = p["stages"]["fisher"]["seconds"] + p["stages"]["penalty"]["seconds"]
    step_time = p["total_s"] - p["stages"]["eval"]["inclusive_s"]
    assert p["inheritance_overhead_fraction"] == pytest.approx(inh / step_time)
    assert 0 < p["inheritance_overhead_fraction"] < 1
    assert p["mfu_source"].startswith("assumed") and p["mfu_used"] == 0.4
    assert all(l.startswith(("*measured*", "*projected*")) for l in p["lines"])
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
    _fake_rung(root / "scratch" / "d2", 2, flops=4e17, wall=1000.0, steps=10, stages={"forward": 400.0, "ars": 0.0}, **kw)
    _fake_rung(root / "scratch" / "d3", 3, flops=8e17, wall=2000.0, steps=10, stages={"forward": 800.0, "ars": 0.0}, **kw)
    _fake_rung(root / "inherit" / "d3", 3, flops=3e17, wall=1100.0, steps=5,
               stages={"forward": 500.0, "penalty": 50.0, "ars": 50.0, "eval": 100.0}, fisher_flops=1e17, **kw)
    p = build_profile(tmp_path, price_per_gpu_hour=3.0)
    assert [r["label"] for r in p["rungs"]] == ["seed0/inherit/d3", "seed0/scratch/d2", "seed0/scratch/d3"]
    # inherit is charged the shared scratch d2 rung: (4e17 + 3e17 + 1e17 Fisher) / (4e17 + 8e17)
    assert p["arms"]["inherit"]["flops"] == pytest.approx(8e17) and p["arms"]["inherit"]["rungs"] == 2
    assert p["inherit_flops_fraction"] == pytest.approx(8 / 12)
    assert p["arms"]["scratch"]["gpu_hours"] == pytest.approx(3000 / 3600)
    assert p["arms"]["scratch"]["dollars"] == pytest.approx(2.5) and p["arms"]["scratch"]["energy_kwh"] == pytest.approx(2.0)
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
    assert p["arms"]["scratch"]["flops"] == pytest.approx(10e17) and p["arms"]["scratch"]["wall_s"] == pytest.approx(1000.0)
