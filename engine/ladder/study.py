"""The study: the project's answer as one frozen protocol (method.md section 6), run by launch/study.py.

Phases, each resumable (finished runs are skipped, an interrupted one resumes, as in the miniseries):
1. Tune, on the tuning seed only, which is never reported: each depth's scratch peak-LR multiplier
   (bracket search on a log2 grid around the preset's, objective the cooled full-budget val loss),
   then, depth by depth upward, each recipe's grown-rung multiplier (around the recipe's own, objective
   its FLOPs-to-match against the tuned scratch rung). Runs under OUT/tune/.
2. Freeze: protocol.json holds every setting and every tuned value before any measured run
   (engine/ladder/protocol.py); a different setting asked of the same OUT is refused by name.
3. Measure, on the fresh seeds: scratch and every recipe (plain growth always among them), paired by
   seed, at the tuned values. Runs under OUT/seed<k>/, one ladder per recipe sharing its scratch rungs.
4. Report: launch/study.py hands the per-seed summaries to engine/analysis/study.py.

A job is a list of ladders trained in order in one process; independent jobs run `jobs` at a time in
worker processes on CPU, one thread each on a 2-core machine (two training processes fill 2 cores
better than one with two threads), in the calling process under torchrun or when a round has a single
job (a bracket's one extension point: it then has every thread). A rerun replays the same rounds, so a
run always resumes on the thread count it started with. Every job writes only its own run directories, and
the runs two jobs share (scratch rungs, a parent chain) were finished by an earlier phase.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from engine.analysis.runs import full_budget, rung_cost
from engine.analysis.savings import NOT_REACHED, rung_saving
from engine.ladder.config import ARMS, LadderConfig
from engine.ladder.recipes import recipe
from engine.ladder.run import Unfinished, arm_label, run_ladder
from engine.ladder.tune import BracketResult, bracket_search, check_bracket, drive
from engine.runtime.distributed import DistEnv, init_distributed
from engine.train.config import TRAIN_PRESETS
from models.config import check_depths

BASELINE = "plain"  # every study measures plain growth: the recipes' differences are paired against it


@dataclass
class StudyConfig:
    depths: list[int]
    recipes: list[str]
    out: str
    tune_seed: int
    seeds: list[int]
    preset: str = "cpu-tiny"
    ratio: float = 2.0
    scratch_budgets: list = field(default_factory=lambda: [0.5, 0.75, 1.0])
    inherit_budgets: list = field(default_factory=lambda: [0.2, 0.35, 0.5, 0.7, 1.0])
    bracket_points: int = 3
    max_extend: int = 3
    refine: bool = False
    accept_edge: bool = False  # go on with a bracket still at its edge (reported), instead of stopping
    jobs: int = 1
    train: dict = field(default_factory=dict)  # training settings every run shares (LadderConfig.train)
    tuned_from: dict | None = None  # --reuse-tuned: another protocol's tuned values, taken instead of tuning

    def validate(self) -> None:
        """Every check that can fail before compute, one sentence each."""
        check_depths(self.depths)
        if len(self.depths) < 2:
            raise ValueError(f"a study grows rungs: --depths needs at least two depths, got {self.depths}")
        for name in self.recipes:
            recipe(name)
        if BASELINE not in self.recipes:
            raise ValueError(f"--recipes {self.recipes} must include {BASELINE!r}: every recipe is paired against it")
        if len(set(self.seeds)) != len(self.seeds) or not self.seeds:
            raise ValueError(f"--seeds must be distinct seeds, at least one, got {self.seeds}")
        if self.tune_seed in self.seeds:
            raise ValueError(f"--tune-seed {self.tune_seed} is also a measured seed in --seeds {self.seeds}: a seed "
                             f"the protocol was tuned on is never reported; pick another")
        check_bracket(self.center(), self.bracket_points, self.max_extend)
        if self.tuned_from is not None:
            self._check_tuned_from()
        if not isinstance(self.jobs, int) or self.jobs < 1:
            raise ValueError(f"--jobs must be a positive integer, got {self.jobs!r}")
        for name in self.recipes:  # the ladder's own checks (budgets, ratio, training settings), per recipe
            self.ladder(name, self.depths, self.seeds[0], Path(self.out), {}, {}).validate()

    def _check_tuned_from(self) -> None:
        """Reused tuned values must cover every depth and recipe, and come from this tuning seed."""
        src, tuned = self.tuned_from["file"], self.tuned_from["tuned"]
        if self.tuned_from["tune_seed"] != self.tune_seed:
            raise ValueError(f"--reuse-tuned: {src} was tuned on seed {self.tuned_from['tune_seed']}, not "
                             f"--tune-seed {self.tune_seed}; leave --tune-seed out (it is the source's)")
        missing = [f"scratch d{d}" for d in self.depths if str(d) not in tuned["scratch_lr_mult"]]
        missing += [f"{r} d{d}" for r in self.recipes for d in self.depths[1:]
                    if str(d) not in tuned["inherit_lr_mult"].get(r, {})]
        if missing:
            raise ValueError(f"--reuse-tuned: {src} has no tuned value for {', '.join(missing)}; ask only its "
                             f"depths and recipes, or replicate without --reuse-tuned to tune them")

    def reused_tuned(self) -> dict:
        """The reused tuned values (--reuse-tuned) of this study's depths and recipes only."""
        tuned = self.tuned_from["tuned"]
        keep = {str(d) for d in self.depths}
        return {**tuned, "scratch_lr_mult": {d: m for d, m in tuned["scratch_lr_mult"].items() if d in keep},
                "inherit_lr_mult": {r: {d: m for d, m in tuned["inherit_lr_mult"][r].items() if d in keep}
                                    for r in self.recipes}}

    def center(self) -> float:
        """The scratch bracket's centre: the given --lr-mult, else the preset's tuned multiplier."""
        return self.train.get("lr_mult") or TRAIN_PRESETS[self.preset]["lr_mult"]

    def ladder(self, name: str | None, depths: list[int], seed: int, out: Path, lr_by_depth: dict,
               inherit_by_depth: dict, scratch_budgets: list | None = None) -> LadderConfig:
        """The LadderConfig of one ladder of the study: scratch alone (name None) or scratch and one recipe."""
        fields_, arms = {}, ["scratch"]
        if name is not None:
            r = recipe(name)
            fields_, arms = r.fields_for(self.train.get("optimizer", "adamw")), ["scratch", r.arm]
            if ARMS[r.arm][1]:  # the penalty's Fisher, post hoc: a rung's runs never depend on what shared its ladder
                fields_["fisher"] = "posthoc"
        return LadderConfig(depths=list(depths), arms=arms, out=str(out), preset=self.preset, ratio=self.ratio,
                            scratch_budgets=list(scratch_budgets or self.scratch_budgets),
                            inherit_budgets=list(self.inherit_budgets), seed=seed,
                            lr_mult_by_depth={d: lr_by_depth[d] for d in depths if d in lr_by_depth},
                            inherit_lr_mult_by_depth=dict(inherit_by_depth), train=dict(self.train), **fields_)


