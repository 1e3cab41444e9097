"""The miniseries: every arm over the same ladder, same data order and seeds (method.md section 6).

Arms
    scratch            every rung from random init, at budgets around ratio x N tokens
    inherit            rung d -> grown into d+1 (exact growth), trained with the penalty Phi and
                       ARS damping at budgets from small fractions up to the scratch budget
    inherit-nopenalty  as inherit, without Phi
    inherit-noars      as inherit, without ARS
    grow-only          growth alone (no Phi, no ARS)

Budget curves: every rung is trained at several budgets (fractions of its scratch budget). With
the WSD schedule (the default) a rung is one stable run at constant LR plus one cooled branch per
budget, started from the stable run's checkpoint at (1 - c) x B_k; each branch is a finished run at
its own budget. A grown rung grows from its parent's budget run that first reached the parent's
scratch twin (the largest budget if none did): the chain a user who stops each rung at scratch
quality would train.

The lowest rung is trained once, from scratch, and shared by every arm: the arms differ only from
the first growth on, so a difference between them is the method's and not the base rung's.

Layout of OUT (one seed):   OUT/<arm>/d<depth>/stable/      the WSD stable run
                            OUT/<arm>/d<depth>/b<frac>/     one budget run each (a train run dir)
                            OUT/base/d<lo>/                 the shared lowest rung when `scratch` is not an arm
A grown arm's directory carries the recipe knobs that differ from RECIPE_DEFAULTS
(e.g. grow-only+data_order=continue), so recipes share one OUT and its scratch rungs.
Rerunning the same command skips finished runs and resumes an interrupted one.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from engine.train import checkpoint as ckpt
from engine.train.schedule import SCHEDULES, branch_step
from engine.runtime.distributed import DistEnv, barrier
from engine.inherit.inheritance import Inheritance
from engine.train.config import TrainConfig, total_steps_for
from engine.train.trainer import train_rung
from models.config import model_config
from models.gpt import GPT

GROW_FROM = ("cooled", "stable")
DATA_ORDERS = ("restart", "continue")
OPTIMIZER_STATES = ("fresh", "carry")
# recipe knobs that name a grown arm's directory when they differ from these defaults, so recipes
# share one OUT (and its scratch rungs) without overwriting each other
RECIPE_DEFAULTS = dict(inherit_lr_mult=1.0, grow_from="cooled", data_order="restart", inherit_warmup_frac=0.05,
                       optimizer_state="fresh", depth_init="identity")

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
    # Budget curves (method.md section 6): each rung is trained at several budgets, as fractions of
    # its scratch budget (ratio x N tokens). With the WSD schedule one stable run per rung gives
    # every budget (a branch cooled down at (1 - c) x B_k); with nanochat's schedule every budget
    # is a separate run (the old single-fraction measurement: --inherit-budgets 0.5 --schedule nanochat).
    scratch_budgets: list = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])
    inherit_budgets: list = field(default_factory=lambda: [0.1, 0.2, 0.35, 0.5, 0.7, 1.0])
    schedule: str = "wsd"  # wsd | nanochat (engine/train/schedule.py)
    cooldown_frac: float = 0.2  # WSD cooldown, a fraction of each budget
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
    # rungs re-warm their learning rate over this fraction of their SCRATCH budget's steps (one
    # warmup for all of a rung's budgets: the WSD branches share their stable run's start).
    # 0.05 is the old default's length (10% of a half-budget rung).
    inherit_warmup_frac: float = 0.05
    # The recipe at growth (method.md section 2): a grown rung's peak LR is the scratch peak times
    # inherit_lr_mult; it grows from its parent's cooled branch or the stable-phase checkpoint that
    # branch started from; it re-reads its parent's token stream from the start, or reads on.
    inherit_lr_mult: float = 1.0
    grow_from: str = "cooled"  # cooled | stable
    data_order: str = "restart"  # restart | continue
    optimizer_state: str = "fresh"  # fresh | carry (the parent's Adam moments in the new shapes)
    depth_init: str = "identity"  # identity (exact) | copy (a new layer copies its trained neighbour: G_stack)
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
        for name in ("scratch_budgets", "inherit_budgets"):
            b = getattr(self, name)
            if not b or any(not 0 < f <= 1 for f in b) or sorted(set(b)) != list(b):
                raise ValueError(f"--{name.replace('_', '-')} must be increasing fractions in (0, 1], got {b}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"--schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if not 0 < self.cooldown_frac < 1:
            raise ValueError(f"--cooldown-frac must be in (0, 1), got {self.cooldown_frac}")
        if not 0 < self.inherit_lr_mult < math.inf:
            raise ValueError(f"--inherit-lr-mult must be a finite number > 0, got {self.inherit_lr_mult}")
        if self.grow_from not in GROW_FROM:
            raise ValueError(f"--grow-from must be one of {GROW_FROM}, got {self.grow_from!r}")
        if self.data_order not in DATA_ORDERS:
            raise ValueError(f"--data-order must be one of {DATA_ORDERS}, got {self.data_order!r}")
        from engine.inherit.growth import DEPTH_INITS

        if self.depth_init not in DEPTH_INITS:
            raise ValueError(f"--depth-init must be one of {DEPTH_INITS}, got {self.depth_init!r}")
        if self.optimizer_state not in OPTIMIZER_STATES:
            raise ValueError(f"--optimizer-state must be one of {OPTIMIZER_STATES}, got {self.optimizer_state!r}")
        if self.optimizer_state == "carry" and self.train.get("optimizer", "adamw") != "adamw":
            raise ValueError("--optimizer-state carry needs --optimizer adamw (Muon keeps no Adam moments for the matrices)")
        if self.grow_from == "stable" and self.schedule != "wsd":
            raise ValueError("--grow-from stable needs --schedule wsd (only WSD has a stable-phase checkpoint)")
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
        from engine.inherit.growth import PLACEMENTS

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


def arm_dir_name(arm: str, lc: LadderConfig) -> str:
    """A grown arm's directory: its name plus the recipe knobs that differ from RECIPE_DEFAULTS."""
    if not ARMS[arm][0]:
        return arm
    tag = "".join(f"+{k}={getattr(lc, k):g}" if isinstance(getattr(lc, k), float) else f"+{k}={getattr(lc, k)}"
                  for k, v in RECIPE_DEFAULTS.items() if getattr(lc, k) != v)
    return arm + tag


