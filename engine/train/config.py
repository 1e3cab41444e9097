"""What one training run is: its settings (TrainConfig), the per-preset training defaults, and
every check that can fail before compute (validate)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from engine.runtime.distributed import DistEnv
from engine.train import checkpoint as ckpt
from engine.train.evaluate import val_set_tokens
from engine.train.guard import resolve_host_sync
from engine.train.optim import check_adamw_impl
from models.config import GPTConfig, PRESETS, model_config

# Training defaults per preset. cpu-tiny: small batches so a few-minute run still takes hundreds
# of steps; nanochat: its ~0.5M-token batch (256 x 2048) and its learning rates (anchors.md).
TRAIN_PRESETS = {
    "cpu-tiny": dict(global_batch=8, device_batch=8, eval_tokens=32768, matrix_lr=0.004, embedding_lr=0.05,
                     unembedding_lr=0.004),
    "nanochat": dict(global_batch=256, device_batch=32, eval_tokens=10 * 524288, matrix_lr=0.002, embedding_lr=0.2,
                     unembedding_lr=0.004),
}
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
    optimizer: str = "adamw"  # "adamw" | "muon" (Muon for block matrices, AdamW for the rest)
    adamw_impl: str = "kernel"  # kernel | torch | apex: the kernel of plain AdamW steps (engine/train/optim.py)
    matrix_lr: float | None = None
    embedding_lr: float | None = None
    unembedding_lr: float | None = None
    weight_decay: float = 0.0
    lr_mult: float = 1.0  # multiplies every group's peak learning rate (LR sweeps; a grown rung's re-warm peak)
    warmup_steps: int | None = None  # default: 2% of the steps, at least 1
    warmdown_frac: float = 0.65  # the final linear decay (engine/train/schedule.py: nanochat 0.65, WSD 0.2, 0 = constant)
    final_lr_frac: float = 0.05
    eval_every: int | None = None  # default: ~12 evaluations per run (val-loss curves for FLOPs-to-match)
    eval_tokens: int | None = None
    ckpt_every: int = 0  # 0: only the final checkpoint
    keep_ckpt_steps: list = field(default_factory=list)  # also checkpoint at these steps and never prune them (WSD branch points)
    init_from: str | None = None  # a checkpoint of another run of this model to start from (a WSD branch starts from its stable run)
    resume: bool = False
    compile: bool | None = None  # None: on for CUDA, off on CPU (engine/runtime/distributed.py: resolve_compile)
    device: str = "auto"
    host_sync: str = "auto"  # auto | step | lagged: when the host reads a step's loss (engine/train/guard.py)
    progress: bool = True
    profile: bool = True
    cache_dir: str | None = None
    vocab_size: int | None = None  # override the preset's vocab (tests)
    seq_len: int | None = None  # override the preset's sequence length (tests)
    # inheritance
    ars: str = "off"  # off | seed | detrended
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


def validate(cfg: TrainConfig, env: DistEnv) -> None:
    """Every check that can fail before compute, with a message naming the value."""
    if cfg.preset not in PRESETS:
        raise ValueError(f"unknown preset {cfg.preset!r}; expected one of {sorted(PRESETS)}")
    if not isinstance(cfg.depth, int) or cfg.depth < 1:
        raise ValueError(f"depth must be a positive integer, got {cfg.depth!r}")
    budgets = [k for k in ("steps", "tokens", "ratio") if getattr(cfg, k) is not None]
    if len(budgets) != 1:
        raise ValueError(f"give exactly one of --steps, --tokens, --ratio (got {budgets or 'none'})")
    for k in ("steps", "tokens"):
        v = getattr(cfg, k)
        if v is not None and (not isinstance(v, int) or v < 1):
            raise ValueError(f"--{k} must be a positive integer, got {v!r}")
    if cfg.ratio is not None and not (0 < cfg.ratio <= 1e4):
        raise ValueError(f"--ratio must be in (0, 10000] tokens per scaling parameter, got {cfg.ratio!r}")
    gb, db = cfg.resolved("global_batch"), cfg.resolved("device_batch")
    if gb < 1 or db < 1:
        raise ValueError(f"batch sizes must be positive (global_batch={gb}, device_batch={db})")
    if gb % env.world_size:
        raise ValueError(f"global_batch={gb} sequences is not divisible by the world size {env.world_size}")
    db = min(db, gb // env.world_size)
    if gb % (db * env.world_size):
        raise ValueError(f"global_batch={gb} is not a multiple of device_batch x world_size = {db} x {env.world_size}")
    if cfg.optimizer not in ("adamw", "muon"):
        raise ValueError(f"--optimizer must be adamw or muon, got {cfg.optimizer!r}")
    check_adamw_impl(cfg.adamw_impl, env.device)
    resolve_host_sync(cfg.host_sync, env.device, cfg.adamw_impl)
    if cfg.ars not in ("off", "seed", "detrended"):
        raise ValueError(f"--ars must be off, seed or detrended, got {cfg.ars!r}")
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
    if not (isinstance(cfg.lr_mult, (int, float)) and 0 < cfg.lr_mult < math.inf):
        raise ValueError(f"lr_mult must be a finite number > 0, got {cfg.lr_mult!r}")
    if any(not isinstance(k, int) or k < 1 for k in cfg.keep_ckpt_steps):
        raise ValueError(f"keep_ckpt_steps must be positive step numbers, got {cfg.keep_ckpt_steps!r}")
    if cfg.init_from is not None and not (Path(cfg.init_from) / ckpt.EXTRA).exists():
        raise ValueError(f"init_from={cfg.init_from!r} is not a checkpoint directory (no {ckpt.EXTRA} in it)")


def check_val_split(have: int, cfg: TrainConfig, seq_len: int, batch: int, world: int) -> None:
    """Before any compute: a validation split too small for the evaluation would otherwise stop
    the run at its first evaluation (e.g. --preset nanochat's 5.2M eval tokens on the built-in
    corpus, whose split holds ~0.2M)."""
    need = val_set_tokens(cfg.resolved("eval_tokens"), seq_len, batch, world) + 1
    if have < need:
        raise ValueError(f"--data {cfg.data}: the validation split has {have:,} tokens but the evaluation needs {need:,} "
                         f"(eval_tokens={cfg.resolved('eval_tokens')}, seq_len={seq_len}, batch={batch}, world={world}); "
                         f"pass --data 'parquet:DIR/*.parquet' (nanochat's FineWeb-Edu / ClimbMix shards, a `text` column; "
                         f"the last shard is held out) or a smaller --eval-tokens")


def total_steps_for(cfg: TrainConfig, mcfg: GPTConfig) -> int:
    tokens_per_step = cfg.resolved("global_batch") * mcfg.seq_len
    if cfg.steps is not None:
        return cfg.steps
    tokens = cfg.tokens if cfg.tokens is not None else cfg.ratio * mcfg.scaling_params
    return max(1, math.ceil(tokens / tokens_per_step))



def config_from_args(ns) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(ns).items() if k in names})
