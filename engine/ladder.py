"""The miniseries: every arm over the same ladder, same data order and seeds (method.md section 6).

Arms
    scratch            every rung from random init for ratio x N tokens
    inherit            rung d -> grown into d+1 (exact growth), trained for a fraction f of the
                       scratch budget with the penalty Phi and ARS damping
    inherit-nopenalty  as inherit, without Phi
    inherit-noars      as inherit, without ARS
    grow-only          growth alone (no Phi, no ARS)

The lowest rung is trained once, from scratch, and shared by every arm: the arms differ only from
the first growth on, so a difference between them is the method's and not the base rung's.

Layout of OUT (one seed):   OUT/<arm>/d<depth>/   each a train run dir (engine/trainer.py)
                            OUT/base/d<lo>/       the shared lowest rung when `scratch` is not an arm
Rerunning the same command skips rungs with a final.json and resumes an interrupted one.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from engine import checkpoint as ckpt
from engine.distributed import DistEnv, barrier
from engine.trainer import Inheritance, TrainConfig, train_rung
from models.config import model_config
from models.gpt import GPT

ARMS = {
    # arm: (grows, penalty, ars)
    "scratch": (False, False, False),
    "inherit": (True, True, True),
    "inherit-nopenalty": (True, False, True),
    "inherit-noars": (True, True, False),
    "grow-only": (True, False, False),
}


@dataclass
class LadderConfig:
    depths: list[int]
    arms: list[str]
    out: str
    preset: str = "cpu-tiny"
    ratio: float = 4.0
    inherit_fraction: float = 0.5
    seed: int = 0
    # the penalty (method.md section 4)
    lam: float = 1e5  # Omega is ~1e-7 on average (measured on cpu-tiny d2): lambda=1 would be a no-op
    gamma: float = 0.1  # the seeds' gamma
    subspace: str = "coords"
    svd_rank: int | None = None
    svd_energy: float | None = None
    penalty_schedule: str = "constant"
    # per-rung overrides of lam / gamma, keyed by the depth of the rung being trained
    lam_by_depth: dict = field(default_factory=dict)
    gamma_by_depth: dict = field(default_factory=dict)
    # ARS (method.md section 5)
    ars: str = "seed"
    # Fisher (method.md section 3)
    fisher: str = "online"  # online | posthoc
    fisher_batches: int = 20
    placement: str = "end"
    # A grown rung gets a fresh optimizer; a full-LR first Adam step moves every inherited weight by
    # ~lr and spikes the loss (measured: 4.94 -> 5.71 at d2->d3 with 1 warmup step), so inherited
    # rungs re-warm their learning rate over this fraction of their steps.
    inherit_warmup_frac: float = 0.1
    train: dict = field(default_factory=dict)  # TrainConfig overrides shared by every rung

    def validate(self):
        if not self.depths:
            raise ValueError("--depths is empty; expected e.g. 2:5 or 2,3,5")
        if any(d < 1 for d in self.depths):
            raise ValueError(f"--depths must be positive, got {self.depths}")
        if any(b <= a for a, b in zip(self.depths, self.depths[1:])):
            raise ValueError(f"--depths must be strictly increasing, got {self.depths}")
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise ValueError(f"unknown arm(s) {unknown or self.arms}; expected a subset of {list(ARMS)}")
        if len(set(self.arms)) != len(self.arms):
            raise ValueError(f"--arms repeats an arm: {self.arms}")
        if not 0 < self.inherit_fraction <= 1:
            raise ValueError(f"--inherit-fraction must be in (0, 1], got {self.inherit_fraction}")
        if not 0 < self.ratio <= 1e4:
            raise ValueError(f"--ratio must be in (0, 10000], got {self.ratio}")
        if not (0 <= self.lam < math.inf and 0 <= self.gamma < math.inf):  # NaN fails too
            raise ValueError(f"--lam and --gamma must be finite and >= 0, got {self.lam}, {self.gamma}")
        per_rung = {**{f"lam d{d}": v for d, v in self.lam_by_depth.items()}, **{f"gamma d{d}": v for d, v in self.gamma_by_depth.items()}}
        bad = {k: v for k, v in per_rung.items() if not 0 <= v < math.inf}
        if bad:
            raise ValueError(f"per-rung --lam/--gamma values must be finite and >= 0, got {bad}")
        stray = sorted((set(self.lam_by_depth) | set(self.gamma_by_depth)) - set(self.depths[1:]))
        if stray:
            raise ValueError(f"per-rung --lam/--gamma given for depth(s) {stray}, which are not grown rungs of {self.depths}")
        if self.subspace not in ("coords", "svd"):
            raise ValueError(f"--subspace must be coords or svd, got {self.subspace!r}")
        if self.subspace == "svd" and self.svd_rank is None and self.svd_energy is None:
            raise ValueError("--subspace svd needs --svd-rank K or --svd-energy F")
        if self.svd_rank is not None and self.svd_rank < 1:
            raise ValueError(f"--svd-rank must be >= 1, got {self.svd_rank}")
        if self.svd_energy is not None and not 0 < self.svd_energy <= 1:
            raise ValueError(f"--svd-energy must be in (0, 1], got {self.svd_energy}")
        if self.penalty_schedule not in ("constant", "linear"):
            raise ValueError(f"--penalty-schedule must be constant or linear, got {self.penalty_schedule!r}")
        if self.ars not in ("seed", "detrended", "off"):
            raise ValueError(f"--ars must be seed, detrended or off, got {self.ars!r}")
        if self.fisher not in ("online", "posthoc"):
            raise ValueError(f"--fisher must be online or posthoc, got {self.fisher!r}")
        if not 0 <= self.inherit_warmup_frac < 1:
            raise ValueError(f"--inherit-warmup-frac must be in [0, 1), got {self.inherit_warmup_frac}")
        if self.fisher_batches < 1:
            raise ValueError(f"--fisher-batches must be >= 1, got {self.fisher_batches}")
        from engine.growth import PLACEMENTS

        if self.placement not in PLACEMENTS:
            raise ValueError(f"--placement must be one of {PLACEMENTS}, got {self.placement!r}")
        if len(self.depths) < 2 and any(ARMS[a][0] for a in self.arms):
            raise ValueError("inheriting arms need at least two depths")


def parse_per_rung(spec: str, name: str) -> tuple[float, dict[int, float]]:
    """'1e5' -> (1e5, {}); '1e5,4=2e4,5=0' -> (1e5, {4: 2e4, 5: 0.0}): a default and per-depth values."""
    default, per = None, {}
    try:
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            if "=" in part:
                d, v = part.split("=", 1)
                per[int(d.lstrip("d"))] = float(v)
            elif default is None:
                default = float(part)
            else:
                raise ValueError
    except ValueError:
        raise ValueError(f"--{name} {spec!r}: expected VALUE or VALUE,DEPTH=VALUE,... (e.g. 1e5,4=2e4)") from None
    if default is None:
        raise ValueError(f"--{name} {spec!r}: give a default value first (e.g. 1e5,4=2e4)")
    return default, per


def parse_depths(spec: str) -> list[int]:
    """'2:5' -> [2, 3, 4, 5]; '2,3,5' -> [2, 3, 5]."""
    try:
        if ":" in spec:
            lo, hi = (int(x) for x in spec.split(":"))
            if hi < lo:
                raise ValueError
            return list(range(lo, hi + 1))
        return [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--depths {spec!r}: expected LO:HI (inclusive, LO <= HI) or a list like 2,3,5") from None


def rung_dir(out: Path, arm: str, depth: int, lc: LadderConfig) -> Path:
    if depth == lc.depths[0] and arm != "scratch":
        return out / ("scratch" if "scratch" in lc.arms else "base") / f"d{depth}"
    return out / arm / f"d{depth}"


def _rung_train_config(lc: LadderConfig, depth: int, out: Path, *, steps: int | None, ars: str, fisher_steps: int) -> TrainConfig:
    kw = dict(lc.train)
    if steps is not None:  # an inherited rung (scratch rungs are budgeted by ratio)
        kw.setdefault("warmup_steps", max(1, round(lc.inherit_warmup_frac * steps)))
    return TrainConfig(depth=depth, preset=lc.preset, out=str(out), seed=lc.seed,
                       ratio=None if steps else lc.ratio, steps=steps, resume=True, ars=ars,
                       fisher_online_steps=fisher_steps, **kw)


def _finished(run: Path, cfg: TrainConfig) -> dict | None:
    """final.json of a finished rung, after checking it was made by this configuration."""
    final = run / "final.json"
    if not final.exists():
        return None
    meta = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    want = {k: v for k, v in asdict(cfg).items() if k not in ("resume", "progress", "out", "profile")}
    defaults = asdict(TrainConfig(depth=cfg.depth))  # a field added since the rung ran reads as its default
    have = {k: meta.get("config", {}).get(k, defaults[k]) for k in want}
    if have != want:
        diff = sorted(k for k in want if have.get(k) != want[k])
        raise ValueError(f"{run} holds a finished rung of a different configuration (differs in {diff}); "
                         f"use another --out or remove {run}")
    return json.loads(final.read_text())


def _load_trained(run: Path, depth: int, lc: LadderConfig) -> GPT:
    """The trained weights of a finished rung, unsharded on CPU (whatever world size wrote them)."""
    over = {k: lc.train[k] for k in ("vocab_size", "seq_len") if lc.train.get(k) is not None}
    model = GPT(model_config(lc.preset, depth, **over))
    model.init_weights(0)
    path = ckpt.latest_valid(run / "ckpt")
    if path is None:
        raise FileNotFoundError(f"rung {run} is finished but has no intact checkpoint to grow from")
    ckpt.load_full_weights(path, model)
    return model


def _fisher_for(prev_run: Path, prev_model: GPT, lc: LadderConfig, env: DistEnv) -> tuple[dict, float]:
    """Omega of the previous rung and the FLOPs it cost (method.md section 3)."""
    cfg = prev_model.config
    if lc.fisher == "online":
        path = prev_run / "fisher.pt"
        if not path.exists():
            raise FileNotFoundError(f"{path} missing: the rung was trained without online Fisher accumulation")
        omega = torch.load(path, map_location="cpu")
        # accumulating g^2 inside the fused step: one multiply and one add per parameter per step
        return omega, 2.0 * cfg.num_params * lc.fisher_batches
    from engine.data import TokenLoader, prepare_data
    from engine.fisher import posthoc_fisher
    from engine.trainer import TRAIN_PRESETS

    bundle = prepare_data(lc.train.get("data", "builtin"), cfg.vocab_size, lc.train.get("cache_dir"), progress=False)
    batch = lc.train.get("device_batch") or TRAIN_PRESETS[lc.preset]["device_batch"]
    # a stream disjoint in seed from training's, so the Fisher batches are fresh samples
    loader = TokenLoader(bundle.train, cfg.seq_len, batch, seed=lc.seed + 7919, device=env.device)
    model = prev_model.to(env.device)
    batches = (loader.next() for _ in range(lc.fisher_batches))
    omega, flops = posthoc_fisher(model, batches)
    prev_model.to("cpu")
    return {k: v.cpu() for k, v in omega.items()}, float(flops)


def run_ladder(lc: LadderConfig, env: DistEnv, log=print) -> dict:
    """Train every rung of every arm that is not finished yet; return {arm: [final dicts]}."""
    lc.validate()
    out = Path(lc.out)
    results: dict[str, list[dict]] = {}
    growers = [a for a in lc.arms if ARMS[a][0]]
    lo = lc.depths[0]
    scratch_steps = {}
    for d in lc.depths:
        probe = _rung_train_config(lc, d, out, steps=None, ars="off", fisher_steps=0)
        from engine.trainer import total_steps_for

        scratch_steps[d] = total_steps_for(probe, probe.model_config())

    # K online-Fisher steps for any rung some arm grows from; capped by the rung's length
    def fisher_steps(depth: int, steps: int) -> int:
        return min(lc.fisher_batches, steps) if (lc.fisher == "online" and growers and depth != lc.depths[-1]) else 0

    # 1. the shared lowest rung (and the rest of the scratch arm)
    base_dir = rung_dir(out, growers[0] if growers else "scratch", lo, lc)
    scratch_arms = ["scratch"] if "scratch" in lc.arms else []
    for d in lc.depths if scratch_arms else [lo]:
        run = base_dir if d == lo else out / "scratch" / f"d{d}"
        cfg = _rung_train_config(lc, d, run, steps=None, ars="off",
                                 fisher_steps=fisher_steps(d, scratch_steps[d]) if d == lo else 0)
        final = _finished(run, cfg) if env.is_main else None
        final = ckpt.broadcast_object(final, env) if env.distributed else final  # every rank skips, or none
        if final is None:
            log(f"[miniseries] scratch d{d}: {scratch_steps[d]} steps -> {run}")
            final = train_rung(cfg, env)
        barrier(env)
        final = json.loads((run / "final.json").read_text())
        for arm in (scratch_arms if d != lo else lc.arms):
            results.setdefault(arm, []).append(final)

    # 2. the growing arms, rung by rung
    for arm in growers:
        _, use_penalty, use_ars = ARMS[arm]
        prev_run = base_dir
        for prev_d, d in zip(lc.depths, lc.depths[1:]):
            run = out / arm / f"d{d}"
            steps = max(1, round(lc.inherit_fraction * scratch_steps[d]))
            cfg = _rung_train_config(lc, d, run, steps=steps, ars=lc.ars if use_ars else "off",
                                     fisher_steps=fisher_steps(d, steps))
            final = _finished(run, cfg) if env.is_main else None
            final = ckpt.broadcast_object(final, env) if env.distributed else final
            if final is None:
                inherit = build_inheritance(prev_run, prev_d, d, lc, env, use_penalty)
                log(f"[miniseries] {arm} d{prev_d}->d{d}: growth logit error "
                    f"{inherit.info['growth_max_abs_logit_diff']:.2e}; {steps} steps -> {run}")
                final = train_rung(cfg, env, inherit)
            barrier(env)
            results[arm].append(json.loads((run / "final.json").read_text()))
            prev_run = run
    return results


def build_inheritance(prev_run: Path, prev_d: int, d: int, lc: LadderConfig, env: DistEnv, use_penalty: bool) -> Inheritance:
    from engine.growth import grow, growth_logit_error

    t0 = time.time()
    prev_model = _load_trained(prev_run, prev_d, lc)
    omega, fisher_flops = (None, 0.0)
    if use_penalty and lc.lam_by_depth.get(d, lc.lam) > 0:
        omega, fisher_flops = _fisher_for(prev_run, prev_model, lc, env)
    over = {k: lc.train[k] for k in ("vocab_size", "seq_len") if lc.train.get(k) is not None}
    new_cfg = model_config(lc.preset, d, **over)
    res = grow(prev_model, new_cfg, seed=lc.seed * 1000 + d, placement=lc.placement, fisher=omega)
    err = growth_logit_error(prev_model, res.model, new_cfg.vocab_size, min(64, new_cfg.seq_len), seed=lc.seed)
    lam, gamma = lc.lam_by_depth.get(d, lc.lam), lc.gamma_by_depth.get(d, lc.gamma)
    penalty = dict(enabled=use_penalty, lam=lam if use_penalty else 0.0, gamma=gamma if use_penalty else 0.0,
                   subspace=lc.subspace, svd_rank=lc.svd_rank, svd_energy=lc.svd_energy, schedule=lc.penalty_schedule)
    info = {"from_depth": prev_d, "to_depth": d, "placement": lc.placement, "c": res.c, "width": list(res.width),
            "growth_max_abs_logit_diff": err, "new_layer_indices": res.new_layer_indices, "growth_s": time.time() - t0,
            "fisher_mode": lc.fisher if omega is not None else None}
    return Inheritance(state=res.model.state_dict(), anchor=res.anchor, mask=res.mask, fisher=res.fisher,
                       penalty=penalty, info=info, fisher_flops=fisher_flops)
