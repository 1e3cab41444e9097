"""Power and energy samplers (profiling/nvml.py): the CPU sampler, RAPL wraparound, NVML through a
fake pynvml (and its failure mid-run), the fallback when NVML is absent or broken, visible GPUs."""
from __future__ import annotations

import math
import sys
import time

import pytest
import torch

from profiling.nvml import CpuSampler, NvmlSampler, RaplCounter, SamplerUnavailable, make_sampler, visible_nvml_targets
from tests.helpers.profiling import fake_pynvml, sampler_threads


def test_cpu_sampler_start_stop_and_window():
    s = CpuSampler(interval_s=0.01, reason="test")
    s.start()
    s.start()  # idempotent
    assert len(sampler_threads()) == 1
    s.begin()
    t0 = time.perf_counter()
    x = 0
    while time.perf_counter() - t0 < 0.05:
        x += 1
    w = s.window(t0, time.perf_counter())
    s.stop()
    s.stop()
    assert not sampler_threads()
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


def _wait(pred, timeout=5.0):
    t0 = time.time()
    while not pred() and time.time() - t0 < timeout:
        time.sleep(0.005)
    return pred()


def test_nvml_sampler_with_fake_module(monkeypatch):
    nv = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    s = NvmlSampler(interval_s=0.005)  # imports the fake through sys.modules
    s.start()
    s.begin()
    t0 = time.perf_counter()
    assert _wait(lambda: len(s._samples) >= 3)
    w = s.window(t0, time.perf_counter())
    s.stop()
    assert not sampler_threads() and nv._state["shutdown"] == 1
    assert w["kind"] == "nvml" and len(w["gpus"]) == 2
    g = w["gpus"][0]
    assert g["energy_j"] == pytest.approx(1.0) and g["energy_source"] == "nvml_total_energy_counter"  # 1000 mJ
    assert w["energy_j"] == pytest.approx(2.0)
    assert g["power_w_mean"] == pytest.approx(350.0) and g["sm_util_mean"] == 90 and g["sm_clock_mhz_min"] == 1980
    assert g["clock_event_reasons"] == ["SwPowerCap"] and g["mem_used_max_bytes"] == 2 ** 30
    assert w["power_w_mean"] == pytest.approx(700.0)
    assert s.meta()["real"]["gpu_energy"] is True


def test_nvml_sampler_survives_failure_mid_run(monkeypatch):
    nv = fake_pynvml(fail_after=40)
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
    assert not sampler_threads() and nv._state["shutdown"] == 1
    assert "GPU is lost" in s.meta()["error"]


def test_make_sampler_falls_back_when_nvml_absent_or_broken(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # "import pynvml" raises ImportError
    s = make_sampler(torch.device("cuda"), nvml=True)
    assert isinstance(s, CpuSampler) and "pynvml" in s.reason
    broken = fake_pynvml()
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
