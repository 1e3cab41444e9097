"""The named growth recipes, in one place: each a complete setting of how a grown rung starts and
trains (method.md section 2), with what was measured for it and the report that says so. The
miniseries (`--recipe NAME`) and the study (`--recipes A,B`) read them from here; the per-rung
flag grammar of launch/miniseries.py stays for experts and overrides a recipe's settings one by one.

A recipe is an arm of engine/ladder/config.ARMS plus the LadderConfig fields it sets; every field
it leaves out keeps LadderConfig's default. Also here: the launchers' embedded defaults (the CPU
miniseries and the CPU study), which are choices of this project, not of the model or trainer.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from engine.ladder.config import ARMS, LadderConfig

BEST = "copy_continue_carry"  # the recipe the launchers grow with by default


@dataclass(frozen=True)
class Recipe:
    name: str
    arm: str  # engine/ladder/config.ARMS key: what the grown rung trains with (growth, penalty, ARS)
    settings: dict = field(default_factory=dict)  # LadderConfig fields that differ from its defaults
    measured: str = ""  # one line: what was measured for it, and where

    def fields_for(self, optimizer: str) -> dict:
        """The LadderConfig fields this recipe sets, for a rung trained with `optimizer`: carried Adam
        moments need AdamW (Muon keeps none for the matrices), so under Muon a carrying recipe
        starts its grown rungs with a fresh optimizer instead."""
        out = dict(self.settings)
        if out.get("optimizer_state") == "carry" and optimizer != "adamw":
            out["optimizer_state"] = "fresh"
        return out


def plain() -> Recipe:
    """Exact, function-preserving growth: new layers start as identities (zero write-out), the grown
    rung re-reads its parent's token stream from the start with a fresh AdamW."""
    return Recipe("plain", "grow-only", {},
                  "d2->d3, ratio 8, tuned LR: 0.702 of scratch d3's FLOPs (3 seeds; growth study part 5); "
                  "d5: 0.771 (seed 2, part 8)")


def copy() -> Recipe:
    """Depth by copying (G_stack): each new layer starts as a copy of the trained layer below it."""
    return Recipe("copy", "grow-only", {"depth_init": "copy"},
                  "d2->d3, ratio 8: 0.665 [0.432, 0.897] (3 seeds; part 4); on English prose slightly worse "
                  "than plain growth (2 seeds; part 3)")


def copy_continue_carry() -> Recipe:
    """The best measured: copying, the grown rung reads on in the token stream where its parent
    stopped, and keeps its parent's Adam moments (padded into the new shapes)."""
    return Recipe("copy_continue_carry", "grow-only",
                  {"depth_init": "copy", "data_order": "continue", "optimizer_state": "carry"},
                  "ratio 8 against tuned scratch: d3 0.631 (4 seeds), d4 0.474 (4 seeds), d5 0.656 (3 seeds) "
                  "of scratch's FLOPs; beats plain growth at d3 by 0.071 [0.024, 0.119] (part 8). Seeds 0-2 "
                  "chose it: not yet replicated under a frozen protocol")


def penalty_ars() -> Recipe:
    """The seeds' full method on plain growth: the Fisher-weighted elastic penalty (coupled, lambda
    1e5, gamma 0.1 on new coordinates) and ARS damping, both fused into the optimizer step."""
    return Recipe("penalty_ars", "inherit", {},
                  "d2->d3, ratio 8: neutral to slightly worse than plain growth (+0.001 to +0.005 nats, "
                  "+0.013 to +0.027 in FLOPs-to-match; growth study part 2)")


def penalty() -> Recipe:
    """The elastic penalty alone (no ARS), on plain growth."""
    return Recipe("penalty", "inherit-noars", {}, "d2->d3, ratio 8: 0.743 against plain 0.730 (seed 0; part 2)")


def ars() -> Recipe:
    """ARS damping alone (no penalty), on plain growth."""
    return Recipe("ars", "inherit-nopenalty", {}, "d2->d3, ratio 8: 0.746 against plain 0.730 (seed 0; part 2)")


RECIPES = {f.__name__: f for f in (plain, copy, copy_continue_carry, penalty_ars, penalty, ars)}


def recipe(name: str) -> Recipe:
    """The recipe called `name`, or one sentence naming the ones there are."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; expected one of {sorted(RECIPES)}")
    r = RECIPES[name]()
    unknown = set(r.settings) - set(LadderConfig.__dataclass_fields__)
    assert r.arm in ARMS and not unknown, (r.arm, unknown)  # a recipe names real arms and fields
    return r


def recipe_names(spec: str) -> list[str]:
    """'plain,copy_continue_carry' -> the names, each checked, none repeated."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ValueError(f"--recipes {spec!r}: expected a comma list of recipe names, e.g. plain,{BEST}")
    for n in names:
        recipe(n)
    if len(set(names)) != len(names):
        raise ValueError(f"--recipes {spec!r} names a recipe twice")
    return names


# The launchers' embedded CPU defaults, sized for a 2-core laptop: the miniseries' budget curves in
# minutes, the whole study within the 30 minutes its issue allows (timed: README,
# docs/results/2026-12-05-study-default-cpu.md).
MINISERIES_DEFAULTS = dict(depths="2:3", recipe=BEST, ratio=2.0, scratch_budgets="0.5,0.75,1",
                           inherit_budgets="0.2,0.35,0.5,0.7,1", out="runs/miniseries")
STUDY_DEFAULTS = dict(depths="2:3", recipes=f"plain,{BEST}", ratio=2.0, scratch_budgets="0.5,0.75,1",
                      inherit_budgets="0.2,0.35,0.5,0.7,1", tune_seed=1000, seeds="1001,1002",
                      bracket_points=3, max_extend=3, out="runs/study")
