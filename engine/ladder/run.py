"""The miniseries' run order: every arm over the same ladder, same data order and seeds (method.md
section 6). The arms, recipe choices and checks are in engine/ladder/config.py; how one rung is grown
into an Inheritance is engine/ladder/grow.py.

Arms
    scratch            every rung from random init, at budgets around ratio x N tokens
    inherit            each rung grown into the next depth of the ladder (exact growth unless
                       --depth-init copy), trained with the penalty Phi and ARS damping at budgets
                       from small fractions up to the scratch budget
    inherit-nopenalty  as inherit, without Phi
    inherit-noars      as inherit, without ARS
    grow-only          growth alone (no Phi, no ARS)

Budget curves: every rung is trained at several budgets (fractions of its scratch budget). With
the WSD schedule (the default) a rung is one stable run at constant LR plus one cooled branch per
budget, started from the stable run's checkpoint at (1 - c) x B_k; each branch is a finished run at
its own budget. With the nanochat schedule every budget is a separate run. A grown rung grows from
the smallest of its parent's budget runs whose val loss reached the parent's scratch twin at full
budget (the largest budget if none did): the chain a user who stops each rung at scratch quality
would train (grow_source). The budget runs of a rung some arm grows from accumulate the online
Fisher over their last --fisher-batches steps (with --fisher online).

Order (run_ladder): first the lowest rung, trained once from scratch and shared by every arm (the
arms differ only from the first growth on, so a difference between them is the method's and not the
base rung's), and the rest of the scratch arm (_train_scratch_rungs); then each growing arm, rung by
rung (_train_grown_arm). Each rung's runs are trained, or skipped when finished, by _train_rung_curve.

Layout of OUT (one seed):   OUT/<arm>/d<depth>/stable/      the WSD stable run
                            OUT/<arm>/d<depth>/b<frac>/     one budget run each (a train run dir)
                            OUT/base/d<lo>/                 the shared lowest rung when `scratch` is not an arm
                            OUT/<arm>/d<depth>/identity.json  the ladder settings of the rung's runs
A rung's directory names the settings of its identity (engine/ladder/config.rung_identity) that
differ from LadderConfig's defaults, per-rung values included (grow-only+data_order=continue/d3,
scratch+lr_mult_d4=0.25/d4), so recipes, sweeps and tuned LRs share one OUT and its scratch rungs.
Rerunning the same command skips finished runs (after checking they were made by the same training
configuration and the same ladder settings, each difference named) and resumes an interrupted one.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from engine.analysis.runs import last_eval, rung_cost, full_budget
from engine.ladder.config import ARMS, LadderConfig, arm_dir_name, identity_default, rung_identity
from engine.ladder.grow import build_inheritance
from engine.runtime.distributed import DistEnv, barrier
from engine.train import checkpoint as ckpt
from engine.train.config import TrainConfig, total_steps_for
from engine.train.schedule import branch_step
from engine.train.trainer import train_rung

IDENTITY_FILE = "identity.json"  # in a rung directory: the ladder settings its runs were trained with


class Unfinished(Exception):
    """A read-only ladder (run_ladder(read_only=True)) met a run that is not finished: `run` names it."""

    def __init__(self, run: Path):
        super().__init__(f"{run} is not finished")
        self.run = run


def rung_dir(out: Path, arm: str, depth: int, lc: LadderConfig) -> Path:
    """The directory of one rung of one arm: its budget runs live below it (stable/, b<frac>/). The
    lowest rung is the scratch arm's (base/ when `scratch` is not an arm), shared by every arm."""
    if depth == lc.depths[0] and arm != "scratch":
        name = arm_dir_name("scratch", lc, depth)
        return out / (name if "scratch" in lc.arms else "base" + name[len("scratch"):]) / f"d{depth}"
    return out / arm_dir_name(arm, lc, depth) / f"d{depth}"


def arm_label(arm: str, lc: LadderConfig) -> str:
    """An arm's name in results and reports: `scratch`, or a grown arm's top-rung directory name, which
    carries its whole recipe, so reports of two recipes never mix."""
    return arm if arm == "scratch" else arm_dir_name(arm, lc)


