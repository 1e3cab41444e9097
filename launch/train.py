"""Train one rung of the ladder.

    python launch/train.py --depth 2 --preset cpu-tiny --steps 200 --out runs/d2
    torchrun --standalone --nproc_per_node=2 launch/train.py --depth 2 --steps 200 --out runs/d2

Writes OUT/metrics.jsonl, OUT/final.json, OUT/ckpt/ (see engine/train/trainer.py). `--resume` continues
from the newest intact checkpoint with exactly the tokens and losses an uninterrupted run has.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the repo root is the import root


def _int_at_least(lo: int, what: str):
    """argparse type: an integer >= lo, with one message naming the value for every failure."""
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            v = lo - 1
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
        return v

    return parse


positive_int = _int_at_least(1, "a positive integer")
nonneg_int = _int_at_least(0, "an integer >= 0")


def positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}")
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {s!r}")
    return v


def token_count(s: str) -> int:
    """Accepts 2000000, 2e6, 2M, 500k."""
    t = s.strip().lower()
    mult = {"k": 10**3, "m": 10**6, "b": 10**9}.get(t[-1:], 1)
    try:
        v = float(t[:-1] if mult > 1 else t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a token count like 2000000, 2e6 or 2M, got {s!r}")
    if v < 1 or v != int(v):
        raise argparse.ArgumentTypeError(f"expected a positive whole token count, got {s!r}")
    return int(v)


def _user_errors():
    from engine.train.checkpoint import CheckpointError
    from engine.runtime.diskspace import StorageError
    from engine.runtime.run_lock import RunLockedError
    from engine.train.config import TrainError

    return (ValueError, FileNotFoundError, TrainError, CheckpointError, StorageError, RunLockedError)


def add_training_args(p: argparse.ArgumentParser, *, rung: bool = True) -> None:
    """Flags shared by train.py and miniseries.py (the miniseries sets depth, out and budget itself)."""
    from engine.train.guard import HOST_SYNC_MODES
    from models.config import PRESETS

    p.add_argument("--preset", default="cpu-tiny", choices=sorted(PRESETS), help="model + training preset")
    p.add_argument("--data", default="builtin", help="builtin | text:PATH | parquet:GLOB (default: builtin)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--global-batch", dest="global_batch", type=positive_int, help="sequences per optimizer step")
    p.add_argument("--device-batch", dest="device_batch", type=positive_int, help="sequences per rank per micro-step")
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "muon"])
    p.add_argument("--adamw-impl", dest="adamw_impl", default="kernel", choices=["kernel", "torch", "apex"],
                   help="kernel of plain AdamW steps: ours (default), torch's fused AdamW, or NVIDIA apex FusedAdam")
    p.add_argument("--host-sync", dest="host_sync", default="auto", choices=HOST_SYNC_MODES,
                   help="when the host reads each step's loss and non-finite verdict: lagged = one step late, "
                        "the skip decided on the device (no per-step sync; auto on CUDA), step = every step "
                        "(auto on CPU, where it costs nothing)")
    p.add_argument("--max-nonfinite", dest="max_nonfinite", type=positive_int, default=5,
                   help="consecutive steps with a NaN/Inf loss or gradient (each skipped) before the run stops")
    p.add_argument("--matrix-lr", dest="matrix_lr", type=positive_float)
    p.add_argument("--embedding-lr", dest="embedding_lr", type=positive_float)
    p.add_argument("--unembedding-lr", dest="unembedding_lr", type=positive_float)
    p.add_argument("--lr-mult", dest="lr_mult", type=positive_float, default=1.0,
                   help="multiply every peak learning rate (LR sweeps)")
    p.add_argument("--weight-decay", dest="weight_decay", type=float, default=0.0)
    p.add_argument("--warmdown-frac", dest="warmdown_frac", type=float, default=0.65)
    p.add_argument("--eval-every", dest="eval_every", type=positive_int)
    p.add_argument("--eval-tokens", dest="eval_tokens", type=positive_int)
    p.add_argument("--ckpt-every", dest="ckpt_every", type=nonneg_int, default=0, help="steps between checkpoints (0: final only)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile each block (default: on with CUDA, off on CPU; --no-compile: eager)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument("--cache-dir", dest="cache_dir")
    p.add_argument("--vocab-size", dest="vocab_size", type=positive_int, help=argparse.SUPPRESS)
    p.add_argument("--seq-len", dest="seq_len", type=positive_int, help="override the preset's sequence length")
    if rung:
        p.add_argument("--depth", type=positive_int, required=True)
        p.add_argument("--out", required=True)
        budget = p.add_mutually_exclusive_group(required=True)
        budget.add_argument("--steps", type=positive_int)
        budget.add_argument("--tokens", type=token_count)
        budget.add_argument("--ratio", type=positive_float, help="tokens = ratio x scaling params")
        p.add_argument("--resume", action="store_true")
        p.add_argument("--ars", default="off", choices=["off", "seed", "detrended"])
        p.add_argument("--fisher-online-steps", dest="fisher_online_steps", type=nonneg_int, default=0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_args(p)
    ns = p.parse_args(argv)

    from engine.runtime.distributed import destroy, init_distributed
    from engine.train.config import config_from_args
    from engine.train.trainer import train_rung

    USER_ERRORS = _user_errors()

    cfg = config_from_args(ns)
    env = init_distributed(cfg.device)
    try:
        from engine.runtime.diskspace import storage_guard
        from engine.runtime.run_lock import run_lock

        with run_lock(cfg.out, env), storage_guard(cfg.out):  # one writer; a full disk is one message
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
