"""Benchmark: the fused inherited optimizer step against torch's own AdamW paths.

Same tensors, same run, per size:
  torch_fused_adamw      torch.optim.AdamW(fused=True) alone (the baseline: 28 B/param)
  kernel_inherited       kernels.fused_adamw_step, anchor+kappa+damping (36 B/param)
  kernel_inherited_fisher  ... plus the online Fisher accumulation (44 B/param)
  kernel_inherited_bf16kappa  kappa stored as bf16 (34 B/param)
  eager_composition      torch ops g + kappa*(p-A), *damping, then fused AdamW (unfused)
  compiled_composition   torch.compile of the whole composition (skipped if compile fails)

Every non-baseline round is paired with an untimed-by-pytest torch fused AdamW step run just
before it (pedantic `setup`), and extra_info records the median per-round time ratio: on a
shared machine the load drifts between tests, the paired ratio does not.
GB/s is computed from the *useful* bytes per parameter of the inherited step (what a single
pass must move), so the composition variants are comparable with the kernel; extra_info also
records the ratio to torch fused AdamW's GB/s measured in the same run.

Sizes (Mi parameters): CPU 1,4,16; CUDA 1,4,16,64; override with LADDER_BENCH_SIZES=1,4,16,64.
With --benchmark-disable (CI) only the smallest size runs, once, and the compiled variant is
skipped (compilation alone takes tens of seconds on 2 cores).
    make bench-kernels     # writes docs/results/kernels-bench-<device>-<date>.{json,md}
"""
from __future__ import annotations

import os
import statistics
import time

import pytest
import torch

from engine.runtime.distributed import device_name

import kernels

HP = dict(lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
BYTES_PER_PARAM = {  # fp32 everything; read + write of the minimal single pass
    "torch_fused_adamw": 28,        # r p g m v, w p m v
    "kernel_inherited": 36,         # + r anchor, kappa
    "kernel_inherited_fisher": 44,  # + r/w fisher
    "kernel_inherited_bf16kappa": 34,  # kappa stored in bf16
    "eager_composition": 36,        # same useful work as kernel_inherited
    "compiled_composition": 36,
}
IMPLS = list(BYTES_PER_PARAM)
_RESULTS: dict = {}  # (size, impl) -> median seconds, for same-run ratios


def _device() -> torch.device:
    want = os.environ.get("LADDER_BENCH_DEVICE")
    if want:
        return torch.device(want)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _device_name(dev: torch.device) -> str:
    return f"{device_name(dev)} ({torch.get_num_threads()} torch threads)"


def _sizes(disabled: bool) -> list[int]:
    env = os.environ.get("LADDER_BENCH_SIZES")
    if env:
        mi = [int(x) for x in env.split(",") if x.strip()]
    else:
        mi = [1, 4, 16, 64] if _device().type == "cuda" else [1, 4, 16]
    if disabled:
        mi = mi[:1]
    return [m << 20 for m in mi]


def pytest_generate_tests(metafunc):
    if "n_params" in metafunc.fixturenames:
        disabled = bool(metafunc.config.getoption("benchmark_disable", default=False))
        sizes = _sizes(disabled)
        metafunc.parametrize("n_params", sizes, ids=[f"{s >> 20}M" for s in sizes], scope="module")


class State:
    """One set of tensors per size, shared by every variant."""

    def __init__(self, n: int, dev: torch.device):
        gen = torch.Generator(device=dev).manual_seed(0)
        r = lambda: torch.randn(n, device=dev, generator=gen)  # noqa: E731
        self.n, self.dev = n, dev
        self.p = r()
        self.g = r()
        self.m = torch.zeros(n, device=dev)
        self.v = torch.zeros(n, device=dev)
        self.anchor = self.p.clone()
        self.kappa = torch.rand(n, device=dev, generator=gen)
        self.kappa_bf16 = self.kappa.to(torch.bfloat16)
        self.fisher = torch.zeros(n, device=dev)
        self.damping = torch.tensor(0.5, device=dev)
        self.step = 0
        # torch's optimizer on the same parameter storage
        self.param = torch.nn.Parameter(self.p)
        self.param.grad = self.g
        self.opt = torch.optim.AdamW([self.param], lr=HP["lr"], betas=(HP["beta1"], HP["beta2"]),
                                     eps=HP["eps"], weight_decay=HP["weight_decay"], fused=True)
        self.compiled = None
        self.compile_error = None

    def sync(self):
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)


@pytest.fixture(scope="module")
def state(n_params):
    s = State(n_params, _device())
    yield s
    del s


def _kernel_step(s: State, fisher: bool, bf16_kappa: bool = False):
    s.step += 1
    kernels.fused_adamw_step(s.p, s.g, s.m, s.v, **HP, step=s.step, anchor=s.anchor,
                             kappa=s.kappa_bf16 if bf16_kappa else s.kappa, damping=s.damping,
                             fisher=s.fisher if fisher else None, fisher_scale=0.1)
    s.sync()


def _torch_fused(s: State):
    s.param.grad = s.g
    s.opt.step()
    s.sync()


