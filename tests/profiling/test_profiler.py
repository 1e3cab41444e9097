"""The profiler (profiling/profiler.py): window cadence and exact fractions, flushing and resuming,
free when disabled, a failing sampler's error written down, and its windows reader."""
from __future__ import annotations

import json
import math
import threading
import time

import pytest
import torch

from profiling import Profiler
from profiling.nvml import NvmlSampler
from profiling.profiler import META_FILE, WINDOWS_FILE, read_windows
from tests.helpers.profiling import fake_pynvml, read_profile_windows, sampler_threads


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
    ws = read_profile_windows(tmp_path)
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
    assert not sampler_threads()


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
    ws = read_profile_windows(tmp_path)
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
    ws = read_profile_windows(tmp_path)
    assert [(w["session"], w["step_first"], w["step_last"]) for w in ws] == [(1, 1, 3), (2, 4, 6), (2, 7, 9)]
    assert [w["window"] for w in ws] == [0, 1, 2]
    session(range(1, 3))  # a restart from step 1 drops everything earlier
    assert [(w["session"], w["step_first"]) for w in read_profile_windows(tmp_path)] == [(3, 1)]


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


def test_profiler_with_failing_nvml_writes_error(tmp_path):
    nv = fake_pynvml(fail_after=60)
    s = NvmlSampler(interval_s=0.002, targets=[0], pynvml_module=nv, max_failures=2)
    prof = Profiler(tmp_path, "cpu", window_steps=2, sampler=s)
    for step in range(6):
        with prof.stage("forward"):
            time.sleep(0.01)
        prof.step_end(step, 1, 1.0)
    prof.close()
    ws = read_profile_windows(tmp_path)
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert len(ws) == 3 and meta["sampler_kind"] == "nvml" and "GPU is lost" in meta["sampler"]["error"]
    e0 = ws[0]["sampler"]["energy_j"]  # the counter (1 J per read) or, once NVML failed, the power fallback/None
    assert (e0 is None or e0 == pytest.approx(1.0)
            or ws[0]["sampler"]["gpus"][0]["energy_source"] == "mean_sampled_power_x_wall")
    assert "error" in ws[-1]["sampler"]
    assert not sampler_threads()


def test_profile_windows_reader_is_the_same_reader(tmp_path):
    (tmp_path / WINDOWS_FILE).write_text('{"window": 0}\n{"window": 1}\n{"win')
    assert read_windows(tmp_path) == [{"window": 0}, {"window": 1}]
    assert read_windows(tmp_path / "none") == []
