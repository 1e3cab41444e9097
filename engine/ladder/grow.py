"""A rung transition: the previous rung's checkpoint grown into the next rung, with the Fisher,
anchor, mask, carried optimizer state and data position the grown rung starts from (method.md
sections 2-3) and the parent as a teacher when the recipe distils, as one Inheritance for the
training loop."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from engine.data import TokenLoader, prepare_data
from engine.inherit.distill import Distillation
from engine.inherit.ewc import EWC, R_BATCHES, ewc_lambda, fisher_ratio, lam_is_on
from engine.inherit.fisher import posthoc_fisher
from engine.inherit.growth import grow, growth_logit_error
from engine.inherit.inheritance import Inheritance
from engine.inherit.penalty import PenaltyConfig
from engine.ladder.config import LadderConfig
from engine.runtime.distributed import DistEnv
from engine.train import checkpoint as ckpt
from engine.train.config import TRAIN_PRESETS, TrainConfig, total_steps_for
from models.config import model_config
from models.gpt import GPT


def build_inheritance(source: Path, prev_d: int, d: int, lc: LadderConfig, env: DistEnv, use_penalty: bool,
                      scratch_steps: int | None = None) -> Inheritance:
    """Grow the weights of checkpoint `source` (rung prev_d) into rung d, with what the penalty needs
    and, with --distill, the parent as a teacher over `distill_frac` of `scratch_steps` (rung d's
    scratch budget in steps)."""
    t0 = time.time()
    over = {k: lc.train[k] for k in ("vocab_size", "seq_len") if lc.train.get(k) is not None}
    prev_model = ckpt.load_model(source, model_config(lc.preset, prev_d, **over))
    omega, fisher_flops = (None, 0.0)
    lam, gamma = lc.lam_by_depth.get(d, lc.lam), lc.gamma_by_depth.get(d, lc.gamma)
    if use_penalty and lam_is_on(lam):
        omega, fisher_flops = _fisher_for(source.parent.parent, prev_model, lc, env)
    ewc = None
    if use_penalty and lam == EWC:
        lam, ewc, r_flops = _ewc_lambda(source, prev_model, d, lc, env)
        fisher_flops += r_flops
    new_cfg = model_config(lc.preset, d, **over)
    moments, optim_step = ckpt.load_full_moments(source, prev_model) if lc.optimizer_state == "carry" else (None, 0)
    res = grow(prev_model, new_cfg, seed=lc.seed * 1000 + d, placement=lc.placement, fisher=omega, moments=moments,
               depth_init=lc.depth_init, width_init=lc.width_init)
    err = growth_logit_error(prev_model, res.model, new_cfg.vocab_size, min(64, new_cfg.seq_len), seed=lc.seed)
    penalty = PenaltyConfig(lam=lam if use_penalty else 0.0, gamma=gamma if use_penalty else 0.0, subspace=lc.subspace,
                            svd_rank=lc.svd_rank, svd_energy=lc.svd_energy, schedule=lc.penalty_schedule,
                            decay_frac=lc.penalty_decay_frac, form=lc.penalty_form)
    info = {"from_depth": prev_d, "to_depth": d, "placement": lc.placement, "depth_init": lc.depth_init,
            "width_init": lc.width_init, "c": res.c, "width": list(res.width),
            "growth_max_abs_logit_diff": err, "new_layer_indices": res.new_layer_indices, "growth_s": time.time() - t0,
            "fisher_mode": lc.fisher if omega is not None else None, "source": str(source)}
    if ewc is not None:
        info["ewc"] = ewc
    loader_state = ckpt.read_json(source / ckpt.EXTRA)["loader"] if lc.data_order == "continue" else None
    distill = None
    if lc.distill > 0:
        distill = Distillation(prev_model.state_dict(), prev_model.config, lc.distill,
                               _rung_steps(lc.distill_frac, scratch_steps, "--distill"))
        info["distill"] = {"weight": lc.distill, "steps": distill.steps}
    ramp_steps = 0
    if lc.ramp_frac > 0:
        ramp_steps = info["ramp_steps"] = _rung_steps(lc.ramp_frac, scratch_steps, "--ramp-frac")
    info["new_moments"] = lc.new_moments if moments is not None else None
    return Inheritance(state=res.model.state_dict(), anchor=res.anchor, mask=res.mask, fisher=res.fisher,
                       penalty=penalty, info=info, fisher_flops=fisher_flops, loader_state=loader_state,
                       moments=res.moments, optim_step=optim_step, distill=distill,
                       correct_new_moments=moments is not None and lc.new_moments == "own-step", ramp_steps=ramp_steps)


def _rung_steps(frac: float, scratch_steps: int | None, flag: str) -> int:
    """A schedule's length in the grown rung's steps: `frac` of its scratch budget's steps, at least 1."""
    if scratch_steps is None:
        raise ValueError(f"{flag} needs the grown rung's scratch budget in steps (scratch_steps) for its schedule")
    return max(1, round(frac * scratch_steps))


