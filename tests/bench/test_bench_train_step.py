"""Benchmark: one whole training step of cpu-tiny rungs, plain and inherited (launch/train_bench.py).

Per rung d (default 2, 3, 4; LADDER_TRAIN_BENCH_DEPTHS=2,3 overrides), batch 8 x 256 tokens, fp32:
  matmul_probe    torch.mm [B*T, D] x [D, 4D] fp32 (the MLP c_fc's size on this batch)
  plain_step      forward + backward + LadderOptimizer.step (fused kernel)
  inherited_step  the same + ARS('seed') + InheritTerms of a real Penalty (coords) on a grown
                  model + online Fisher accumulation

MFU vs probe = the step's FLOP/s (model FLOPs / median time) / the probe row's FLOP/s (median of
up to 200 calls, same rung, same run, run just before the steps).
Pairing, robust to a loaded machine: before every timed round of the inherited step
(pytest-benchmark `setup`, not counted in its stats) one plain step runs, timed; extra_info
carries the median of the per-round shares (t_inh - t_plain) / t_inh, and the same share from
the update phase alone (everything after the loss sync: ARS, penalty terms, fused step + Fisher),
which is free of the forward/backward's noise.

Threads: LADDER_BENCH_THREADS (default: torch's own, i.e. OMP_NUM_THREADS; 1 under
--benchmark-disable, where every variant runs once as a smoke test in a few seconds).
    make bench-train    # writes docs/results/train-bench-<device>-<date>.{json,md}
"""
from __future__ import annotations

import math
import os
import statistics
import time

import pytest
import torch

import kernels
from engine.runtime.distributed import device_name
from launch import train_bench as tb

BATCH = 8
TARGET_S = float(os.environ.get("LADDER_TRAIN_BENCH_SECONDS", "5"))  # timed seconds per row (enabled)
_PROBE: dict = {}  # depth -> probe median seconds (same run), for the probe row's extra_info


def _depths() -> list[int]:
    env = os.environ.get("LADDER_TRAIN_BENCH_DEPTHS")
    return [int(x) for x in env.split(",") if x.strip()] if env else [2, 3, 4]


def pytest_generate_tests(metafunc):
    if "depth" in metafunc.fixturenames:
        ds = _depths()
        metafunc.parametrize("depth", ds, ids=[f"d{d}" for d in ds], scope="module")


@pytest.fixture(scope="module", autouse=True)
def _threads(request):
    n0 = torch.get_num_threads()
    want = os.environ.get("LADDER_BENCH_THREADS")
    disabled = bool(request.config.getoption("benchmark_disable", default=False))
    if want:
        torch.set_num_threads(int(want))
    elif disabled:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(n0)


@pytest.fixture(scope="module")
def bench(depth, _threads):
    dev = torch.device(os.environ.get("LADDER_BENCH_DEVICE", "cpu"))
    torch.manual_seed(0)
    return tb.build(depth, batch=BATCH, device=dev)


def _timed(fn, s) -> float:
    t0 = time.perf_counter()
    fn(s)
    return time.perf_counter() - t0


