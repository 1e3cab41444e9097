"""What the inheritance method adds to one rung's loop, as this rank's pieces: the penalty built
from a grown rung's Inheritance (anchors, mask and Fisher cut to the rank's shards), its terms
for one step, the grown rung's first step (its data position and carried optimizer moments), and
its teacher when it distils from its parent.
ARS lives with the host sync (engine/train/guard.py), the online Fisher in engine/inherit/fisher.py."""
from __future__ import annotations

import math
from dataclasses import asdict

import torch
from torch import Tensor

from engine.inherit.distill import Distillation
from engine.inherit.inheritance import Inheritance
from engine.inherit.penalty import Penalty, inherited_fisher_mean
from engine.runtime.distributed import DistEnv, compile_blocks, local, shard_like, shard_model
from engine.train.config import TrainError
from engine.train.optim import InheritTerms
from models.attention import AttentionBackend
from models.gpt import build_model


def build_penalty(inherit: Inheritance | None, named: dict, total_steps: int, world_size: int) -> Penalty | None:
    """The grown rung's Penalty over this rank's shards of `named`, or None when it has none."""
    if inherit is None or not inherit.penalty.active:
        return None
    if inherit.penalty.subspace == "svd" and world_size > 1:
        raise ValueError("--subspace svd needs whole matrices; run it with world_size 1 (coords works sharded)")

    def shards(full: dict) -> dict:
        return {n: shard_like(full[n], named[n]) for n in named}

    fisher = (shards(inherit.fisher) if inherit.fisher is not None
              else {n: torch.zeros_like(local(p)) for n, p in named.items()})
    extra = {}
    if inherit.penalty.form == "decoupled":  # mean_M(Omega) over the whole model: from the full tensors, not a shard
        extra["omega_mean"] = inherited_fisher_mean([inherit.fisher[n] for n in named],
                                                    [inherit.mask[n] for n in named]) \
            if inherit.fisher is not None else 0.0
    return Penalty([(n, local(p)) for n, p in named.items()], shards(inherit.anchor), shards(inherit.mask), fisher,
                   total_steps=total_steps, **asdict(inherit.penalty), **extra)


def penalty_terms(penalty: Penalty, named: dict, steps_done: int) -> tuple[InheritTerms, Tensor | None]:
    """The penalty's part of the step taken after `steps_done` steps: the optimizer's terms, and
    the svd part of Phi's value (None under "coords"), which the optimizer's elementwise value
    leaves out."""
    kappas = penalty.kappa_for(steps_done)
    anchors = penalty.anchors()
    names = list(named)
    extra, subspace_value = None, None
    if penalty.subspace == "svd":
        extra, subspace_value = penalty.subspace_terms([local(named[n]) for n in names], steps_done)
    terms = InheritTerms(
        anchors={n: a for n, a in zip(names, anchors) if a is not None},
        kappas={n: k for n, k in zip(names, kappas) if k is not None},
        extra_grads={n: x for n, x in zip(names, extra) if x is not None} if extra else {},
        decoupled=penalty.form == "decoupled",
    )
    return terms, subspace_value


def start_inherited(inherit: Inheritance, loader, opt, named: dict) -> None:
    """A grown rung's first step: its token stream and optimizer state as the inheritance says."""
    if inherit.loader_state is not None:
        loader.load_state_dict(inherit.loader_state)  # the grown rung reads on from its parent's stream
    if inherit.moments is not None:
        if opt.step_count != 0 or any("exp_avg" not in opt.state[n] for n in named):
            raise TrainError("carried optimizer moments need a fresh AdamW optimizer (--optimizer adamw)")
        for n, p in named.items():
            for key in ("exp_avg", "exp_avg_sq"):
                local(opt.state[n][key]).copy_(local(shard_like(inherit.moments[n][key], p)))
        opt.step_count = inherit.optim_step


def build_teacher(distill: Distillation, env: DistEnv, attention: AttentionBackend, bf16: bool,
                  compile_: bool) -> torch.nn.Module:
    """The frozen parent a distilling rung learns from, placed, compiled and sharded as the student
    is (FSDP2 over the same mesh, so a rank holds 1/world of it between forward passes)."""
    teacher = build_model(distill.teacher_config, device=env.device)
    teacher.load_state_dict({k: v.to(env.device) for k, v in distill.teacher_state.items()})
    teacher.requires_grad_(False)
    teacher.set_attention(attention)
    if compile_:
        compile_blocks(teacher)
    return shard_model(teacher.eval(), env, bf16)


class NewMomentCorrection:
    """--new-moments own-step: under carried moments the new coordinates (mask 0) start with zero m
    and v but the parent's step count t, whose bias corrections are ~1, so their first updates come
    out 0.89x, then up to ~1.43x, a normal Adam step. After each step this replaces, on those
    coordinates, the update the kernel made with the one Adam makes from their own count k = t - t0
    (t0 the carried count): p += lr * (u_t - u_k), u_s = (m / (1 - b1^s)) / (sqrt(v / (1 - b2^s)) + eps),
    from the step's own m and v, so it is exact, eps included. Weight decay is untouched; the coupled
    penalty and ARS are inside m and v. Once b^k is below fp32's resolution the two updates are equal
    and it stops (~360 steps at b2 = 0.95). Stateless: resumed runs and WSD branches recompute it."""

    def __init__(self, opt, named: dict, mask: dict, start_step: int):
        self.start = start_step
        self.new = {n: 1.0 - local(shard_like(mask[n].to(local(p).device), p)).float()
                    for n, p in named.items() if bool((mask[n] < 1).any())}
        self.horizon = math.ceil(math.log(1e-8) / math.log(max(opt.beta1, opt.beta2)))

    @torch.no_grad()
    def apply(self, opt, lr_mult: float, found_inf: Tensor | None) -> None:
        t = opt.step_count
        k = t - self.start
        if not 1 <= k <= self.horizon:
            return
        b1, b2 = opt.beta1, opt.beta2
        for g in opt.groups:
            lr = g.lr * lr_mult
            for n, p in zip(g.names, g.params):
                if n not in self.new or p.grad is None:
                    continue
                m, v = local(opt.state[n]["exp_avg"]).float(), local(opt.state[n]["exp_avg_sq"]).float()
                root = v.sqrt()
                u_t = m / (root / math.sqrt(1 - b2 ** t) + opt.eps) / (1 - b1 ** t)
                u_k = m / (root / math.sqrt(1 - b2 ** k) + opt.eps) / (1 - b1 ** k)
                fix = (u_t - u_k).mul_(self.new[n]).mul_(lr)
                if found_inf is not None:  # a skipped step moved nothing: correct nothing
                    fix.mul_((found_inf == 0).to(fix.dtype))
                local(p).add_(fix.to(local(p).dtype))


class LayerRamp:
    """--ramp-frac (MSG-style growth): an inserted layer's write-outs enter multiplied by min(1, s/K)
    at the grown rung's step s; evaluation sees the model as it is at that step. From step K on the
    blocks are plain again (gate None). Stateless: a resumed run recomputes the gate from its step."""

    def __init__(self, model, layers: list[int], steps: int):
        self.blocks = [model.blocks[i] for i in layers]
        self.steps = steps

    def set(self, step: int) -> None:
        w = min(1.0, step / self.steps)
        for b in self.blocks:
            if w >= 1.0:
                b.gate = None
            elif b.gate is None:
                b.gate = torch.full((), w, device=b.attn.c_q.weight.device)
            else:
                b.gate.fill_(w)
