"""What one training run is: its settings (TrainConfig), the per-preset training defaults (read
from the one preset table, models/config.PRESETS), every check that can fail before compute
(validate), and the errors that mean bad input or state (USER_ERRORS).

Each choice a setting can take is defined once, by the module that owns the concept, and imported
here, by the command lines (argparse `choices=`) and by the ladder: optimizers and AdamW kernels
(engine/train/optim.py), host-sync modes (engine/train/guard.py), ARS modes (engine/inherit/ars.py),
presets (models/config.py), devices (engine/runtime/distributed.DEVICES).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from engine.inherit.ars import MODES as ARS_MODES
from engine.runtime.diskspace import StorageError
from engine.runtime.distributed import DistEnv
from engine.runtime.run_lock import RunLockedError
from engine.train import checkpoint as ckpt
from engine.train.evaluate import val_set_tokens
from engine.train.guard import resolve_host_sync
from engine.train.optim import OPTIMIZERS, check_adamw_impl
from models.config import GPTConfig, PRESETS, check_preset, model_config

# Training defaults per preset (models/config.PRESETS holds each preset's shape; the model layer knows
# nothing of training). They fill the TrainConfig fields left None (TrainConfig.resolved).
TRAIN_PRESETS: dict[str, dict] = {
    # small batches so a few-minute run still takes hundreds of steps; nanochat's learning rates, times
    # lr_mult 0.5: they are ~2x too high for cpu-tiny (of x0.25/0.5/1/2, x0.5 gave the lowest val loss
    # at d2 and d3, ratio 8, both seeds: docs/results/2026-12-01-growth-study-cpu.md)
    "cpu-tiny": dict(global_batch=8, device_batch=8, eval_tokens=32768, matrix_lr=0.004, embedding_lr=0.05,
                     unembedding_lr=0.004, lr_mult=0.5),
    # nanochat's ~0.5M-token batch (256 x 2048) and its learning rates (anchors.md)
    "nanochat": dict(global_batch=256, device_batch=32, eval_tokens=10 * 524288, matrix_lr=0.002, embedding_lr=0.2,
                     unembedding_lr=0.004, lr_mult=1.0),
}
assert set(TRAIN_PRESETS) == set(PRESETS), "every model preset has its training defaults"
MUON_MATRIX_LR = 0.02  # nanochat's Muon lr for block matrices


@dataclass
class TrainConfig:
    depth: int
    preset: str = "cpu-tiny"
    data: str = "builtin"
    out: str = "runs/train"
    seed: int = 0
    steps: int | None = None
    tokens: int | None = None
    ratio: float | None = None
    global_batch: int | None = None  # sequences per optimizer step, over all ranks
    device_batch: int | None = None  # sequences per rank per micro-step
    optimizer: str = "adamw"  # optim.OPTIMIZERS: adamw, or muon (Muon for block matrices, AdamW for the rest)
    adamw_impl: str = "kernel"  # optim.ADAMW_IMPLS: the kernel of plain AdamW steps
    matrix_lr: float | None = None
    embedding_lr: float | None = None
    unembedding_lr: float | None = None
    weight_decay: float = 0.0
    lr_mult: float | None = None  # multiplies every group's peak learning rate (LR sweeps); default: the preset's
    warmup_steps: int | None = None  # default: 2% of the steps, at least 1
    # the final linear decay (engine/train/schedule.py: nanochat 0.65, WSD 0.2, 0 = constant)
    warmdown_frac: float = 0.65
    final_lr_frac: float = 0.05
    eval_every: int | None = None  # default: ~12 evaluations per run (val-loss curves for FLOPs-to-match)
    eval_tokens: int | None = None
    ckpt_every: int = 0  # 0: only the final checkpoint
    # also checkpoint at these steps and never prune them (WSD branch points)
    keep_ckpt_steps: list = field(default_factory=list)
    # a checkpoint of another run of this model to start from (a WSD branch starts from its stable run)
    init_from: str | None = None
    resume: bool = False
    compile: bool | None = None  # None: on for CUDA, off on CPU (engine/runtime/distributed.py: resolve_compile)
    device: str = "auto"  # DEVICES
    host_sync: str = "auto"  # guard.HOST_SYNC_MODES: when the host reads a step's loss
    progress: bool = True
    profile: bool = True
    cache_dir: str | None = None
    vocab_size: int | None = None  # override the preset's vocab (tests)
    seq_len: int | None = None  # override the preset's sequence length (tests)
    # inheritance
    ars: str = "off"  # engine/inherit/ars.MODES
    fisher_online_steps: int = 0  # accumulate the online Fisher over the last K steps (0: off)
    max_nonfinite: int = 5  # consecutive non-finite losses before the run stops

    def model_config(self) -> GPTConfig:
        over = {k: v for k, v in (("vocab_size", self.vocab_size), ("seq_len", self.seq_len)) if v is not None}
        return model_config(self.preset, self.depth, **over)

    def resolved(self, key: str):
        v = getattr(self, key)
        return TRAIN_PRESETS[self.preset][key] if v is None else v


class TrainError(RuntimeError):
    pass


# Errors that mean bad input or state (a bad flag, a missing file, a damaged or foreign checkpoint,
# a full disk, a run directory locked by another job): a command line prints them as one line,
# "error: ...", instead of a traceback. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, TrainError, ckpt.CheckpointError, StorageError, RunLockedError)


def check_choice(flag: str, value, choices) -> None:
    """One wording for every bad choice: "--ars must be off, seed or detrended, got 'wild'"."""
    names = list(choices)
    if value not in names:
        expected = names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" or {names[-1]}"
        raise ValueError(f"{flag} must be {expected}, got {value!r}")


def validate(cfg: TrainConfig, env: DistEnv) -> None:
    """Every check that can fail before compute, with a message naming the value."""
    check_preset(cfg.preset)
    if not isinstance(cfg.depth, int) or cfg.depth < 1:
        raise ValueError(f"depth must be a positive integer, got {cfg.depth!r}")
    _check_budget(cfg)
    _check_batches(cfg, env.world_size)
    check_choice("--optimizer", cfg.optimizer, OPTIMIZERS)
    check_adamw_impl(cfg.adamw_impl, env.device)
    resolve_host_sync(cfg.host_sync, env.device, cfg.adamw_impl)
    check_choice("--ars", cfg.ars, ARS_MODES)
    _check_numbers(cfg)
    if cfg.init_from is not None and not (Path(cfg.init_from) / ckpt.EXTRA).exists():
        raise ValueError(f"init_from={cfg.init_from!r} is not a checkpoint directory (no {ckpt.EXTRA} in it)")


def _check_budget(cfg: TrainConfig) -> None:
    budgets = [k for k in ("steps", "tokens", "ratio") if getattr(cfg, k) is not None]
    if len(budgets) != 1:
        raise ValueError(f"give exactly one of --steps, --tokens, --ratio (got {budgets or 'none'})")
    for k in ("steps", "tokens"):
        v = getattr(cfg, k)
        if v is not None and (not isinstance(v, int) or v < 1):
            raise ValueError(f"--{k} must be a positive integer, got {v!r}")
    if cfg.ratio is not None and not (0 < cfg.ratio <= 1e4):
        raise ValueError(f"--ratio must be in (0, 10000] tokens per scaling parameter, got {cfg.ratio!r}")


def _check_batches(cfg: TrainConfig, world: int) -> None:
    gb, db = cfg.resolved("global_batch"), cfg.resolved("device_batch")
    if gb < 1 or db < 1:
        raise ValueError(f"batch sizes must be positive (global_batch={gb}, device_batch={db})")
    if gb % world:
        raise ValueError(f"global_batch={gb} sequences is not divisible by the world size {world}")
    db = min(db, gb // world)
    if gb % (db * world):
        raise ValueError(f"global_batch={gb} is not a multiple of device_batch x world_size = {db} x {world}")


def _check_numbers(cfg: TrainConfig) -> None:
    """Fractions, counts and multipliers: each in its range."""
    if not 0.0 <= cfg.warmdown_frac <= 1.0:
        raise ValueError(f"warmdown_frac must be in [0, 1], got {cfg.warmdown_frac}")
    if not 0.0 <= cfg.final_lr_frac <= 1.0:
        raise ValueError(f"final_lr_frac must be in [0, 1], got {cfg.final_lr_frac}")
    if cfg.ckpt_every < 0 or cfg.fisher_online_steps < 0:
        raise ValueError(f"ckpt_every and fisher_online_steps must be >= 0, got ckpt_every={cfg.ckpt_every}, "
                         f"fisher_online_steps={cfg.fisher_online_steps}")
    for k in ("seq_len", "vocab_size", "eval_every", "eval_tokens", "max_nonfinite"):
        v = getattr(cfg, k)
        if v is not None and (not isinstance(v, int) or v < 1):
            raise ValueError(f"{k} must be a positive integer, got {v!r}")
    if cfg.warmup_steps is not None and (not isinstance(cfg.warmup_steps, int) or cfg.warmup_steps < 0):
        raise ValueError(f"warmup_steps must be an integer >= 0, got {cfg.warmup_steps!r}")
    lr_mult = cfg.resolved("lr_mult")
    if isinstance(lr_mult, bool) or not (isinstance(lr_mult, (int, float)) and 0 < lr_mult < math.inf):
        raise ValueError(f"lr_mult must be a finite number > 0, got {lr_mult!r}")
    if any(not isinstance(k, int) or k < 1 for k in cfg.keep_ckpt_steps):
        raise ValueError(f"keep_ckpt_steps must be positive step numbers, got {cfg.keep_ckpt_steps!r}")


def check_val_split(have: int, cfg: TrainConfig, seq_len: int, batch: int, world: int) -> None:
    """Before any compute: a validation split too small for the evaluation would otherwise stop
    the run at its first evaluation (e.g. --preset nanochat's 5.2M eval tokens on the built-in
    corpus, whose split holds ~0.2M)."""
    need = val_set_tokens(cfg.resolved("eval_tokens"), seq_len, batch, world) + 1
    if have < need:
        raise ValueError(f"--data {cfg.data}: the validation split has {have:,} tokens but the evaluation needs "
                         f"{need:,} (eval_tokens={cfg.resolved('eval_tokens')}, seq_len={seq_len}, batch={batch}, "
                         f"world={world}); pass --data 'parquet:DIR/*.parquet' (nanochat's FineWeb-Edu / ClimbMix "
                         "shards, a `text` column; the last shard is held out) or a smaller --eval-tokens")


def total_steps_for(cfg: TrainConfig, mcfg: GPTConfig) -> int:
    tokens_per_step = cfg.resolved("global_batch") * mcfg.seq_len
    if cfg.steps is not None:
        return cfg.steps
    tokens = cfg.tokens if cfg.tokens is not None else cfg.ratio * mcfg.scaling_params
    return max(1, math.ceil(tokens / tokens_per_step))


def config_from_args(ns) -> TrainConfig:
    """A TrainConfig from parsed flags: every attribute named like one of its fields."""
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(ns).items() if k in names})