def _fisher_for(prev_run: Path, prev_model: GPT, lc: LadderConfig, env: DistEnv) -> tuple[dict, float]:
    """Omega of the previous rung and the FLOPs it cost (method.md section 3)."""
    cfg = prev_model.config
    if lc.fisher == "online":
        path = prev_run / "fisher.pt"
        if not path.exists():
            raise FileNotFoundError(f"{path} missing: the rung was trained without online Fisher accumulation")
        omega = torch.load(path, map_location="cpu")
        # accumulating g^2 inside the fused step: one multiply and one add per parameter per step
        # that accumulated (a skipped step adds nothing; a run's last K may be fewer than
        # fisher_batches); a run from before final.json kept the count is charged fisher_batches
        steps = ckpt.read_json(prev_run / "final.json").get("fisher_steps", lc.fisher_batches)
        return omega, 2.0 * cfg.num_params * steps
    # a stream disjoint in seed from training's, so the Fisher batches are fresh samples
    batches = _fresh_batches(lc, cfg, env, _train_setting(lc, "device_batch"), lc.seed + 7919, lc.fisher_batches)
    omega, flops = posthoc_fisher(prev_model.to(env.device), batches)
    prev_model.to("cpu")
    return {k: v.cpu() for k, v in omega.items()}, float(flops)


def _train_setting(lc: LadderConfig, key: str):
    return lc.train.get(key) or TRAIN_PRESETS[lc.preset][key]


def _fresh_batches(lc: LadderConfig, cfg, env: DistEnv, batch: int, seed: int, count: int):
    """`count` batches of `batch` sequences from a token stream of its own seed."""
    bundle = prepare_data(lc.train.get("data", TrainConfig.data), cfg.vocab_size, lc.train.get("cache_dir"),
                          progress=False)
    loader = TokenLoader(bundle.train, cfg.seq_len, batch, seed=seed, device=env.device)
    return (loader.next() for _ in range(count))


def _ewc_lambda(source: Path, prev_model: GPT, d: int, lc: LadderConfig, env: DistEnv) -> tuple[float, dict, float]:
    """lambda_EWC for rung d grown from checkpoint `source` (method.md section 4), its facts and
    the FLOPs of measuring r. D_parent: the tokens the parent's run trained on up to `source`
    (its steps x global batch x context). D_child: the grown rung's full scratch budget (ratio x N
    tokens), the same for all its budgets: with WSD every budget is a branch of one stable run
    that carries one penalty, and one lambda per rung keeps the budgets' curve one recipe. r is
    measured on batches of the size the carried Omega averaged over: the training step's global
    batch for the online Fisher, the post-hoc passes' device batch otherwise."""
    cfg = prev_model.config
    extra = ckpt.read_json(source / ckpt.EXTRA)
    parent_tokens = extra["step"] * extra["loader"]["global_batch"] * extra["loader"]["seq_len"]
    probe = TrainConfig(depth=d, preset=lc.preset, ratio=lc.ratio, **lc.train)
    child_cfg = probe.model_config()
    child_tokens = total_steps_for(probe, child_cfg) * probe.resolved("global_batch") * child_cfg.seq_len
    batch = _train_setting(lc, "global_batch" if lc.fisher == "online" else "device_batch")
    batches = _fresh_batches(lc, cfg, env, batch, lc.seed + 7919 + 1, R_BATCHES)
    r, facts, flops = fisher_ratio(prev_model.to(env.device), batches, micro_batch=_train_setting(lc, "device_batch"),
                                   seed=lc.seed)
    prev_model.to("cpu")
    lam = ewc_lambda(parent_tokens, child_tokens, r)
    return lam, {"lambda": lam, "parent_tokens": parent_tokens, "child_tokens": child_tokens, **facts}, flops
