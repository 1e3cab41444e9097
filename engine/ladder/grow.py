"""A rung transition: the previous rung's checkpoint grown into the next rung, with the Fisher,
anchor, mask, carried optimizer state and data position the grown rung starts from (method.md
sections 2-3), as one Inheritance for the training loop."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from engine.data import TokenLoader, prepare_data
from engine.inherit.fisher import posthoc_fisher
from engine.inherit.growth import grow, growth_logit_error
from engine.inherit.inheritance import Inheritance
from engine.inherit.penalty import PenaltyConfig
from engine.ladder.config import LadderConfig
from engine.runtime.distributed import DistEnv
from engine.train import checkpoint as ckpt
from engine.train.config import TRAIN_PRESETS, TrainConfig
from models.config import model_config
from models.gpt import GPT


def build_inheritance(source: Path, prev_d: int, d: int, lc: LadderConfig, env: DistEnv, use_penalty: bool) -> Inheritance:
    """Grow the weights of checkpoint `source` (rung prev_d) into rung d, with what the penalty needs."""
    t0 = time.time()
    over = {k: lc.train[k] for k in ("vocab_size", "seq_len") if lc.train.get(k) is not None}
    prev_model = ckpt.load_model(source, model_config(lc.preset, prev_d, **over))
    omega, fisher_flops = (None, 0.0)
    if use_penalty and lc.lam_by_depth.get(d, lc.lam) > 0:
        omega, fisher_flops = _fisher_for(source.parent.parent, prev_model, lc, env)
    new_cfg = model_config(lc.preset, d, **over)
    moments, optim_step = ckpt.load_full_moments(source, prev_model) if lc.optimizer_state == "carry" else (None, 0)
    res = grow(prev_model, new_cfg, seed=lc.seed * 1000 + d, placement=lc.placement, fisher=omega, moments=moments,
               depth_init=lc.depth_init)
    err = growth_logit_error(prev_model, res.model, new_cfg.vocab_size, min(64, new_cfg.seq_len), seed=lc.seed)
    lam, gamma = lc.lam_by_depth.get(d, lc.lam), lc.gamma_by_depth.get(d, lc.gamma)
    penalty = PenaltyConfig(lam=lam if use_penalty else 0.0, gamma=gamma if use_penalty else 0.0, subspace=lc.subspace,
                            svd_rank=lc.svd_rank, svd_energy=lc.svd_energy, schedule=lc.penalty_schedule,
                            decay_frac=lc.penalty_decay_frac)
    info = {"from_depth": prev_d, "to_depth": d, "placement": lc.placement, "depth_init": lc.depth_init,
            "c": res.c, "width": list(res.width),
            "growth_max_abs_logit_diff": err, "new_layer_indices": res.new_layer_indices, "growth_s": time.time() - t0,
            "fisher_mode": lc.fisher if omega is not None else None, "source": str(source)}
    loader_state = ckpt.read_json(source / ckpt.EXTRA)["loader"] if lc.data_order == "continue" else None
    return Inheritance(state=res.model.state_dict(), anchor=res.anchor, mask=res.mask, fisher=res.fisher,
                       penalty=penalty, info=info, fisher_flops=fisher_flops, loader_state=loader_state,
                       moments=res.moments, optim_step=optim_step)


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
    bundle = prepare_data(lc.train.get("data", TrainConfig.data), cfg.vocab_size, lc.train.get("cache_dir"), progress=False)
    batch = lc.train.get("device_batch") or TRAIN_PRESETS[lc.preset]["device_batch"]
    # a stream disjoint in seed from training's, so the Fisher batches are fresh samples
    loader = TokenLoader(bundle.train, cfg.seq_len, batch, seed=lc.seed + 7919, device=env.device)
    model = prev_model.to(env.device)
    batches = (loader.next() for _ in range(lc.fisher_batches))
    omega, flops = posthoc_fisher(model, batches)
    prev_model.to("cpu")
    return {k: v.cpu() for k, v in omega.items()}, float(flops)
