"""The main job: a ladder of rungs, trained from scratch and by progressive inheritance, and an
honest report of what inheritance saved (or did not).

    python launch/miniseries.py                                  # the embedded CPU default (<= 15 min on 2 cores)
    torchrun --standalone --nproc_per_node=8 launch/miniseries.py --preset nanochat --depths 10:20 --ratio 8

Writes OUT/summary.json, OUT/report.md and PNG plots; rerunning the same command skips finished
rungs and resumes an interrupted one. Several seeds (--seeds 0,1) run one miniseries each under
OUT/seed<k>/ and OUT/summary.json aggregates them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launch.train import _user_errors, add_training_args, nonneg_int, positive_float, positive_int  # noqa: E402
from engine.ladder.config import DATA_ORDERS, GROW_FROM, OPTIMIZER_STATES  # noqa: E402
from engine.train.schedule import SCHEDULES  # noqa: E402
from engine.inherit.growth import DEPTH_INITS  # noqa: E402

# The embedded CPU default: sized so its budget curves finish in about 15 minutes on a 2-core CPU
# (measured; see the README and docs/results/).
DEFAULTS = dict(depths="2:3", arms="scratch,grow-only", ratio=2.0, scratch_budgets="0.5,0.75,1",
                inherit_budgets="0.2,0.35,0.5,0.7,1", out="runs/miniseries")


def fractions(s: str) -> list[float]:
    """argparse type: comma list of increasing budget fractions in (0, 1]."""
    try:
        vals = [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        vals = []
    if not vals or any(not 0 < v <= 1 for v in vals) or sorted(set(vals)) != vals:
        raise argparse.ArgumentTypeError(f"expected increasing fractions in (0, 1] like 0.25,0.5,1, got {s!r}")
    return vals


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", default=DEFAULTS["depths"], help="LO:HI inclusive (2:5 = 2,3,4,5) or a list 2,3,5")
    p.add_argument("--arms", default=DEFAULTS["arms"],
                   help="comma list of scratch, inherit, inherit-nopenalty, inherit-noars, grow-only")
    p.add_argument("--ratio", type=positive_float, default=DEFAULTS["ratio"], help="scratch tokens = ratio x scaling params")
    p.add_argument("--scratch-budgets", dest="scratch_budgets", type=fractions, default=DEFAULTS["scratch_budgets"],
                   help="budgets of scratch rungs, fractions of ratio x N tokens (default %(default)s)")
    p.add_argument("--inherit-budgets", dest="inherit_budgets", type=fractions, default=DEFAULTS["inherit_budgets"],
                   help="budgets of grown rungs, fractions of their scratch budget (default %(default)s)")
    p.add_argument("--schedule", default="wsd", choices=list(SCHEDULES),
                   help="wsd: one stable run per rung, a cooled branch per budget; nanochat: one run per budget")
    p.add_argument("--cooldown-frac", dest="cooldown_frac", type=positive_float, default=0.2,
                   help="WSD cooldown as a fraction of each budget")
    p.add_argument("--inherit-lr-mult", dest="inherit_lr_mult", type=positive_float, default=1.0,
                   help="a grown rung's peak LR as a multiple of the scratch peak")
    p.add_argument("--grow-from", dest="grow_from", default="cooled", choices=GROW_FROM,
                   help="grow from the parent's cooled budget run or from the stable-phase checkpoint it started from")
    p.add_argument("--data-order", dest="data_order", default="restart", choices=DATA_ORDERS,
                   help="a grown rung re-reads its parent's token stream (restart) or reads on from where it stopped")
    p.add_argument("--depth-init", dest="depth_init", default="identity", choices=DEPTH_INITS,
                   help="an inserted layer starts as the identity (exact growth) or as a copy of its trained neighbour (G_stack)")
    p.add_argument("--optimizer-state", dest="optimizer_state", default="fresh", choices=OPTIMIZER_STATES,
                   help="a grown rung starts with a fresh AdamW, or with its parent's moments carried into the new shapes")
    p.add_argument("--out", default=DEFAULTS["out"])
    p.add_argument("--seeds", default=None, help="comma list of seeds (overrides --seed); one miniseries per seed")
    p.add_argument("--lam", default="1e5",
                   help="lambda of the Fisher-weighted elastic term (Omega ~1e-7: lambda ~1e5 makes it bite); "
                        "per rung: 1e5,4=2e4 (depth 4 gets 2e4)")
    p.add_argument("--gamma", default="0.1", help="gamma of the subspace term (the seeds' 0.1); per rung as --lam")
    p.add_argument("--subspace", default="coords", choices=["coords", "svd"])
    p.add_argument("--svd-rank", dest="svd_rank", type=positive_int)
    p.add_argument("--svd-energy", dest="svd_energy", type=positive_float)
    p.add_argument("--penalty-schedule", dest="penalty_schedule", default="constant", choices=["constant", "linear"])
    p.add_argument("--ars", default="seed", choices=["seed", "detrended", "off"], help="ARS mode of arms that use ARS")
    p.add_argument("--fisher", default="online", choices=["online", "posthoc"])
    p.add_argument("--fisher-batches", dest="fisher_batches", type=positive_int, default=20)
    p.add_argument("--placement", default="end", choices=["end", "middle", "copy-middle"])
    p.add_argument("--inherit-warmup-frac", dest="inherit_warmup_frac", type=float, default=0.05,
                   help="LR re-warmup of a grown rung, as a fraction of its scratch budget's steps")
    p.add_argument("--core-bundle", dest="core_bundle", help="DCLM eval bundle dir: adds CORE to the report")
    add_training_args(p, rung=False)
    ns = p.parse_args(argv)

    from engine.runtime.distributed import destroy, init_distributed
    from engine.ladder.config import LadderConfig, parse_depths, parse_per_rung
    from engine.ladder.run import run_ladder
    from engine.analysis.report import write_ladder_report, write_multiseed_summary

    try:
        depths = parse_depths(ns.depths)
        lam, lam_by_depth = parse_per_rung(ns.lam, "lam")
        gamma, gamma_by_depth = parse_per_rung(ns.gamma, "gamma")
        seeds = [int(s) for s in ns.seeds.split(",")] if ns.seeds else [ns.seed]
    except ValueError as e:
        p.error(str(e))
    train_keys = ("data", "device", "global_batch", "device_batch", "optimizer", "adamw_impl", "host_sync", "max_nonfinite", "matrix_lr", "embedding_lr", "lr_mult",
                  "unembedding_lr", "weight_decay", "warmdown_frac", "eval_every", "eval_tokens", "ckpt_every",
                  "compile", "progress", "profile", "cache_dir", "vocab_size", "seq_len")
    train = {k: getattr(ns, k) for k in train_keys if getattr(ns, k) is not None}
    configs = []
    for seed in seeds:
        out = Path(ns.out) if len(seeds) == 1 else Path(ns.out) / f"seed{seed}"
        lc = LadderConfig(depths=depths, arms=[a.strip() for a in ns.arms.split(",") if a.strip()], out=str(out),
                          preset=ns.preset, ratio=ns.ratio, seed=seed, lam=lam, scratch_budgets=ns.scratch_budgets,
                          inherit_budgets=ns.inherit_budgets, schedule=ns.schedule, cooldown_frac=ns.cooldown_frac,
                          inherit_lr_mult=ns.inherit_lr_mult, grow_from=ns.grow_from, data_order=ns.data_order,
                          optimizer_state=ns.optimizer_state, depth_init=ns.depth_init,
                          gamma=gamma, lam_by_depth=lam_by_depth, gamma_by_depth=gamma_by_depth, subspace=ns.subspace, svd_rank=ns.svd_rank, svd_energy=ns.svd_energy,
                          penalty_schedule=ns.penalty_schedule, ars=ns.ars, fisher=ns.fisher,
                          fisher_batches=ns.fisher_batches, placement=ns.placement,
                          inherit_warmup_frac=ns.inherit_warmup_frac, train=train)
        try:
            lc.validate()
        except ValueError as e:
            p.error(str(e))
        configs.append(lc)

    env = init_distributed(train.get("device", "auto"))
    from engine.runtime.diskspace import storage_guard
    from engine.runtime.run_lock import run_lock

    try:
        with run_lock(ns.out, env), storage_guard(ns.out):  # one writer; a full disk is one message
            for lc in configs:
                results = run_ladder(lc, env, log=print if env.is_main else (lambda *a: None))
                if env.is_main:
                    path = write_ladder_report(lc, results, core_bundle=ns.core_bundle)
                    print(f"[miniseries] report: {path}")
            if env.is_main and len(configs) > 1:
                print(f"[miniseries] seeds summary: {write_multiseed_summary(Path(ns.out), configs)}")
    except _user_errors() as e:  # bad input or state: one clear line, not a traceback
        sys.exit(f"error: {e}")
    finally:
        destroy(env)


if __name__ == "__main__":
    main()
