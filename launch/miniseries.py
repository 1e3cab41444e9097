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
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launch.argtypes import fractions, positive_float, positive_int, seed_list  # noqa: E402
from launch.train import add_field, add_training_args  # noqa: E402
from engine.analysis.report import write_ladder_report, write_multiseed_summary  # noqa: E402
from engine.inherit.ars import MODES as ARS_MODES  # noqa: E402
from engine.inherit.ewc import EWC  # noqa: E402
from engine.inherit.growth import DEPTH_INITS, PLACEMENTS, WIDTH_INITS  # noqa: E402
from engine.inherit.penalty import SCHEDULES as PENALTY_SCHEDULES, SUBSPACES  # noqa: E402
from engine.inherit.fisher import FISHER_MODES  # noqa: E402
from engine.ladder.config import (ARMS, ARS_FIELDS, DATA_ORDERS, GROW_FROM, GROWTH_FIELDS,  # noqa: E402
                                  NEW_MOMENTS, OPTIMIZER_STATES, PENALTY_FIELDS, TRAIN_SETTINGS, LadderConfig,
                                  parse_per_rung)
from engine.ladder.recipes import MINISERIES_DEFAULTS as DEFAULTS, RECIPES, recipe  # noqa: E402
from engine.ladder.run import run_ladder  # noqa: E402
from engine.runtime.diskspace import storage_guard  # noqa: E402
from engine.runtime.distributed import destroy, init_distributed  # noqa: E402
from engine.runtime.run_lock import run_lock  # noqa: E402
from engine.train.config import USER_ERRORS  # noqa: E402
from engine.train.schedule import SCHEDULES  # noqa: E402
from models.config import parse_depths  # noqa: E402

# LadderConfig fields a recipe may set (engine/ladder/config.py): their flags default to "the recipe's"
RECIPE_FIELDS = GROWTH_FIELDS + PENALTY_FIELDS + ARS_FIELDS


