"""Cost arithmetic (profiling/cost.py) against hand-computed values: FLOPs, MFU, GPU hours,
dollars, energy, peak FLOP/s by device name, the nanochat ladder projection."""
from __future__ import annotations

import math

import pytest
import torch

from profiling import cost


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