def _eager(s: State):
    with torch.no_grad():
        g2 = (s.g + s.kappa * (s.p - s.anchor)) * s.damping
    s.param.grad = g2
    s.opt.step()
    s.param.grad = s.g
    s.sync()


def _composition(p, g, m, v, anchor, kappa, damping, step_size, inv_bc2_sqrt):
    gp = (g + kappa * (p - anchor)) * damping
    p.mul_(1.0 - HP["lr"] * HP["weight_decay"])
    m.lerp_(gp, 1.0 - HP["beta1"])
    v.mul_(HP["beta2"]).addcmul_(gp, gp, value=1.0 - HP["beta2"])
    p.sub_(step_size * m / (v.sqrt() * inv_bc2_sqrt + HP["eps"]))


def _compiled(s: State):
    s.step += 1
    b1, b2 = HP["beta1"], HP["beta2"]
    ss = torch.tensor(HP["lr"] / (1 - b1 ** s.step), device=s.dev)
    ib2 = torch.tensor((1 - b2 ** s.step) ** -0.5, device=s.dev)
    with torch.no_grad():
        s.compiled(s.p, s.g, s.m, s.v, s.anchor, s.kappa, s.damping, ss, ib2)
    s.sync()


def _get_compiled(s: State):
    if s.compiled is None and s.compile_error is None:
        try:
            s.compiled = torch.compile(_composition, dynamic=False)
            _compiled(s)  # compile now, outside the timing
        except Exception as exc:  # no compiler, inductor unsupported, ...
            s.compiled, s.compile_error = None, f"{type(exc).__name__}: {str(exc)[:300]}"
    if s.compile_error:
        pytest.skip(f"torch.compile of the composition failed here: {s.compile_error}")


@pytest.mark.parametrize("impl", IMPLS)
def test_bench_optimizer_step(benchmark, state, impl, n_params):
    disabled = benchmark.disabled
    if impl == "compiled_composition":
        if disabled:
            pytest.skip("compile takes too long for --benchmark-disable runs")
        _get_compiled(state)
        fn = lambda: _compiled(state)  # noqa: E731
    elif impl == "torch_fused_adamw":
        fn = lambda: _torch_fused(state)  # noqa: E731
    elif impl == "eager_composition":
        fn = lambda: _eager(state)  # noqa: E731
    else:
        fisher = impl == "kernel_inherited_fisher"
        bf16k = impl == "kernel_inherited_bf16kappa"
        fn = lambda: _kernel_step(state, fisher, bf16k)  # noqa: E731

    rounds = max(15, min(60, int(4e9 / (n_params * 36))))  # >= ~4 GB of traffic per variant
    if impl == "eager_composition":
        rounds = max(5, rounds // 3)  # ~15x slower
    benchmark.group = f"optimizer-step-{n_params >> 20}M"
    benchmark.extra_info.update(
        impl=impl, n_params=n_params, bytes_per_param=BYTES_PER_PARAM[impl],
        device=str(state.dev), device_name=_device_name(state.dev), torch=torch.__version__,
        backend=kernels.backend_for(state.dev) if impl.startswith("kernel") else "torch",
        simd=_simd_path() if state.dev.type == "cpu" else None,
    )
    # Paired baseline: before every timed round (untimed, via `setup`) run and time one torch
    # fused AdamW step on the same tensors. On a shared machine the load drifts between tests;
    # the per-round ratio variant/baseline is then measured in the same time window.
    paired: list = []

    def _baseline_round():
        if impl != "torch_fused_adamw" and not disabled:
            t0 = time.perf_counter()
            _torch_fused(state)
            paired.append(time.perf_counter() - t0)

    benchmark.pedantic(fn, setup=_baseline_round, rounds=rounds, iterations=1, warmup_rounds=2)
    if impl.startswith("kernel"):
        assert kernels.last_backend() == kernels.backend_for(state.dev)
    assert torch.isfinite(state.p[:1024]).all()
    if disabled or benchmark.stats is None:
        return
    med = benchmark.stats.stats.median
    _RESULTS[(n_params, impl)] = med
    gbs = BYTES_PER_PARAM[impl] * n_params / med / 1e9
    benchmark.extra_info["gb_per_s"] = round(gbs, 3)
    data = list(benchmark.stats.stats.data)
    if paired and len(paired) >= len(data):
        pb = paired[-len(data):]  # warmup rounds also ran setup
        ratios = sorted(t / b for t, b in zip(data, pb))
        benchmark.extra_info["paired_torch_fused_median_s"] = statistics.median(pb)
        benchmark.extra_info["paired_time_ratio"] = round(statistics.median(ratios), 3)
        benchmark.extra_info["paired_time_ratio_q1_q3"] = [
            round(ratios[len(ratios) // 4], 3), round(ratios[(3 * len(ratios)) // 4], 3)]
    base = _RESULTS.get((n_params, "torch_fused_adamw"))
    if base:
        base_gbs = BYTES_PER_PARAM["torch_fused_adamw"] * n_params / base / 1e9
        benchmark.extra_info["time_ratio_to_torch_fused"] = round(med / base, 3)
        benchmark.extra_info["gbs_ratio_to_torch_fused"] = round(gbs / base_gbs, 3)


def _simd_path():
    from kernels import native
    return native.simd_path()