def _q(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


@pytest.mark.parametrize("impl", tb.IMPLS)
def test_bench_train_step(benchmark, bench, depth, impl):
    s = bench
    disabled = benchmark.disabled
    fn = {"matmul_probe": tb.matmul_probe, "plain_step": tb.plain_step, "inherited_step": tb.inherited_step}[impl]
    cfg = s.model.config
    benchmark.group = f"train-step-d{depth}"
    benchmark.extra_info.update(
        impl=impl, depth=depth, preset="cpu-tiny", batch=BATCH, seq_len=cfg.seq_len, tokens=s.tokens,
        model_dim=cfg.model_dim, dtype="float32",
        flops_per_step=s.flops_per_step if impl != "matmul_probe" else s.probe_flops,
        probe_shape=s.probe_shape, probe_flops=s.probe_flops,
        device=str(s.device), device_name=device_name(s.device), torch=torch.__version__,
        threads=torch.get_num_threads(), kernel_backend=s.opt.kernel_backend, attention=s.model.attention.name,
    )
    plain_t: list[float] = []
    plain_upd: list[float] = []  # update phase (everything after the loss sync) of the paired plain step
    phases: list[dict] = []  # phases of the timed calls

    def setup():
        if impl == "inherited_step" and not disabled:  # smoke runs skip the pairing (CI time)
            plain_t.append(_timed(tb.plain_step, s))
            plain_upd.append(s.phase["update"])

    def target():
        fn(s)
        phases.append(s.phase)

    if disabled:
        rounds = 1
    else:
        est = min(_timed(fn, s), _timed(fn, s))  # also warms up
        rounds = max(5, min(200 if impl == "matmul_probe" else 40, int(TARGET_S / max(est, 1e-6))))
    t0 = time.perf_counter()
    benchmark.pedantic(target, setup=setup, rounds=rounds, iterations=1, warmup_rounds=0 if disabled else 1)
    wall = time.perf_counter() - t0

    if impl != "matmul_probe":
        assert math.isfinite(s.last_loss)
        assert s.opt.kernel_backend == kernels.last_backend() == kernels.backend_for(s.device)
    if impl == "inherited_step":
        assert s.last_penalty is not None and math.isfinite(s.last_penalty) and s.last_penalty >= 0
        assert any(float(f.abs().sum()) > 0 for f in s.fishers.values())  # online Fisher accumulated

    flops = benchmark.extra_info["flops_per_step"]
    if disabled or benchmark.stats is None:  # one call: numbers from its own wall time (smoke only)
        times = [wall - sum(plain_t)]
    else:
        times = list(benchmark.stats.stats.data)
    med = statistics.median(times)
    info = benchmark.extra_info
    info["median_s"] = med
    info["tokens_per_s"] = s.tokens / med if impl != "matmul_probe" else None
    info["flop_s"] = flops / med
    if impl == "matmul_probe":
        _PROBE[depth] = med
        info["probe_flop_s"] = s.probe_flops / med
        info["mfu_vs_probe"] = 1.0
        return
    n = len(times)
    if depth not in _PROBE:  # the probe row did not run (e.g. -k): measure it here, same shape
        tb.matmul_probe(s)
        _PROBE[depth] = statistics.median(_timed(tb.matmul_probe, s) for _ in range(5 if disabled else 50))
    info["probe_flop_s"] = s.probe_flops / _PROBE[depth]
    info["mfu_vs_probe"] = info["flop_s"] / info["probe_flop_s"]
    if not disabled:
        try:
            from profiling.cost import measure_matmul_peak

            info["peak_1024_flop_s"] = measure_matmul_peak(str(s.device), n=1024, reps=5)  # cached per process
            info["mfu_vs_peak_1024"] = info["flop_s"] / info["peak_1024_flop_s"]
        except Exception as e:  # a reference number only
            info["peak_1024_error"] = f"{type(e).__name__}: {e}"
    if impl == "inherited_step" and plain_t:
        pl = plain_t[-n:]
        shares = [(ti - tp) / ti for ti, tp in zip(times, pl)]
        info["paired_plain_median_s"] = statistics.median(pl)
        info["regularizer_share"] = statistics.median(shares)
        info["regularizer_share_q1_q3"] = [_q(shares, 0.25), _q(shares, 0.75)]
        info["regularizer_share_unpaired"] = (med - statistics.median(pl)) / med
        assert math.isfinite(info["regularizer_share"])
        # the same share from the update phase alone (ARS + penalty terms + fused step with Fisher vs the
        # plain fused step), which excludes the forward/backward's load noise: (upd_inh - upd_plain) / t_inh
        ph = phases[-n:]
        if len(ph) == n and len(plain_upd) >= n:
            extra = [p["update"] - u for p, u in zip(ph, plain_upd[-n:])]
            info["update_plain_median_s"] = statistics.median(plain_upd[-n:])
            info["update_inherited_median_s"] = statistics.median(p["update"] for p in ph)
            info["regularizer_share_update_phase"] = statistics.median(extra) / med
    if phases:
        info["fwd_bwd_median_s"] = statistics.median(p["fwd_bwd"] for p in phases[-n:])
        info["update_median_s"] = statistics.median(p["update"] for p in phases[-n:])