def check_identity(root: Path, identity: dict, env: DistEnv) -> None:
    """A rung directory holds the runs of one identity (engine/ladder/config.rung_identity): record it
    on first use; refuse, naming each setting, a rung whose recorded identity differs (a setting the
    directory name does not show, or a directory made by hand). A key the record lacks (a setting added
    since) reads as its default (identity_default), as _finished reads a TrainConfig field."""
    path = root / IDENTITY_FILE
    if path.exists():
        have = json.loads(path.read_text())
        recorded = {k: have.get(k, identity_default(k)) for k in identity}
        diff = sorted(k for k in identity if recorded[k] != identity[k])
        if diff:
            said = ", ".join(f"{k}: {recorded[k]!r} there, {identity[k]!r} asked" for k in diff)
            raise ValueError(f"{root} holds runs of a different setting ({said}); use another --out or remove {root}")
    elif env.is_main:
        root.mkdir(parents=True, exist_ok=True)
        ckpt.write_json_atomic(path, identity)


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
    identity: dict  # engine/ladder/config.rung_identity: checked against the rung's identity.json

    def budget_steps(self, frac: float) -> int:
        return max(1, round(frac * self.scratch_steps))


def _train_config(lc: LadderConfig, plan: RungPlan, run: Path, steps: int, **kw) -> TrainConfig:
    rung_lr = {"lr_mult": lc.lr_mult_by_depth[plan.depth]} if plan.depth in lc.lr_mult_by_depth else {}
    cfg = TrainConfig(depth=plan.depth, preset=lc.preset, out=str(run), seed=lc.seed, steps=steps, resume=True,
                      ars=plan.ars, warmup_steps=plan.warmup, **(dict(lc.train) | rung_lr | kw))
    # the ladder's --lr-mult for this depth (or the preset's tuned one) times the rung's own (a grown
    # rung's re-warm peak)
    return replace(cfg, lr_mult=cfg.resolved("lr_mult") * plan.lr_mult)


def _runs_of(lc: LadderConfig, plan: RungPlan) -> list[tuple[float | None, Path, TrainConfig]]:
    """(budget fraction or None for the stable run, run dir, config), in the order they must run."""
    runs = []
    if lc.schedule == "wsd":
        steps = {f: plan.budget_steps(f) for f in plan.fracs}
        starts = {f: branch_step(steps[f], lc.cooldown_frac) for f in plan.fracs}
        bad = {f: steps[f] for f in plan.fracs if not 0 < starts[f] < steps[f]}
        if bad:
            raise ValueError(f"d{plan.depth}: budget(s) {bad} (steps) are too short for a cooldown of "
                             f"{lc.cooldown_frac:g} (the scratch budget is {plan.scratch_steps} steps: ratio x N "
                             "tokens over global_batch x seq_len tokens per step); use larger budgets, a larger "
                             "--ratio or a smaller --seq-len / --global-batch")
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


def _train_rung_curve(lc: LadderConfig, plan: RungPlan, env: DistEnv, log, inherit_fn=None,
                      read_only: bool = False) -> list[dict]:
    """Train (or skip, when finished) every run of one rung; return the budget runs' final dicts,
    each with its budget fraction and run dir. `inherit_fn()` builds the Inheritance of a grown
    rung, once, and only if some run still has to train. `read_only`: train and write nothing; a run
    not finished raises Unfinished."""
    inherit, finals = None, []
    if read_only and not (plan.root / IDENTITY_FILE).exists():
        raise Unfinished(plan.root)
    check_identity(plan.root, plan.identity, env)
    barrier(env)
    for frac, run, cfg in _runs_of(lc, plan):
        final = _finished(run, cfg) if env.is_main else None
        final = ckpt.broadcast_object(final, env) if env.distributed else final  # every rank skips, or none
        if final is None and read_only:
            raise Unfinished(run)
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
                final["val_loss_se"] = last_eval(run).get("val_loss_se")
            finals.append({**final, "budget_frac": frac, "run": str(run)})
    return finals


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


def _scratch_steps(lc: LadderConfig) -> dict[int, int]:
    """Scratch budget (optimizer steps) of every depth: ratio x N tokens over the tokens per step."""
    steps = {}
    for d in lc.depths:
        probe = TrainConfig(depth=d, preset=lc.preset, ratio=lc.ratio, **lc.train)
        steps[d] = total_steps_for(probe, probe.model_config())
    return steps


def _fisher_steps(lc: LadderConfig, depth: int) -> int:
    """Online-Fisher steps at the end of each run of a rung some arm grows from (0: none)."""
    grows = any(ARMS[a][0] for a in lc.arms)
    return lc.fisher_batches if (lc.fisher == "online" and grows and depth != lc.depths[-1]) else 0


