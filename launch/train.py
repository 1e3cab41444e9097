"""Train one rung of the ladder.

    python launch/train.py --depth 2 --preset cpu-tiny --steps 200 --out runs/d2
    torchrun --standalone --nproc_per_node=2 launch/train.py --depth 2 --steps 200 --out runs/d2

Writes OUT/metrics.jsonl, OUT/final.json, OUT/ckpt/ (see engine/train/trainer.py). `--resume` continues
from the newest intact checkpoint with exactly the tokens and losses an uninterrupted run has.

The training flags are shared with launch/miniseries.py (add_training_args); each takes its default
from TrainConfig and its choices from the module that owns them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the repo root is the import root

from launch.argtypes import nonneg_int, positive_float, positive_int, token_count  # noqa: E402
from engine.inherit.ars import MODES as ARS_MODES  # noqa: E402
from engine.runtime.diskspace import storage_guard  # noqa: E402
from engine.runtime.distributed import destroy, init_distributed  # noqa: E402
from engine.runtime.run_lock import run_lock  # noqa: E402
from engine.runtime.distributed import DEVICES  # noqa: E402
from engine.train.checkpoint import storage_advice  # noqa: E402
from engine.train.config import USER_ERRORS, TrainConfig, config_from_args  # noqa: E402
from engine.train.guard import HOST_SYNC_MODES  # noqa: E402
from engine.train.optim import ADAMW_IMPLS, OPTIMIZERS  # noqa: E402
from engine.train.trainer import train_rung  # noqa: E402
from models.config import PRESETS  # noqa: E402


def add_field(p: argparse.ArgumentParser, config: type, name: str, **kw) -> None:
    """--NAME-WITH-DASHES for the dataclass field NAME of `config`, defaulting to the field's default
    (unless `kw` gives another)."""
    p.add_argument("--" + name.replace("_", "-"), dest=name, **{"default": getattr(config, name), **kw})


def add_training_args(p: argparse.ArgumentParser, *, rung: bool = True) -> None:
    """Flags of TrainConfig fields, shared by train.py and miniseries.py (the miniseries sets depth,
    out, budget, resume, ARS and the online Fisher of each run itself: rung=False)."""
    def flag(name, **kw):
        add_field(p, TrainConfig, name, **kw)

    flag("preset", choices=sorted(PRESETS), help="model + training preset")
    flag("data", help="builtin | packages (make corpus) | text:PATH | parquet:GLOB (default: builtin)")
    flag("seed", type=int)
    flag("device", choices=DEVICES)
    flag("global_batch", type=positive_int, help="sequences per optimizer step")
    flag("device_batch", type=positive_int, help="sequences per rank per micro-step")
    flag("optimizer", choices=OPTIMIZERS)
    flag("adamw_impl", choices=ADAMW_IMPLS,
          help="kernel of plain AdamW steps: ours (default), torch's fused AdamW, or NVIDIA apex FusedAdam")
    flag("host_sync", choices=HOST_SYNC_MODES,
          help="when the host reads each step's loss and non-finite verdict: lagged = one step late, "
               "the skip decided on the device (no per-step sync; auto on CUDA), step = every step "
               "(auto on CPU, where it costs nothing)")
    flag("max_nonfinite", type=positive_int,
          help="consecutive steps with a NaN/Inf loss or gradient (each skipped) before the run stops")
    flag("matrix_lr", type=positive_float)
    flag("embedding_lr", type=positive_float)
    if rung:
        flag("lr_mult", type=positive_float, help="multiply every peak learning rate (LR sweeps)")
    else:  # a ladder tunes its rungs' LRs one by one: the optimum moves with depth (growth study, part 4)
        flag("lr_mult", help="multiply every peak learning rate (LR sweeps); per rung as VALUE,DEPTH=VALUE: "
                             "0.5,4=0.25 trains d4 at x0.25 and every other rung at x0.5")
    flag("unembedding_lr", type=positive_float)
    flag("weight_decay", type=float)
    flag("warmdown_frac", type=float)
    flag("eval_every", type=positive_int)
    flag("eval_tokens", type=positive_int)
    flag("ckpt_every", type=nonneg_int, help="steps between checkpoints (0: final only)")
    flag("compile", action=argparse.BooleanOptionalAction,
          help="torch.compile each block (default: on with CUDA, off on CPU; --no-compile: eager)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=TrainConfig.progress)
    p.add_argument("--no-profile", dest="profile", action="store_false", default=TrainConfig.profile)
    flag("cache_dir")
    flag("vocab_size", type=positive_int, help=argparse.SUPPRESS)
    flag("seq_len", type=positive_int, help="override the preset's sequence length")
    if rung:
        p.add_argument("--depth", type=positive_int, required=True)
        p.add_argument("--out", required=True)
        budget = p.add_mutually_exclusive_group(required=True)
        budget.add_argument("--steps", type=positive_int)
        budget.add_argument("--tokens", type=token_count)
        budget.add_argument("--ratio", type=positive_float, help="tokens = ratio x scaling params")
        p.add_argument("--resume", action="store_true", default=TrainConfig.resume)
        flag("ars", choices=ARS_MODES)
        flag("fisher_online_steps", type=nonneg_int)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_args(p)
    cfg = config_from_args(p.parse_args(argv))
    env = init_distributed(cfg.device)
    try:
        # one writer; a full disk names the last intact checkpoint
        with run_lock(cfg.out, env), storage_guard(cfg.out, advice=lambda: storage_advice(cfg.out)):
            final = train_rung(cfg, env)
    except USER_ERRORS as e:  # bad input or state: one clear line, not a traceback
        sys.exit(f"error: {e}")
    finally:
        destroy(env)
    if env.is_main:
        print(json.dumps({k: final[k] for k in ("depth", "params", "tokens", "flops", "val_loss", "val_bpb", "wall_s",
                                                  "device", "attention_backend", "world_size")}, indent=1))


if __name__ == "__main__":
    main()