def rung_dir(out: Path, arm: str, depth: int, lc: LadderConfig) -> Path:
    """The directory of one rung of one arm: its budget runs live below it (stable/, b<frac>/)."""
    if depth == lc.depths[0] and arm != "scratch":
        return out / ("scratch" if "scratch" in lc.arms else "base") / f"d{depth}"
    return out / arm_dir_name(arm, lc) / f"d{depth}"


def budget_name(frac: float) -> str:
    return f"b{frac:g}"


@dataclass
class RungPlan:
    """How one rung is trained: its budgets (fractions of the scratch budget) and their schedule."""

    depth: int
    root: Path
    scratch_steps: int  # the rung's full scratch budget in optimizer steps
    fracs: list
    warmup: int
    lr_mult: float
    fisher_k: int  # online-Fisher steps at the end of each budget run (0: off)
    ars: str

    def budget_steps(self, frac: float) -> int:
        return max(1, round(frac * self.scratch_steps))


def _train_config(lc: LadderConfig, plan: RungPlan, run: Path, steps: int, **kw) -> TrainConfig:
    base = dict(lc.train)
    base["lr_mult"] = base.get("lr_mult", 1.0) * plan.lr_mult
    base.update(kw)
    return TrainConfig(depth=plan.depth, preset=lc.preset, out=str(run), seed=lc.seed, steps=steps, resume=True,
                       ars=plan.ars, warmup_steps=plan.warmup, **base)