def build_parser() -> argparse.ArgumentParser:
    """The miniseries' flags: LadderConfig fields (their defaults its own, or DEFAULTS'), then the
    training settings every rung shares (launch/train.py: add_training_args)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)

    def flag(name, **kw):  # a recipe's field defaults to None: the recipe's value, else LadderConfig's
        add_field(p, LadderConfig, name, **({"default": None} if name in RECIPE_FIELDS else {}), **kw)

    p.add_argument("--depths", default=DEFAULTS["depths"], help="LO:HI inclusive (2:5 = 2,3,4,5) or a list 2,3,5")
    p.add_argument("--recipe", default=DEFAULTS["recipe"], choices=sorted(RECIPES),
                   help="the named growth recipe (engine/ladder/recipes.py; default %(default)s, the best measured): "
                        "its arm and settings; a flag below overrides one setting")
    p.add_argument("--arms", default=None,
                   help="comma list of scratch, inherit, inherit-nopenalty, inherit-noars, grow-only "
                        "(default: scratch and the recipe's arm)")
    p.add_argument("--ratio", type=positive_float, default=DEFAULTS["ratio"],
                   help="scratch tokens = ratio x scaling params")
    p.add_argument("--scratch-budgets", dest="scratch_budgets", type=fractions, default=DEFAULTS["scratch_budgets"],
                   help="budgets of scratch rungs, fractions of ratio x N tokens (default %(default)s)")
    p.add_argument("--inherit-budgets", dest="inherit_budgets", type=fractions, default=DEFAULTS["inherit_budgets"],
                   help="budgets of grown rungs, fractions of their scratch budget (default %(default)s)")
    flag("schedule", choices=list(SCHEDULES),
         help="wsd: one stable run per rung, a cooled branch per budget; nanochat: one run per budget")
    flag("cooldown_frac", type=positive_float, help="WSD cooldown as a fraction of each budget")
    flag("inherit_lr_mult",
         help="a grown rung's peak LR as a multiple of its depth's scratch peak; per rung as VALUE,DEPTH=VALUE "
              "(1,4=2: d4 grown at twice scratch d4's peak, the other grown rungs at scratch's)")
    flag("grow_from", choices=GROW_FROM,
         help="grow from the parent's cooled budget run or from the stable-phase checkpoint it started from")
    flag("data_order", choices=DATA_ORDERS,
         help="a grown rung re-reads its parent's token stream (restart) or reads on from where it stopped "
              "(default: %(default)s)")
    flag("depth_init", choices=DEPTH_INITS,
         help="an inserted layer starts as the identity (exact growth) or as a copy of its trained neighbour "
              "(G_stack; default: %(default)s, the best measured)")
    flag("width_init", choices=WIDTH_INITS,
         help="new heads and MLP hidden units start empty (zero write-out, exact) or as copies of trained ones "
              "sharing their write-out (split: Net2Net, exact up to a 1e-3 symmetry-breaking noise)")
    flag("optimizer_state", choices=OPTIMIZER_STATES,
         help="a grown rung starts with a fresh AdamW, or with its parent's moments carried into the new shapes "
              "(default: carry with --optimizer adamw, fresh with muon)")
    flag("new_moments", choices=NEW_MOMENTS,
         help="under --optimizer-state carry, new coordinates' zero moments are bias-corrected with the parent's "
              "carried step count (parent-step: ~no correction) or their own steps since growth (own-step)")
    flag("ramp_frac", type=float,
         help="MSG-style ramp: an inserted layer's output enters x min(1, s/K), K = this fraction of the grown "
              "rung's scratch budget's steps (0: off)")
    flag("distill", type=float,
         help="knowledge inheritance: the parent as a teacher, the weight w of its KL term in a grown rung's loss "
              "((1 - w) CE + w KL) at the rung's start (0: off; its forward passes count in the rung's FLOPs)")
    flag("distill_frac", type=positive_float,
         help="the teacher's weight decays linearly to 0 over this fraction of the grown rung's scratch budget")
    p.add_argument("--out", default=DEFAULTS["out"])
    p.add_argument("--seeds", type=seed_list, default=None,
                   help="comma list of seeds (overrides --seed); one miniseries per seed")
    p.add_argument("--lam", default=None,
                   help="lambda of the Fisher-weighted elastic term (Omega ~1e-7: lambda ~1e5 makes it bite); "
                        "per rung: 1e5,4=2e4 (depth 4 gets 2e4); ewc: derived at growth, (D_parent/D_child) x the "
                        "measured per-token/batch Fisher ratio (method.md section 4), e.g. ewc or 1e5,3=ewc")
    p.add_argument("--gamma", default=None, help="gamma of the subspace term (the seeds' 0.1); per rung as --lam")
    flag("subspace", choices=SUBSPACES)
    flag("svd_rank", type=positive_int)
    flag("svd_energy", type=positive_float)
    flag("penalty_schedule", choices=PENALTY_SCHEDULES)
    flag("penalty_form", help="coupled (grad Phi in the gradient Adam normalises) or decoupled (the anchor pull "
                              "after the update, like AdamW's weight decay; lambda, gamma per unit LR)")
    flag("penalty_decay_frac", type=float,
         help="lambda and gamma decay linearly to 0 over this fraction of a grown rung (0: no early decay)")
    flag("ars", choices=ARS_MODES, help="ARS mode of arms that use ARS")
    flag("fisher", choices=FISHER_MODES)
    flag("fisher_batches", type=positive_int)
    flag("placement", choices=PLACEMENTS)
    flag("inherit_warmup_frac", type=float,
         help="LR re-warmup of a grown rung, as a fraction of its scratch budget's steps")
    p.add_argument("--core-bundle", dest="core_bundle", help="DCLM eval bundle dir: adds CORE to the report")
    add_training_args(p, rung=False)
    return p


def recipe_fields(ns) -> dict:
    """The LadderConfig fields of the recipe: LadderConfig's defaults, then the named recipe's settings
    (engine/ladder/recipes.py), then every recipe flag given on the command line."""
    fields_ = {k: getattr(LadderConfig, k) for k in RECIPE_FIELDS}
    fields_.update(recipe(ns.recipe).fields_for(ns.optimizer))
    fields_.update({k: v for k, v in vars(ns).items() if k in RECIPE_FIELDS and v is not None})
    return fields_


def ladder_configs(p: argparse.ArgumentParser, ns) -> list[LadderConfig]:
    """One validated LadderConfig per seed. The LadderConfig fields come from the recipe and the flags
    named like them; the training settings shared by every rung are every given flag named like a
    TRAIN_SETTINGS field (so a flag added to add_training_args reaches the rungs without a list to keep)."""
    chosen = recipe_fields(ns)
    try:
        depths = parse_depths(ns.depths)
        lam, lam_by_depth = parse_per_rung(_spec(chosen["lam"]), "lam", words=(EWC,))
        gamma, gamma_by_depth = parse_per_rung(_spec(chosen["gamma"]), "gamma")
        lr_mult, lr_mult_by_depth = parse_per_rung(ns.lr_mult, "lr-mult") if ns.lr_mult is not None else (None, {})
        inherit_lr_mult, inherit_lr_mult_by_depth = parse_per_rung(_spec(chosen["inherit_lr_mult"]), "inherit-lr-mult")
    except ValueError as e:
        p.error(str(e))
    seeds = ns.seeds or [ns.seed]
    ladder_fields = {f.name for f in fields(LadderConfig)}
    given = {k: v for k, v in vars(ns).items() if k in ladder_fields} | chosen
    arms = ns.arms if ns.arms is not None else f"scratch,{recipe(ns.recipe).arm}"
    given.update(depths=depths, arms=[a.strip() for a in arms.split(",") if a.strip()], lam=lam, gamma=gamma,
                 lam_by_depth=lam_by_depth, gamma_by_depth=gamma_by_depth, lr_mult_by_depth=lr_mult_by_depth,
                 inherit_lr_mult=inherit_lr_mult, inherit_lr_mult_by_depth=inherit_lr_mult_by_depth,
                 train={k: v for k, v in (vars(ns) | {"lr_mult": lr_mult}).items()
                        if k in TRAIN_SETTINGS and v is not None})
    configs = []
    for seed in seeds:
        out = Path(ns.out) if len(seeds) == 1 else Path(ns.out) / f"seed{seed}"
        lc = LadderConfig(**{**given, "out": str(out), "seed": seed})
        try:
            lc.validate()
        except ValueError as e:
            p.error(str(e))
        configs.append(lc)
    return configs


def _spec(value) -> str:
    """A per-rung flag's text: as given, or a recipe's / LadderConfig's number written out."""
    return value if isinstance(value, str) else f"{value:g}"


def main(argv=None):
    p = build_parser()
    ns = p.parse_args(argv)
    configs = ladder_configs(p, ns)
    env = init_distributed(ns.device)
    try:
        with run_lock(ns.out, env), storage_guard(ns.out):  # one writer; a full disk is one message
            for lc in configs:
                results = run_ladder(lc, env, log=print if env.is_main else (lambda *a: None))
                if env.is_main:
                    path = write_ladder_report(lc, results, core_bundle=ns.core_bundle, arm_terms=ARMS)
                    print(f"[miniseries] report: {path}")
            if env.is_main and len(configs) > 1:
                print(f"[miniseries] seeds summary: {write_multiseed_summary(Path(ns.out), configs)}")
    except USER_ERRORS as e:  # bad input or state: one clear line, not a traceback
        sys.exit(f"error: {e}")
    finally:
        destroy(env)


if __name__ == "__main__":
    main()