# ---------------------------------------------------------------- running jobs --------------------

def run_jobs(jobs: list[list[LadderConfig]], sc: StudyConfig, env: DistEnv, log) -> list[list[dict]]:
    """Train every job (a list of ladders, in order); return each job's results, one per ladder."""
    if sc.jobs == 1 or env.distributed or len(jobs) == 1:
        return [[run_ladder(lc, env, log=log) for lc in job] for job in jobs]
    threads = max(1, (os.cpu_count() or 1) // sc.jobs)
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited torch thread pools
    with ProcessPoolExecutor(max_workers=sc.jobs, mp_context=ctx, initializer=_worker_init,
                             initargs=(threads,)) as pool:
        return list(pool.map(_run_job, jobs))


def _worker_init(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _run_job(job: list[LadderConfig]) -> list[dict]:
    """One job in a worker process: its runs log one line each, not a progress bar (two bars from two
    processes would garble one terminal); `progress` is not part of a run's identity."""
    env = init_distributed("cpu")
    tag = f"[study pid {os.getpid()}]"
    quiet = [replace(lc, train={**lc.train, "progress": False}) for lc in job]
    return [run_ladder(lc, env, log=lambda *a: print(tag, *a, flush=True)) for lc in quiet]


# ---------------------------------------------------------------- tuning ---------------------------

def tune(sc: StudyConfig, env: DistEnv, log) -> dict:
    """Phase 1 (module docstring): {"scratch": {depth: result}, "grown": {recipe: {depth: result}}},
    each a BracketResult; scratch first (every depth at once), then the grown rungs depth by depth."""
    tune_out = Path(sc.out) / "tune"

    def scratch_point(key, m):
        (_, d) = key
        return [sc.ladder(None, [d], sc.tune_seed, tune_out, {d: m}, {}, scratch_budgets=[1.0])]

    def scratch_objective(key, m, results):
        return full_budget(_rung(results["scratch"], key[1]))["val_loss"]

    searches = {("scratch", d): bracket_search(sc.center(), sc.bracket_points, sc.max_extend, sc.refine)
                for d in sc.depths}
    scratch = _search(searches, scratch_point, scratch_objective, sc, env, log)
    lr = {d: _accept(scratch[("scratch", d)], f"scratch d{d}", sc).best for d in sc.depths}
    grown: dict[str, dict[int, BracketResult]] = {r: {} for r in sc.recipes}
    for d in sc.depths[1:]:
        chain = sc.depths[: sc.depths.index(d) + 1]

        def grown_point(key, m, chain=chain, d=d):
            name = key[0]
            below = {k: grown[name][k].best for k in chain[1:-1]}
            return [sc.ladder(name, chain, sc.tune_seed, tune_out, lr, below | {d: m}, scratch_budgets=[1.0])]

        searches = {(r, d): bracket_search(_recipe_center(r), sc.bracket_points, sc.max_extend, sc.refine)
                    for r in sc.recipes}
        found = _search(searches, grown_point, _grown_objective, sc, env, log)
        for r in sc.recipes:
            grown[r][d] = _accept(found[(r, d)], f"{r} grown d{d}", sc)
    return {"scratch": {d: scratch[("scratch", d)] for d in sc.depths}, "grown": grown}


def _search(searches: dict, point, objective, sc: StudyConfig, env: DistEnv, log) -> dict:
    """Drive bracket searches whose points are ladders: `point(key, m)` -> the job for one multiplier,
    `objective(key, m, results)` -> its value from that job's last ladder's results."""
    def evaluate(pairs):
        jobs = [point(key, m) for key, m in pairs]
        log(f"[study] tuning: {len(jobs)} point(s): " + ", ".join(f"{k[0]} d{k[1]} x{m:g}" for k, m in pairs))
        outs = run_jobs(jobs, sc, env, log)
        return {(key, m): objective(key, m, out[-1]) for (key, m), out in zip(pairs, outs)}

    return drive(searches, evaluate)


def _grown_objective(key, m, results) -> tuple:
    """(0, FLOPs-to-match fraction) when the grown rung matched its scratch twin (or already did at its
    smallest budget: a bound below), else (1, its full-budget loss): any match beats no match."""
    name, d = key
    grown_rung = _rung(next(v for k, v in results.items() if k != "scratch"), d)
    twin = full_budget(_rung(results["scratch"], d))
    curve = [(rung_cost(r), r["val_loss"]) for r in grown_rung["runs"]]
    s = rung_saving(curve, rung_cost(twin), twin["val_loss"], 0.0)
    return (1, full_budget(grown_rung)["val_loss"]) if s["status"] == NOT_REACHED else (0, s["fraction"])


def _recipe_center(name: str) -> float:
    return float(recipe(name).settings.get("inherit_lr_mult", LadderConfig.inherit_lr_mult))


def _accept(res: BracketResult, what: str, sc: StudyConfig) -> BracketResult:
    """A bracket that stayed at its edge stops the study, unless --accept-edge (then it is reported)."""
    if not res.interior and not sc.accept_edge:
        raise ValueError(f"the {what} learning-rate bracket is still at its {res.edge} edge (x{res.best:g} best of "
                         f"{sorted(res.tried)}) after --max-extend {sc.max_extend} steps; rerun with a larger "
                         f"--max-extend, or --accept-edge to go on with x{res.best:g} (the report then says so)")
    return res


def _rung(rungs: list[dict], depth: int) -> dict:
    return next(r for r in rungs if r["depth"] == depth)


# ---------------------------------------------------------------- measuring ------------------------

def _seed_ladders(sc: StudyConfig, tuned: dict, seed: int) -> list[LadderConfig]:
    """One measured seed's ladders at the tuned values, one per recipe, in sc.recipes' order."""
    lr = {int(d): m for d, m in tuned["scratch_lr_mult"].items()}
    return [sc.ladder(r, sc.depths, seed, Path(sc.out) / f"seed{seed}", lr,
                      {int(d): m for d, m in tuned["inherit_lr_mult"][r].items()}) for r in sc.recipes]


def measure(sc: StudyConfig, tuned: dict, env: DistEnv, log) -> dict[int, dict[str, tuple]]:
    """Phase 3: {seed: {recipe: (LadderConfig, results)}}; one job per seed, its recipes in order (the
    first trains the seed's scratch rungs, the others find them finished)."""
    jobs = [_seed_ladders(sc, tuned, s) for s in sc.seeds]
    log(f"[study] measuring seeds {sc.seeds}: scratch and {', '.join(sc.recipes)}")
    outs = run_jobs(jobs, sc, env, log)
    return {s: {r: (lc, res) for r, lc, res in zip(sc.recipes, job, out)} for s, job, out in zip(sc.seeds, jobs, outs)}


def measured_so_far(sc: StudyConfig, tuned: dict, env: DistEnv) -> tuple[dict, dict[int, Path]]:
    """The measured seeds finished so far, read without training or writing (safe beside the running
    study): (measure()'s {seed: {recipe: (LadderConfig, results)}} for every seed whose ladders all
    finished, {seed: its first run not finished} for the others)."""
    done, waiting = {}, {}
    for s in sc.seeds:
        ladders = _seed_ladders(sc, tuned, s)
        try:
            done[s] = {r: (lc, run_ladder(lc, env, log=lambda *a: None, read_only=True))
                       for r, lc in zip(sc.recipes, ladders)}
        except Unfinished as e:
            waiting[s] = e.run
    return done, waiting


def labels(sc: StudyConfig, measured: dict) -> dict[str, str]:
    """Each recipe's arm label in its ladders' results (engine/ladder/run.arm_label)."""
    lcs = next(iter(measured.values()))
    return {r: arm_label(recipe(r).arm, lcs[r][0]) for r in sc.recipes}


def tuned_values(found: dict) -> dict:
    """tune()'s brackets as the protocol's JSON: each tuned multiplier, the brackets that stayed at an
    edge (accepted with --accept-edge), and every point tried with its objective (the appendix)."""
    rows, edges = [], []
    brackets = [("scratch", None, d, res) for d, res in found["scratch"].items()]
    brackets += [("grown", r, d, res) for r, per in found["grown"].items() for d, res in per.items()]
    for phase, name, d, res in brackets:
        if res.edge:
            edges.append(f"{name or 'scratch'} d{d}: best x{res.best:g} at the {res.edge} edge")
        for m, obj in res.tried.items():
            row = {"phase": phase, "recipe": name or "scratch", "depth": d, "lr_mult": m, "chosen": m == res.best}
            if phase == "scratch":
                row["val_loss"] = obj
            else:
                row.update(reached=obj[0] == 0, **({"fraction": obj[1]} if obj[0] == 0 else {"val_loss": obj[1]}))
            rows.append(row)
    return {"scratch_lr_mult": {d: res.best for d, res in found["scratch"].items()},
            "inherit_lr_mult": {r: {d: res.best for d, res in per.items()} for r, per in found["grown"].items()},
            "edges": edges, "tried": rows}