def _train_scratch_rungs(lc: LadderConfig, scratch_steps: dict[int, int], env: DistEnv, log,
                         read_only: bool = False) -> dict[str, list[dict]]:
    """The shared lowest rung and the rest of the scratch arm: {arm label: [rung]}, every grown arm
    starting with the lowest rung."""
    growers = [a for a in lc.arms if ARMS[a][0]]
    lo = lc.depths[0]
    results: dict[str, list[dict]] = {}
    for d in lc.depths if "scratch" in lc.arms else [lo]:
        rung = scratch_rung(lc, d, scratch_steps, env, log, read_only)
        for arm in (["scratch"] if "scratch" in lc.arms else []) + (growers if d == lo else []):
            results.setdefault(arm_label(arm, lc), []).append(rung)
    return results


def scratch_rung(lc: LadderConfig, d: int, scratch_steps: dict[int, int], env: DistEnv, log,
                 read_only: bool = False) -> dict:
    """One scratch rung (the lowest rung when `scratch` is not an arm) with its budget curve, trained
    where not finished (or only read: `read_only`)."""
    growers = [a for a in lc.arms if ARMS[a][0]]
    root = rung_dir(Path(lc.out), "scratch" if "scratch" in lc.arms else growers[0], d, lc)
    plan = RungPlan(d, root, scratch_steps[d], list(lc.scratch_budgets), max(1, round(0.02 * scratch_steps[d])),
                    1.0, _fisher_steps(lc, d) if d == lc.depths[0] else 0, "off", rung_identity("scratch", lc, d))
    return {"depth": d, "runs": _train_rung_curve(lc, plan, env, log, read_only=read_only), "grown_from": None,
            "scratch_steps": scratch_steps[d]}


def _train_grown_arm(lc: LadderConfig, arm: str, rungs: list[dict], twin: dict[int, dict],
                     scratch_steps: dict[int, int], env: DistEnv, log, read_only: bool = False) -> None:
    """Grow `arm` rung by rung from its lowest rung (rungs[0]), each rung from its parent's chosen
    budget run; append each grown rung to `rungs`. `twin`: the scratch arm's rungs by depth."""
    _, use_penalty, use_ars = ARMS[arm]
    parent = rungs[0]
    for prev_d, d in zip(lc.depths, lc.depths[1:]):
        reference = twin.get(prev_d) or (parent if prev_d == lc.depths[0] else None)  # the base rung is its own twin
        source = grow_source(lc, parent["runs"], full_budget(reference)["val_loss"] if reference else None)
        plan = RungPlan(d, rung_dir(Path(lc.out), arm, d, lc), scratch_steps[d], list(lc.inherit_budgets),
                        max(1, round(lc.inherit_warmup_frac * scratch_steps[d])),
                        lc.inherit_lr_mult_at(d),
                        _fisher_steps(lc, d), lc.ars if use_ars else "off", rung_identity(arm, lc, d))

        def make(source=source, prev_d=prev_d, d=d):
            inherit = build_inheritance(Path(source["checkpoint"]), prev_d, d, lc, env, use_penalty, scratch_steps[d])
            log(f"[miniseries] {arm} d{prev_d}->d{d}: grown from {source['run']} ({source['kind']}); "
                f"growth logit error {inherit.info['growth_max_abs_logit_diff']:.2e}")
            return inherit

        parent = {"depth": d, "runs": _train_rung_curve(lc, plan, env, log, make, read_only), "grown_from": source,
                  "scratch_steps": scratch_steps[d]}
        rungs.append(parent)


def run_ladder(lc: LadderConfig, env: DistEnv, log=print, read_only: bool = False) -> dict:
    """Train every run of every rung of every arm that is not finished yet. Returns
    {arm label: [rung]} with rung = {"depth", "runs": [final dicts, one per budget], "grown_from",
    "scratch_steps"}, labelled by arm_label. `read_only`: the results of a finished ladder, read while
    another process may still be training it; nothing is trained or written, and the first run not
    finished raises Unfinished."""
    lc.validate()
    scratch_steps = _scratch_steps(lc)
    results = _train_scratch_rungs(lc, scratch_steps, env, log, read_only)  # 1. the shared lowest rung, the scratch arm
    twin = {r["depth"]: r for r in results.get("scratch", [])}
    for arm in (a for a in lc.arms if ARMS[a][0]):  # 2. the growing arms, rung by rung
        _train_grown_arm(lc, arm, results[arm_label(arm, lc)], twin, scratch_steps, env, log, read_only)
    return results
