"""What a miniseries is: its depths, arms and budgets, the growth recipe, the penalty, ARS and
Fisher settings (LadderConfig) with their checks, the training settings every rung shares, and the
name of a grown arm's directory (method.md sections 2-6).

Every choice is defined once: the ladder's own recipe choices here (GROW_FROM, DATA_ORDERS,
OPTIMIZER_STATES, ARMS), the others by the module that owns the concept (Fisher modes:
engine/inherit/fisher.py; placements,
depth and width inits: engine/inherit/growth.py; subspaces and penalty schedules: engine/inherit/penalty.py;
ARS modes: engine/inherit/ars.py; LR schedules: engine/train/schedule.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from engine.inherit.ars import MODES as ARS_MODES
from engine.inherit.ewc import EWC, lam_is_on
from engine.inherit.fisher import FISHER_MODES
from engine.inherit.growth import DEPTH_INITS, PLACEMENTS, WIDTH_INITS
from engine.inherit.penalty import FORMS as PENALTY_FORMS, SCHEDULES as PENALTY_SCHEDULES, SUBSPACES
from engine.train.config import TrainConfig, check_choice
from engine.train.schedule import SCHEDULES
from models.config import check_depths

GROW_FROM = ("cooled", "stable")
DATA_ORDERS = ("restart", "continue")
OPTIMIZER_STATES = ("fresh", "carry")
# Under carry, the new coordinates' moments start at zero but the parent's step count is carried, so
# Adam's bias correction (~1 at a large step) does not undo their zero start: their first updates are
# 0.89x, then up to ~1.43x, a normal Adam step (betas 0.8/0.95). own-step corrects them with their own
# step count since growth (engine/train/inherited.py: NewMomentCorrection).
NEW_MOMENTS = ("parent-step", "own-step")
# TrainConfig fields the ladder sets itself for each run (from its own fields or its run plan);
# every other field is a training setting shared by every rung (LadderConfig.train)
RUN_FIELDS = ("depth", "preset", "out", "seed", "steps", "tokens", "ratio", "resume", "ars", "warmup_steps",
              "init_from", "keep_ckpt_steps", "fisher_online_steps")
TRAIN_SETTINGS = tuple(f.name for f in fields(TrainConfig) if f.name not in RUN_FIELDS)
# A run's identity is every setting that changes its numbers (engine/ladder/run.py checks it against
# the rung's identity.json). Settings by who uses them; the directory of a rung names those that
# differ from LadderConfig's defaults, so recipes, sweeps and tuned values share one OUT (and its
# scratch rungs) without overwriting each other. The TrainConfig settings are checked per run.
GROWTH_FIELDS = ("inherit_lr_mult", "grow_from", "data_order", "inherit_warmup_frac", "optimizer_state", "depth_init",
                 "width_init", "placement", "distill", "distill_frac", "new_moments", "ramp_frac")
PENALTY_FIELDS = ("lam", "gamma", "subspace", "svd_rank", "svd_energy", "penalty_schedule", "penalty_form",
                  "penalty_decay_frac", "fisher", "fisher_batches")
ARS_FIELDS = ("ars",)
# per-rung values, keyed by depth: (field, prefix in a directory name, who uses them)
PER_DEPTH_FIELDS = (("lr_mult_by_depth", "lr_mult", "every"), ("inherit_lr_mult_by_depth", "inherit_lr_mult", "grows"),
                    ("lam_by_depth", "lam", "penalty"), ("gamma_by_depth", "gamma", "penalty"))
# the decoupled pull is lambda per unit of learning rate (engine/inherit/penalty.py): at a peak LR of
# 1e-3..1e-2 a lambda of this size already pins an average-Fisher coordinate at the anchor each step
DECOUPLED_LAM_MAX = 100.0

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
    schedule: str = "wsd"  # engine/train/schedule.SCHEDULES
    cooldown_frac: float = 0.2  # WSD cooldown, a fraction of each budget
    seed: int = 0
    # the penalty (method.md section 4)
    # Omega is ~1e-7 on average (measured on cpu-tiny d2): lambda=1 would be a no-op. "ewc": lambda
    # derived at growth from the data, (D_parent / D_child) * r (engine/inherit/ewc.py)
    lam: float | str = 1e5
    gamma: float = 0.1  # the seeds' gamma
    subspace: str = "coords"  # penalty.SUBSPACES
    svd_rank: int | None = None
    svd_energy: float | None = None
    penalty_schedule: str = "constant"  # penalty.SCHEDULES
    # > 0: lambda and gamma decay linearly to 0 over this fraction of each grown rung (0: no early decay)
    penalty_decay_frac: float = 0.0
    # coupled: grad Phi added to the gradient Adam normalises; decoupled: a pull after the update, like
    # AdamW's weight decay, lambda and gamma then dimensionless pulls per unit LR (penalty.FORMS)
    penalty_form: str = "coupled"
    # per-rung overrides of lam (a number or "ewc") / gamma, keyed by the depth of the rung being trained
    lam_by_depth: dict = field(default_factory=dict)
    gamma_by_depth: dict = field(default_factory=dict)
    # per-rung peak-LR multipliers (--lr-mult 0.5,4=0.25), keyed by depth, in place of train["lr_mult"]
    # for that rung's scratch runs and as the base its grown runs multiply by inherit_lr_mult: the
    # tuned multiplier falls with depth on cpu-tiny (d3 x0.5, d4 x0.25: growth study, part 4)
    lr_mult_by_depth: dict = field(default_factory=dict)
    # per-rung overrides of inherit_lr_mult (--inherit-lr-mult 1,4=2), keyed by the grown rung's depth:
    # a grown d4 wants a hotter peak than the tuned scratch d4 (growth study, part 5)
    inherit_lr_mult_by_depth: dict = field(default_factory=dict)
    # ARS (method.md section 5)
    ars: str = "seed"  # ars.MODES
    # Fisher (method.md section 3)
    fisher: str = "online"  # FISHER_MODES
    fisher_batches: int = 20
    placement: str = "end"  # growth.PLACEMENTS
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
    grow_from: str = "cooled"  # GROW_FROM
    data_order: str = "restart"  # DATA_ORDERS
    optimizer_state: str = "fresh"  # OPTIMIZER_STATES: fresh | carry (the parent's Adam moments in the new shapes)
    new_moments: str = "parent-step"  # NEW_MOMENTS: the bias correction of new coordinates' moments under carry
    # MSG-style ramp (Yao et al. 2023): an inserted layer's write-outs (attention and MLP) enter multiplied
    # by min(1, s/K) at the grown rung's step s, K = ramp_frac x its scratch budget's steps (0: off)
    ramp_frac: float = 0.0
    # growth.DEPTH_INITS: identity (exact) | copy (a new layer copies its neighbour: G_stack)
    depth_init: str = "identity"
    # growth.WIDTH_INITS: zero (new heads / hidden units start empty) | split (copies of trained ones: Net2Net)
    width_init: str = "zero"
    # Knowledge inheritance (engine/inherit/distill.py): the parent as a teacher, its KL term's weight
    # `distill` at the grown rung's start decaying linearly to 0 over `distill_frac` of its scratch
    # budget's steps (0: no teacher; its forward passes count in the rung's FLOPs)
    distill: float = 0.0
    distill_frac: float = 0.5
    train: dict = field(default_factory=dict)  # TRAIN_SETTINGS shared by every rung (TrainConfig fields)

    def inherit_lr_mult_at(self, depth: int) -> float:
        """A grown rung's peak LR as a multiple of its depth's scratch peak."""
        return self.inherit_lr_mult_by_depth.get(depth, self.inherit_lr_mult)

    def validate(self):
        """Every check that can fail before compute, with a message naming the value."""
        check_depths(self.depths)
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise ValueError(f"unknown arm(s) {unknown or self.arms}; expected a subset of {list(ARMS)}")
        if len(set(self.arms)) != len(self.arms):
            raise ValueError(f"--arms repeats an arm: {self.arms}")
        for name in ("scratch_budgets", "inherit_budgets"):
            b = getattr(self, name)
            if not b or any(not 0 < f <= 1 for f in b) or sorted(set(b)) != list(b):
                raise ValueError(f"--{name.replace('_', '-')} must be increasing fractions in (0, 1], got {b}")
        if not 0 < self.ratio <= 1e4:
            raise ValueError(f"--ratio must be in (0, 10000], got {self.ratio}")
        self._check_recipe()
        self._check_penalty()
        check_choice("--ars", self.ars, ARS_MODES)
        check_choice("--fisher", self.fisher, FISHER_MODES)
        if self.fisher_batches < 1:
            raise ValueError(f"--fisher-batches must be >= 1, got {self.fisher_batches}")
        stray = sorted(set(self.train) - set(TRAIN_SETTINGS))
        if stray:
            raise ValueError(f"unknown training setting(s) {stray} for every rung; accepted: {list(TRAIN_SETTINGS)} "
                             f"(the ladder sets {list(RUN_FIELDS)} itself)")
        if len(self.depths) < 2 and any(ARMS[a][0] for a in self.arms):
            raise ValueError("inheriting arms need at least two depths")

    def _check_recipe(self):
        """The schedule and how a grown rung starts (method.md sections 2 and 6)."""
        check_choice("--schedule", self.schedule, SCHEDULES)
        if not 0 < self.cooldown_frac < 1:
            raise ValueError(f"--cooldown-frac must be in (0, 1), got {self.cooldown_frac}")
        _check_multipliers("--inherit-lr-mult", "every grown rung", self.inherit_lr_mult, self.inherit_lr_mult_by_depth,
                           self.depths, self.depths[1:], "grown rungs")
        _check_multipliers("--lr-mult", "every rung", self.train.get("lr_mult", 1.0), self.lr_mult_by_depth,
                           self.depths, self.depths, "rungs")
        if not 0 <= self.inherit_warmup_frac < 1:
            raise ValueError(f"--inherit-warmup-frac must be in [0, 1), got {self.inherit_warmup_frac}")
        check_choice("--grow-from", self.grow_from, GROW_FROM)
        check_choice("--data-order", self.data_order, DATA_ORDERS)
        check_choice("--depth-init", self.depth_init, DEPTH_INITS)
        check_choice("--width-init", self.width_init, WIDTH_INITS)
        check_choice("--optimizer-state", self.optimizer_state, OPTIMIZER_STATES)
        check_choice("--placement", self.placement, PLACEMENTS)
        check_choice("--new-moments", self.new_moments, NEW_MOMENTS)
        if self.new_moments == "own-step" and self.optimizer_state != "carry":
            raise ValueError("--new-moments own-step needs --optimizer-state carry (a fresh optimizer already "
                             "bias-corrects every coordinate from step 1)")
        if self.new_moments == "own-step" and self.penalty_form == "decoupled":
            raise ValueError("--new-moments own-step corrects the Adam update after the step; the decoupled "
                             "penalty's pull follows that update: use --penalty-form coupled")
        if not 0 <= self.ramp_frac <= min(self.inherit_budgets):  # NaN fails too
            raise ValueError(f"--ramp-frac must be in [0, {min(self.inherit_budgets):g}] (a fraction of a grown "
                             f"rung's scratch budget, at most its smallest --inherit-budgets, so that every budget's "
                             f"run ends with the ramp done), got {self.ramp_frac}")
        if not 0 <= self.distill <= 1:  # NaN fails too
            raise ValueError(f"--distill must be a weight in [0, 1], got {self.distill}")
        if not 0 < self.distill_frac <= 1:
            raise ValueError(f"--distill-frac must be in (0, 1], got {self.distill_frac}")
        if self.distill == 0 and self.distill_frac != LadderConfig.distill_frac:
            raise ValueError(f"--distill-frac {self.distill_frac} without --distill: give the teacher a weight > 0")
        if self.optimizer_state == "carry" and self.train.get("optimizer", TrainConfig.optimizer) != "adamw":
            raise ValueError("--optimizer-state carry needs --optimizer adamw (Muon keeps no Adam moments for the "
                             "matrices)")
        if self.grow_from == "stable" and self.schedule != "wsd":
            raise ValueError("--grow-from stable needs --schedule wsd (only WSD has a stable-phase checkpoint)")
        uses_penalty = any(ARMS[a][1] for a in self.arms) and (
            lam_is_on(self.lam) or any(lam_is_on(v) for v in self.lam_by_depth.values()))
        if self.grow_from == "stable" and self.fisher == "online" and uses_penalty:
            raise ValueError("--grow-from stable with --fisher online: a stable run accumulates no online Fisher for "
                             "the penalty to carry; use --fisher posthoc (or --grow-from cooled)")

    def _check_penalty(self):
        """lambda and gamma (per rung too), the subspace and the penalty schedule (method.md section 4)."""
        if isinstance(self.lam, str) and self.lam != EWC:
            raise ValueError(f"--lam must be a finite number >= 0 or {EWC!r}, got {self.lam!r}")
        if not (_weight_ok(self.lam) and 0 <= self.gamma < math.inf):  # NaN fails too
            raise ValueError(f"--lam and --gamma must be finite and >= 0, got {self.lam}, {self.gamma}")
        per_rung = {**{f"lam d{d}": v for d, v in self.lam_by_depth.items()},
                    **{f"gamma d{d}": v for d, v in self.gamma_by_depth.items()}}
        bad = {k: v for k, v in per_rung.items() if not _weight_ok(v, (EWC,) if k.startswith("lam") else ())}
        if bad:
            raise ValueError(f"per-rung --lam/--gamma values must be finite and >= 0 (--lam also {EWC!r}), got {bad}")
        stray = sorted((set(self.lam_by_depth) | set(self.gamma_by_depth)) - set(self.depths[1:]))
        if stray:
            raise ValueError(f"per-rung --lam/--gamma given for depth(s) {stray}, which are not grown rungs of "
                             f"{self.depths}")
        check_choice("--subspace", self.subspace, SUBSPACES)
        if self.subspace == "svd" and self.svd_rank is None and self.svd_energy is None:
            raise ValueError("--subspace svd needs --svd-rank K or --svd-energy F")
        if self.svd_rank is not None and self.svd_rank < 1:
            raise ValueError(f"--svd-rank must be >= 1, got {self.svd_rank}")
        if self.svd_energy is not None and not 0 < self.svd_energy <= 1:
            raise ValueError(f"--svd-energy must be in (0, 1], got {self.svd_energy}")
        check_choice("--penalty-schedule", self.penalty_schedule, PENALTY_SCHEDULES)
        if not 0 <= self.penalty_decay_frac <= 1:  # NaN fails too
            raise ValueError(f"--penalty-decay-frac must be in [0, 1], got {self.penalty_decay_frac}")
        check_choice("--penalty-form", self.penalty_form, PENALTY_FORMS)
        if self.penalty_form == "decoupled" and self.subspace != "coords":
            raise ValueError(f"--penalty-form decoupled needs --subspace coords, got {self.subspace!r}")
        if self.penalty_form == "decoupled":
            self._check_decoupled_scale()

    def _check_decoupled_scale(self):
        """The decoupled pull's lambda is a dimensionless pull per unit of learning rate; a coupled-scale
        lambda (~1e5, for Omega ~1e-7) there clamps ~99% of the inherited coordinates to the anchor."""
        lams = {"--lam": self.lam} | {f"--lam d{d}": v for d, v in self.lam_by_depth.items()}
        bad = {k: v for k, v in lams.items() if v == EWC or v > DECOUPLED_LAM_MAX}
        if bad:
            raise ValueError(f"--penalty-form decoupled takes lambda as a pull per unit of learning rate, on the "
                             f"scale of AdamW's weight decay (e.g. --lam 1; at most {DECOUPLED_LAM_MAX:g}); got {bad}, "
                             f"a coupled-scale value (the coupled default is {LadderConfig.lam:g}; 'ewc' derives one)")


def _check_multipliers(flag: str, every: str, default: float, by_depth: dict, depths: list, allowed: list,
                       what: str) -> None:
    """A peak-LR multiplier flag: its default and per-rung values finite and > 0 (NaN fails too), its
    per-rung depths among `allowed` (the ladder's rungs, or its grown rungs)."""
    values = {every: default} | {f"d{d}": v for d, v in by_depth.items()}
    bad = {k: v for k, v in values.items() if not 0 < v < math.inf}
    if bad:
        raise ValueError(f"{flag} values must be finite numbers > 0, got {bad}")
    stray = sorted(set(by_depth) - set(allowed))
    if stray:
        raise ValueError(f"per-rung {flag} given for depth(s) {stray}, which are not {what} of {depths}")


def _weight_ok(v, words=(EWC,)) -> bool:
    """A lambda or gamma: a finite number >= 0 (NaN fails), or one of `words`."""
    if isinstance(v, str):
        return v in words
    return 0 <= v < math.inf


def parse_per_rung(spec: str, name: str, words: tuple = ()) -> tuple[float | str, dict[int, float | str]]:
    """'1e5' -> (1e5, {}); '1e5,4=2e4,5=0' -> (1e5, {4: 2e4, 5: 0.0}): a default and per-depth values,
    each a number or one of `words` (kept as the word: --lam's "ewc")."""
    default, per = None, {}
    value = lambda v: v.strip() if v.strip() in words else float(v)  # noqa: E731
    try:
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            if "=" in part:
                d, v = part.split("=", 1)
                per[int(d.lstrip("d"))] = value(v)
            elif default is None:
                default = value(part)
            else:
                raise ValueError
    except ValueError:
        what = "a number" + "".join(f" or {w}" for w in words)
        raise ValueError(f"--{name} {spec!r}: expected VALUE or VALUE,DEPTH=VALUE,... with each VALUE {what} "
                         f"(e.g. 1e5,4=2e4)") from None
    if default is None:
        raise ValueError(f"--{name} {spec!r}: give a default value first (e.g. 1e5,4=2e4)")
    return default, per


def rung_identity(arm: str, lc: LadderConfig, depth: int) -> dict:
    """Every ladder setting that changes the numbers of `arm`'s rung at `depth`: the growth recipe of a
    grown arm, the penalty and Fisher settings of an arm with the penalty, the ARS mode of an arm with
    ARS, and the per-rung values of this rung and, for a grown rung, of every rung of the chain below
    it (its parent's LR changed the parent it grew from). A scratch rung: its own per-rung LR only."""
    grows, use_penalty, use_ars = ARMS[arm]
    names = (GROWTH_FIELDS if grows else ()) + (PENALTY_FIELDS if use_penalty else ()) + (ARS_FIELDS if use_ars else ())
    ident = {"arm": arm, **{k: getattr(lc, k) for k in names}}
    users = {"every": True, "grows": grows, "penalty": use_penalty}
    for name, prefix, who in PER_DEPTH_FIELDS:
        values = getattr(lc, name)
        chain = [d for d in sorted(values) if (d <= depth if grows else d == depth)]
        ident.update({f"{prefix}_d{d}": values[d] for d in chain if users[who]})
    return ident


def identity_default(key: str):
    """The value an identity key has when nobody set it: LadderConfig's default for a setting, None for
    a per-rung value (lr_mult_d4, ...), which exists only when given."""
    return getattr(LadderConfig, key, None)


def arm_dir_name(arm: str, lc: LadderConfig, depth: int | None = None) -> str:
    """A rung's directory under OUT: the arm's name plus the settings of its identity that differ from
    their defaults (so every per-rung value is named); `depth` None: the arm's top rung."""
    ident = rung_identity(arm, lc, lc.depths[-1] if depth is None else depth)
    return arm + "".join(f"+{k}={_fmt(v)}" for k, v in ident.items() if k != "arm" and v != identity_default(k))


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)