def _runs_of(lc: LadderConfig, plan: RungPlan) -> list[tuple[float | None, Path, TrainConfig]]:
    """(budget fraction or None for the stable run, run dir, config), in the order they must run."""
    runs = []
    if lc.schedule == "wsd":
        steps = {f: plan.budget_steps(f) for f in plan.fracs}
        starts = {f: branch_step(steps[f], lc.cooldown_frac) for f in plan.fracs}
        bad = {f: steps[f] for f in plan.fracs if not 0 < starts[f] < steps[f]}
        if bad:
            raise ValueError(f"d{plan.depth}: budget(s) {bad} (steps) are too short for a cooldown of "
                             f"{lc.cooldown_frac:g} (the scratch budget is {plan.scratch_steps} steps: ratio x N tokens "
                             f"over global_batch x seq_len tokens per step); use larger budgets, a larger --ratio "
                             f"or a smaller --seq-len / --global-batch")
        horizon = max(starts.values())
        stable = plan.root / "stable"
        runs.append((None, stable, _train_config(lc, plan, stable, horizon, warmdown_frac=0.0, fisher_online_steps=0,
                                                 keep_ckpt_steps=sorted(set(starts.values())),
                                                 eval_every=lc.train.get("eval_every") or max(1, horizon // 6))))
        for f in plan.fracs:
            run = plan.root / budget_name(f)
            init = stable / "ckpt" / f"step_{starts[f]:09d}"
            runs.append((f, run, _train_config(lc, plan, run, steps[f], warmdown_frac=lc.cooldown_frac,
                                               init_from=str(init), eval_every=steps[f],
                                               fisher_online_steps=min(plan.fisher_k, steps[f] - starts[f]))))
    else:
        for f in plan.fracs:
            run = plan.root / budget_name(f)
            runs.append((f, run, _train_config(lc, plan, run, plan.budget_steps(f),
                                               fisher_online_steps=min(plan.fisher_k, plan.budget_steps(f)))))
    return runs


def _finished(run: Path, cfg: TrainConfig) -> dict | None:
    """final.json of a finished run, after checking it was made by this configuration."""
    final = run / "final.json"
    if not final.exists():
        return None
    meta = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    # choices that do not change the trained weights are not part of the identity: execution
    # choices, and the online Fisher (it only accumulates g^2 beside the step), so a rung trained as
    # the ladder's last can be reused when the ladder grows a rung further (a penalty arm that needs
    # its fisher.pt says so by name)
    skip = ("resume", "progress", "out", "profile", "init_from", "compile", "fisher_online_steps")
    want = {k: v for k, v in asdict(cfg).items() if k not in skip}
    defaults = asdict(TrainConfig(depth=cfg.depth))  # a field added since the rung ran reads as its default
    have = {k: meta.get("config", {}).get(k, defaults[k]) for k in want}
    if have != want:
        diff = sorted(k for k in want if have.get(k) != want[k])
        raise ValueError(f"{run} holds a finished run of a different configuration (differs in {diff}); "
                         f"use another --out or remove {run}")
    return json.loads(final.read_text())


def _train_rung_curve(lc: LadderConfig, plan: RungPlan, env: DistEnv, log, inherit_fn=None) -> list[dict]:
    """Train (or skip, when finished) every run of one rung; return the budget runs' final dicts,
    each with its budget fraction and run dir. `inherit_fn()` builds the Inheritance of a grown
    rung, once, and only if some run still has to train."""
    inherit, finals = None, []
    for frac, run, cfg in _runs_of(lc, plan):
        final = _finished(run, cfg) if env.is_main else None
        final = ckpt.broadcast_object(final, env) if env.distributed else final  # every rank skips, or none
        if final is None:
            if inherit_fn is not None and inherit is None:
                inherit = inherit_fn()
            what = "stable run" if frac is None else f"budget {frac:g}"
            log(f"[miniseries] d{plan.depth} {what}: {cfg.steps} steps -> {run}")
            train_rung(cfg, env, inherit)
        barrier(env)
        if frac is not None:
            final = json.loads((run / "final.json").read_text())
            if final.get("val_loss_se") is None:  # runs finished before final.json carried it
                final["val_loss_se"] = _last_eval(run).get("val_loss_se")
            finals.append({**final, "budget_frac": frac, "run": str(run)})
    return finals


def _last_eval(run: Path) -> dict:
    evals = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"val_loss"' in l]
    return evals[-1] if evals else {}


def grow_source(lc: LadderConfig, runs: list[dict], target: float | None) -> dict:
    """The parent run a next rung grows from: the smallest budget whose cooled val loss reached
    `target` (its scratch twin's full-budget loss), else the largest budget (method.md section 6).
    With --grow-from stable, the stable-phase checkpoint that budget's cooldown started from."""
    reached = [r for r in runs if target is not None and r["val_loss"] <= target]
    chosen = min(reached, key=lambda r: r["budget_frac"]) if reached else max(runs, key=lambda r: r["budget_frac"])
    run = Path(chosen["run"])
    if lc.grow_from == "stable":
        path = Path(json.loads((run / "run.json").read_text())["config"]["init_from"])
    else:
        path = ckpt.latest_valid(run / "ckpt")
        if path is None:
            raise FileNotFoundError(f"run {run} is finished but has no intact checkpoint to grow from")
    return {"run": str(run), "budget_frac": chosen["budget_frac"], "checkpoint": str(path), "kind": lc.grow_from,
            "reached_target": bool(reached), "val_loss": chosen["val_loss"], "cost": rung_cost(chosen)}


def full_budget(rung: dict) -> dict:
    """The final dict of a rung's largest budget run (for a scratch rung: its full budget)."""
    return max(rung["runs"], key=lambda r: r["budget_frac"])


def rung_cost(final: dict) -> float:
    """A run's FLOPs: training, plus the Fisher its penalty used, plus the penalty's own work."""
    return final["flops"] + final.get("fisher_flops", 0.0) + final.get("penalty_flops", 0.0)


def load_run_weights(run: Path, depth: int, lc: LadderConfig) -> GPT:
    """The weights of a finished run (its newest intact checkpoint), unsharded on CPU."""
    path = ckpt.latest_valid(Path(run) / "ckpt")
    if path is None:
        raise FileNotFoundError(f"run {run} is finished but has no intact checkpoint")
    return _load_trained(path, depth, lc)


def _load_trained(path: Path, depth: int, lc: LadderConfig) -> GPT:
    """The weights of a checkpoint, unsharded on CPU (whatever world size wrote them)."""
    over = {k: lc.train[k] for k in ("vocab_size", "seq_len") if lc.train.get(k) is not None}
    model = GPT(model_config(lc.preset, depth, **over))
    model.init_weights(0)
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
    from engine.inherit.fisher import posthoc_fisher
    from engine.train.config import TRAIN_PRESETS

    bundle = prepare_data(lc.train.get("data", "builtin"), cfg.vocab_size, lc.train.get("cache_dir"), progress=False)
    batch = lc.train.get("device_batch") or TRAIN_PRESETS[lc.preset]["device_batch"]
    # a stream disjoint in seed from training's, so the Fisher batches are fresh samples
    loader = TokenLoader(bundle.train, cfg.seq_len, batch, seed=lc.seed + 7919, device=env.device)
    model = prev_model.to(env.device)
    batches = (loader.next() for _ in range(lc.fisher_batches))
    omega, flops = posthoc_fisher(model, batches)
    prev_model.to("cpu")
    return {k: v.cpu() for k, v in omega.items()}, float(flops)


def _scratch_steps(lc: LadderConfig) -> dict[int, int]:
    """Scratch budget (optimizer steps) of every depth."""
    steps = {}
    for d in lc.depths:
        probe = TrainConfig(depth=d, preset=lc.preset, ratio=lc.ratio,
                            **{k: v for k, v in lc.train.items() if k in ("global_batch", "vocab_size", "seq_len")})
        steps[d] = total_steps_for(probe, probe.model_config())
    return steps


def run_ladder(lc: LadderConfig, env: DistEnv, log=print) -> dict:
    """Train every run of every rung of every arm that is not finished yet. Returns
    {arm label: [rung]} with rung = {"depth", "runs": [final dicts, one per budget], "grown_from"};
    a grown arm's label carries its recipe (arm_dir_name), so reports of two recipes never mix."""
    lc.validate()
    out = Path(lc.out)
    growers = [a for a in lc.arms if ARMS[a][0]]
    lo = lc.depths[0]
    scratch_steps = _scratch_steps(lc)

    def fisher_k(depth: int) -> int:  # online-Fisher steps for rungs some arm grows from
        return lc.fisher_batches if (lc.fisher == "online" and growers and depth != lc.depths[-1]) else 0

    def scratch_plan(d: int, root: Path) -> RungPlan:
        return RungPlan(d, root, scratch_steps[d], list(lc.scratch_budgets), max(1, round(0.02 * scratch_steps[d])),
                        1.0, fisher_k(d) if d == lo else 0, "off")

    # 1. the shared lowest rung and the rest of the scratch arm
    results: dict[str, list[dict]] = {}
    for d in lc.depths if "scratch" in lc.arms else [lo]:
        root = rung_dir(out, "scratch" if "scratch" in lc.arms else growers[0], d, lc)
        rung = {"depth": d, "runs": _train_rung_curve(lc, scratch_plan(d, root), env, log), "grown_from": None,
                "scratch_steps": scratch_steps[d]}
        for arm in (["scratch"] if "scratch" in lc.arms else []) + (growers if d == lo else []):
            results.setdefault(arm_dir_name(arm, lc), []).append(rung)
    twin = {r["depth"]: r for r in results.get("scratch", [])}

    # 2. the growing arms, rung by rung, each grown from its parent's chosen budget run
    for arm in growers:
        _, use_penalty, use_ars = ARMS[arm]
        label = arm_dir_name(arm, lc)  # the arm and its recipe, as its directory is named
        parent = results[label][0]
        for prev_d, d in zip(lc.depths, lc.depths[1:]):
            reference = twin.get(prev_d) or (parent if prev_d == lo else None)  # the base rung is its own twin
            source = grow_source(lc, parent["runs"], full_budget(reference)["val_loss"] if reference else None)
            plan = RungPlan(d, rung_dir(out, arm, d, lc), scratch_steps[d], list(lc.inherit_budgets),
                            max(1, round(lc.inherit_warmup_frac * scratch_steps[d])), lc.inherit_lr_mult,
                            fisher_k(d), lc.ars if use_ars else "off")

            def make(source=source, prev_d=prev_d, d=d, use_penalty=use_penalty):
                inherit = build_inheritance(Path(source["checkpoint"]), prev_d, d, lc, env, use_penalty)
                log(f"[miniseries] {arm} d{prev_d}->d{d}: grown from {source['run']} ({source['kind']}); "
                    f"growth logit error {inherit.info['growth_max_abs_logit_diff']:.2e}")
                return inherit

            parent = {"depth": d, "runs": _train_rung_curve(lc, plan, env, log, make), "grown_from": source,
                      "scratch_steps": scratch_steps[d]}
            results[label].append(parent)
    return results


def build_inheritance(source: Path, prev_d: int, d: int, lc: LadderConfig, env: DistEnv, use_penalty: bool) -> Inheritance:
    """Grow the weights of checkpoint `source` (rung prev_d) into rung d, with what the penalty needs."""
    from engine.inherit.growth import grow, growth_logit_error

    t0 = time.time()
    prev_model = _load_trained(source, prev_d, lc)
    omega, fisher_flops = (None, 0.0)
    if use_penalty and lc.lam_by_depth.get(d, lc.lam) > 0:
        omega, fisher_flops = _fisher_for(source.parent.parent, prev_model, lc, env)
    over = {k: lc.train[k] for k in ("vocab_size", "seq_len") if lc.train.get(k) is not None}
    new_cfg = model_config(lc.preset, d, **over)
    moments, optim_step = ckpt.load_full_moments(source, prev_model) if lc.optimizer_state == "carry" else (None, 0)
    res = grow(prev_model, new_cfg, seed=lc.seed * 1000 + d, placement=lc.placement, fisher=omega, moments=moments,
               depth_init=lc.depth_init)
    err = growth_logit_error(prev_model, res.model, new_cfg.vocab_size, min(64, new_cfg.seq_len), seed=lc.seed)
    lam, gamma = lc.lam_by_depth.get(d, lc.lam), lc.gamma_by_depth.get(d, lc.gamma)
    penalty = dict(enabled=use_penalty, lam=lam if use_penalty else 0.0, gamma=gamma if use_penalty else 0.0,
                   subspace=lc.subspace, svd_rank=lc.svd_rank, svd_energy=lc.svd_energy, schedule=lc.penalty_schedule)
    info = {"from_depth": prev_d, "to_depth": d, "placement": lc.placement, "depth_init": lc.depth_init,
            "c": res.c, "width": list(res.width),
            "growth_max_abs_logit_diff": err, "new_layer_indices": res.new_layer_indices, "growth_s": time.time() - t0,
            "fisher_mode": lc.fisher if omega is not None else None, "source": str(source)}
    loader_state = ckpt.read_json(source / ckpt.EXTRA)["loader"] if lc.data_order == "continue" else None
    return Inheritance(state=res.model.state_dict(), anchor=res.anchor, mask=res.mask, fisher=res.fisher,
                       penalty=penalty, info=info, fisher_flops=fisher_flops, loader_state=loader_state,
                       moments=res.moments, optim_step=optim_step)
