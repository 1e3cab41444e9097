"""Training-throughput benchmark helpers (tests/bench/test_bench_train_step.py) and its markdown writer.

What one benchmark round runs, on one model and one batch (B sequences x T tokens, fp32 on CPU):

  matmul_probe     torch.mm of [B*T, D] x [D, 4D] fp32 (the shape of the MLP's c_fc on this
                   batch: 2*B*T*D*4D FLOPs): the CPU's practical fp32 peak at this size, measured
                   in the same run, the denominator of "MFU vs the matmul probe".
  plain_step       a scratch-arm training step as engine/train/trainer.py runs it: forward, backward,
                   float(loss) (the trainer's one host sync), LadderOptimizer.step through the
                   fused kernel (no penalty, damping 1, no Fisher), zero_grad.
  inherited_step   an inherit-arm step: the same, plus ARS('seed').update on the loss, the
                   penalty's InheritTerms (anchors and kappa of a real engine.inherit.penalty.Penalty,
                   coords form, built on a model grown by engine.inherit.growth.grow from a d-1 model with
                   a carried Fisher), online Fisher accumulation into a fishers dict inside the
                   fused step, and float(penalty) as the trainer logs it.

Both steps use the SAME grown model, optimizer and batch, so the difference is the regularizer's
work alone. Achieved FLOP/s counts model FLOPs only (GPTConfig.flops_per_token * B*T tokens, as
profiling/cost.py defines MFU): the inherited step does the same model FLOPs in more time.

    python -m launch.train_bench docs/results/train-bench-cpu-2core-2026-11-23.json \
        -o docs/results/train-bench-cpu-2core-2026-11-23.md --device cpu-2core --note "..."
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from engine.inherit.ars import ARS
from engine.inherit.growth import grow
from engine.inherit.penalty import Penalty
from engine.train.config import TRAIN_PRESETS
from engine.train.inherited import penalty_terms
from engine.train.optim import LadderOptimizer, model_param_groups
from kernels.bench_report import markdown_main
from models.attention import select_backend
from models.config import model_config
from models.gpt import build_model

IMPLS = ("matmul_probe", "plain_step", "inherited_step")
LAM, GAMMA = 1e5, 0.1  # engine.ladder.config.LadderConfig defaults
FISHER_STEPS = 20  # LadderConfig.fisher_batches: the online Fisher's 1/K scale


@dataclass
class TrainBench:
    depth: int
    device: torch.device
    model: object
    named: dict
    groups: list
    opt: object
    penalty: object
    ars: object
    fishers: dict
    x: torch.Tensor
    y: torch.Tensor
    probe_a: torch.Tensor
    probe_b: torch.Tensor
    tokens: int
    flops_per_step: float  # model FLOPs of one training step
    probe_flops: float  # FLOPs of one matmul probe
    step: int = 0
    last_loss: float = float("nan")
    last_penalty: float | None = None
    phase: dict | None = None  # seconds of the last step: fwd_bwd (forward+backward+loss sync), update (the rest)

    @property
    def probe_shape(self) -> str:
        (m, k), (_, n) = self.probe_a.shape, self.probe_b.shape
        return f"[{m}, {k}] @ [{k}, {n}]"

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def build(depth: int, *, preset: str = "cpu-tiny", batch: int = 8, seq_len: int | None = None,
          device: str | torch.device = "cpu", seed: int = 0) -> TrainBench:
    """The benchmark state for rung `depth` (>= 2): a model grown from a fresh d-1 model with a
    random positive Fisher (what growth carries), its Penalty (coords), ARS('seed'), the
    optimizer, online-Fisher buffers, one fixed random batch and the matmul-probe operands."""
    if depth < 2:
        raise ValueError(f"the inherited step needs a d-1 model to grow from; depth must be >= 2, got {depth}")
    dev = torch.device(device)
    over = {"seq_len": seq_len} if seq_len else {}
    old_cfg, cfg = model_config(preset, depth - 1, **over), model_config(preset, depth, **over)
    old = build_model(old_cfg, seed=seed, device=dev)
    old.set_attention(select_backend(dev, torch.float32))
    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    # ~1e-7 on average, the size measured for the online Fisher on cpu-tiny (engine/ladder/run.py)
    omega = {n: (torch.rand(p.shape, generator=gen) * 2e-7).to(dev) for n, p in old.named_parameters()}
    res = grow(old, cfg, seed=seed * 1000 + depth, fisher=omega)
    model = res.model
    model.set_attention(select_backend(dev, torch.float32))
    model.train()
    tp = TRAIN_PRESETS[preset]
    groups = model_param_groups(model, matrix_lr=tp["matrix_lr"], embedding_lr=tp["embedding_lr"],
                                unembedding_lr=tp["unembedding_lr"], weight_decay=0.0, muon=False)
    opt = LadderOptimizer(groups)
    named = dict(model.named_parameters())
    penalty = Penalty(list(named.items()), res.anchor, res.mask, res.fisher, lam=LAM, gamma=GAMMA, subspace="coords")
    g = torch.Generator(device="cpu").manual_seed(seed + 2)
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len), generator=g).to(dev)
    y = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len), generator=g).to(dev)
    tokens = batch * cfg.seq_len
    D = cfg.model_dim
    pa = torch.randn(tokens, D, generator=g).to(dev)
    pb = torch.randn(D, cfg.mlp_dim, generator=g).to(dev)
    return TrainBench(depth=depth, device=dev, model=model, named=named, groups=groups, opt=opt, penalty=penalty,
                      ars=ARS(mode="seed", seed=seed), fishers={n: torch.zeros_like(p) for n, p in named.items()},
                      x=x, y=y, probe_a=pa, probe_b=pb, tokens=tokens,
                      flops_per_step=float(cfg.flops_per_token) * tokens, probe_flops=2.0 * tokens * D * cfg.mlp_dim)


def matmul_probe(s: TrainBench):
    torch.mm(s.probe_a, s.probe_b)
    s.sync()


def plain_step(s: TrainBench, lr_mult: float = 1.0):
    t0 = time.perf_counter()
    loss = s.model(s.x, s.y)
    loss.backward()
    s.last_loss = float(loss.detach())  # the trainer's host sync (non-finite guard)
    t1 = time.perf_counter()
    s.opt.step(lr_mult)
    s.opt.zero_grad()
    s.step += 1
    s.sync()
    s.phase = {"fwd_bwd": t1 - t0, "update": time.perf_counter() - t1}


def inherited_step(s: TrainBench, lr_mult: float = 1.0):
    t0 = time.perf_counter()
    loss = s.model(s.x, s.y)
    loss.backward()
    s.last_loss = float(loss.detach())
    t1 = time.perf_counter()
    damping = s.ars.update(s.last_loss, s.groups[-1].lr * lr_mult)
    terms, _ = penalty_terms(s.penalty, s.named, s.step)  # coords: no svd part of Phi
    pen = s.opt.step(lr_mult, damping=damping, terms=terms, fishers=s.fishers, fisher_scale=1.0 / FISHER_STEPS)
    s.last_penalty = float(pen)  # logged every step by the trainer
    s.opt.zero_grad()
    s.step += 1
    s.sync()
    s.phase = {"fwd_bwd": t1 - t0, "update": time.perf_counter() - t1}


# ------------------------------------------------------------------------------------------------
# markdown


def load_rows(data: dict) -> dict:
    rows: dict = {}
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {})
        if info.get("impl") not in IMPLS or b.get("stats") is None:
            continue
        rows.setdefault(info["depth"], {})[info["impl"]] = {"info": info, **b["stats"]}
    return rows


def _f(x, spec):
    return "—" if x is None else format(x, spec)


def render(data: dict, device: str | None = None, note: str | None = None) -> str:
    rows = load_rows(data)
    first = next((r["info"] for by in rows.values() for r in by.values()), {})
    out = [f"# Training-step throughput, cpu-tiny rungs ({device or first.get('device', '?')})", ""]
    out.append(f"- date: {data.get('datetime', '?')}")
    out.append(f"- device: {first.get('device_name', '?')}; torch {first.get('torch', '?')}; "
               f"**{first.get('threads', '?')} torch thread(s)**; optimizer kernel backend: "
               f"{first.get('kernel_backend', '?')}; attention: {first.get('attention', '?')}; fp32")
    out.append(f"- batch: {first.get('batch', '?')} x {first.get('seq_len', '?')} tokens per step, one fixed "
               "random batch; the model is the d-1 -> d grown rung (engine.inherit.growth.grow), the same model and "
               "optimizer for the plain and the inherited step")
    out.append("- plain step: forward + backward + float(loss) + LadderOptimizer.step (fused kernel) + zero_grad. "
               "Inherited step: the same + ARS('seed') update + InheritTerms from a real Penalty (coords; anchors, "
               f"kappa; lambda={LAM:g}, gamma={GAMMA:g}) + online Fisher accumulation in the fused step + "
               "float(penalty)")
    out.append("- achieved FLOP/s = flops_per_token x tokens / median step time (model FLOPs only, attention "
               "included, as GPTConfig counts them). 'MFU vs probe' divides it by the FLOP/s of the fp32 matmul "
               "probe of the MLP c_fc's size on this batch (median of up to 200 calls, timed in the same run just "
               "before that rung's steps). 'vs 1024^3' divides by profiling.cost.measure_matmul_peak (best of 5 "
               "fp32 1024^3 matmuls), the CPU's practical peak at a large size")
    out.append("- regularizer share = (t_inherited - t_plain) / t_inherited per round, each inherited round "
               "directly after a plain round on the same model (paired; median over rounds, q1-q3 beside it)")
    if note:
        out.append(f"- **note:** {note}")
    out += ["", "| rung | D | probe shape | probe GFLOP/s (median) | step | median ms | min ms | IQR ms | tokens/s | "
            "GFLOP/s | MFU vs probe | MFU vs 1024^3 matmul | rounds |",
            "|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    shares, verdicts = [], []
    for d in sorted(rows):
        by = rows[d]
        for impl in IMPLS:
            r = by.get(impl)
            if r is None:
                continue
            i = r["info"]
            if impl == "matmul_probe":
                continue
            out.append(f"| d{d} | {i.get('model_dim')} | {i.get('probe_shape')} | "
                       f"{_f(i['probe_flop_s'] / 1e9 if i.get('probe_flop_s') else None, '.1f')} | "
                       f"{impl.replace('_', ' ')} | {1e3 * r['median']:.1f} | {1e3 * r['min']:.1f} | "
                       f"{1e3 * (r['q3'] - r['q1']):.1f} | {i.get('tokens_per_s', 0):,.0f} | "
                       f"{i.get('flop_s', 0) / 1e9:.2f} | {_f(i.get('mfu_vs_probe'), '.1%')} | "
                       f"{_f(i.get('mfu_vs_peak_1024'), '.1%')} | {r['rounds']} |")
        inh = by.get("inherited_step")
        if inh and inh["info"].get("regularizer_share") is not None:
            i = inh["info"]
            q = i.get("regularizer_share_q1_q3") or [None, None]
            shares.append(f"| d{d} | {i.get('paired_plain_median_s', 0) * 1e3:.1f} | {inh['median'] * 1e3:.1f} | "
                          f"**{i['regularizer_share']:.1%}** | {_f(q[0], '.1%')} – {_f(q[1], '.1%')} | "
                          f"{_f(i.get('regularizer_share_unpaired'), '.1%')} | "
                          f"{_f(i.get('update_plain_median_s') and 1e3 * i['update_plain_median_s'], '.1f')} / "
                          f"{_f(i.get('update_inherited_median_s') and 1e3 * i['update_inherited_median_s'], '.1f')} | "
                          f"{_f(i.get('regularizer_share_update_phase'), '.1%')} |")
            upd = i.get("regularizer_share_update_phase")
            if q[0] is not None and q[0] <= 0 <= q[1]:
                verdicts.append(f"- d{d}: the whole-step paired share ({i['regularizer_share']:+.1%}, q1-q3 spans 0) "
                                "does not resolve the regularizer's cost at this timing noise"
                                + (f"; measured on the update phase it is {upd:.1%} of the inherited step"
                                   if upd is not None else "") + ".")
            else:
                verdicts.append(f"- d{d}: the regularizer takes {i['regularizer_share']:.1%} of the inherited step "
                                "(paired median)"
                                + (f"; {upd:.1%} measured on the update phase alone" if upd is not None else "") + ".")
    out += ["", "## The regularizer's share of a whole cpu-tiny training step", "",
            "| rung | plain step median ms (paired rounds) | inherited step median ms | share (paired median) | "
            "q1 – q3 | share from unpaired medians | update phase ms, plain / inherited (median) | "
            "share from the update phase alone |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    out += shares or ["| — | | | | | | | |"]
    out += [""] + verdicts
    out += ["", "The update phase is everything after the loss's host sync (ARS, penalty terms, the fused "
            "optimizer step with Fisher accumulation, float(penalty), zero_grad); the last column is "
            "median(update_inherited - update_plain over paired rounds) / median inherited step: the same "
            "share without the forward/backward's timing noise, which dominates the whole-step difference "
            "on a loaded machine."]
    out.append("")
    return "\n".join(out)


def main(argv=None):
    markdown_main(render, "markdown table from the training-step benchmark JSON", argv, note=True)


if __name__ == "__main__":
    main()
