"""ccc d5 of the frozen d5 study, on seed 2101, trained and reported in one session (the eighth, 2026-12-06).

The seventh session's machine, and with it every run of `runs/r3-packages-d5`, was gone at this
session's start (runs/ is git-ignored; each session starts on a fresh machine), and this machine runs
the same steps ~2x slower: the whole study, three arms on two seeds, would be ~8 hours of both cores,
a session 3. Scratch and plain d5 were measured in the seventh session (README.md beside this file), so
this session trains what ccc d5 on seed 2101 needs, its scratch rungs d2..d5 on one core and its ccc
chain d3..d5 on the other, with the study's own configs.

    train SEED RECIPE   the study's ladder of RECIPE for measured SEED (scratch rungs first, then the
                        recipe's grown rungs); the runs are the ones launch/study.py would train (a
                        run's identity is its arm and multipliers), so the study later finds them finished
    scratch SEED        only SEED's scratch rungs (one core)
    grow SEED RECIPE [BUDGETS]
                        only RECIPE's grown rungs of SEED (the other core), waiting for each scratch rung
                        when the chain needs it; with BUDGETS (e.g. 1,0.1,0.2), once the top rung's stable
                        run is finished, only those budget runs of the top rung, so that two processes
                        share its cooldown branches (stop the first grow process before splitting)
    report              the study's report (engine/analysis/study_report.py) of the ccc ladders of both
                        seeds, into this folder; nothing is trained

    OMP_NUM_THREADS=1 .venv/bin/python docs/results/2026-12-06-round3-d5/ccc_d5.py train 2101 copy_continue_carry
    OMP_NUM_THREADS=1 .venv/bin/python docs/results/2026-12-06-round3-d5/ccc_d5.py scratch 2101
    OMP_NUM_THREADS=1 .venv/bin/python docs/results/2026-12-06-round3-d5/ccc_d5.py grow 2101 copy_continue_carry
    .venv/bin/python docs/results/2026-12-06-round3-d5/ccc_d5.py report
(The runs were started as `train_one_ladder.py SEED RECIPE`, this file's first name; same code.)
"""
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from engine.analysis.study_report import write_study_report  # noqa: E402
import engine.ladder.run as run_module  # noqa: E402
from engine.ladder.run import (Unfinished, _scratch_steps, _train_grown_arm, _train_scratch_rungs,  # noqa: E402
                               rung_dir, run_ladder, scratch_rung)
from engine.ladder.study import _seed_ladders, labels  # noqa: E402
from engine.runtime.distributed import init_distributed  # noqa: E402
from launch.study import parse, study_config  # noqa: E402

OUT = "runs/r3-packages-d5"
COMMAND = ("--depths 2:5 --ratio 8 --data packages --recipes plain,copy_continue_carry --tune-seed 2000 "
           "--seeds 2101,2102 --scratch-budgets 0.25,0.5,0.75,1 --inherit-budgets 0.1,0.2,0.35,0.5,0.7,1 "
           "--bracket-points 3 --max-extend 3 --eval-tokens 131072 --ckpt-every 200 --no-progress --jobs 2 "
           f"--out {OUT}").split()
CCC = "copy_continue_carry"


def study():
    """The study's config (from its own command line) and its frozen protocol."""
    p, ns, _ = parse(COMMAND)
    protocol = json.loads((Path(OUT) / "protocol.json").read_text())
    if protocol["status"] != "frozen":
        raise SystemExit(f"{OUT}/protocol.json is {protocol['status']!r}; copy the frozen one from {HERE} first")
    return study_config(p, ns), protocol


def ladder(sc, protocol, seed: int, recipe: str):
    return dict(zip(sc.recipes, _seed_ladders(sc, protocol["tuned"], seed)))[recipe]


def train(seed: int, recipe: str) -> None:
    sc, protocol = study()
    tag = f"[seed {seed} {recipe}]"
    run_ladder(ladder(sc, protocol, seed, recipe), init_distributed("cpu"), log=lambda *a: print(tag, *a, flush=True))
    print(tag, "ladder finished", flush=True)


def train_scratch(seed: int) -> None:
    """Only the scratch rungs of `seed` (the ccc ladder's: the same runs as every recipe's)."""
    sc, protocol = study()
    tag = f"[seed {seed} scratch]"
    lc = ladder(sc, protocol, seed, CCC)
    _train_scratch_rungs(lc, _scratch_steps(lc), init_distributed("cpu"), lambda *a: print(tag, *a, flush=True))
    print(tag, "scratch rungs finished", flush=True)


class ScratchWhenFinished(dict):
    """The grown arm's `twin` lookup: scratch rung d, read once finished; while another process still
    trains it, wait (a grown rung needs its scratch twin's full-budget loss only to choose the budget run
    the next rung grows from)."""

    def __init__(self, lc, steps, env, tag):
        super().__init__()
        self.lc, self.steps, self.env, self.tag = lc, steps, env, tag

    def get(self, d, default=None):
        while True:
            try:
                return scratch_rung(self.lc, d, self.steps, self.env, lambda *a: None, read_only=True)
            except Unfinished as e:
                print(self.tag, f"waiting for scratch d{d}: {e}", flush=True)
                time.sleep(60)


def split_top_branches(lc, arm: str, only: set[float]) -> None:
    """Let two processes share the top rung's budget runs (cooldown branches): this one trains only the
    branches in `only`, leaving the others out of its plan (its results are never read). Allowed once
    the top rung's stable run is finished, so no two processes ever train the same run."""
    top = rung_dir(Path(lc.out), arm, lc.depths[-1], lc)
    if not (top / "stable" / "final.json").exists():
        raise SystemExit(f"{top}/stable is not finished: split the branches only after it")
    every_run = run_module._runs_of

    def runs_of(lc_, plan):
        runs = every_run(lc_, plan)
        return runs if plan.root != top else [(f, run, cfg) for f, run, cfg in runs if f is None or f in only]

    run_module._runs_of = runs_of


def train_grown(seed: int, recipe: str, only: set[float] | None = None) -> None:
    """Only `recipe`'s grown rungs of `seed`, beside a process training the scratch rungs (train_scratch):
    the lowest rung must be finished; each higher scratch rung is waited for when the chain needs it.
    `only`: of the top rung, train only these budget runs (split_top_branches)."""
    sc, protocol = study()
    tag = f"[seed {seed} {recipe} grown{'' if only is None else ' ' + ','.join(map(str, sorted(only)))}]"
    lc = ladder(sc, protocol, seed, recipe)
    steps, env = _scratch_steps(lc), init_distributed("cpu")
    twin = ScratchWhenFinished(lc, steps, env, tag)
    arm = next(a for a in lc.arms if a != "scratch")
    if only is not None:
        split_top_branches(lc, arm, only)
    _train_grown_arm(lc, arm, [twin.get(lc.depths[0])], twin, steps, env, lambda *a: print(tag, *a, flush=True))
    print(tag, "grown rungs finished", flush=True)


def report() -> None:
    """The study's report restricted to ccc and the seeds whose ccc ladder finished (its only recipe, so
    nothing is paired: plain d5's runs are the seventh session's, gone with its machine; the pairing is
    computed in the README from them)."""
    sc, protocol = study()
    env = init_distributed("cpu")
    measured = {}
    for seed in sc.seeds:
        lc = ladder(sc, protocol, seed, CCC)
        try:
            measured[seed] = {CCC: (lc, run_ladder(lc, env, log=lambda *a: None, read_only=True))}
        except Unfinished as e:
            print(f"seed {seed} left out: {e}")
    only = replace(sc, recipes=[CCC], seeds=sorted(measured))
    note = ("ccc only: the seed's scratch rungs and ccc chain, trained in the eighth session on a fresh "
            "machine with the study's configs (ccc_d5.py); plain d5 (seventh session) is not in this report")
    command = ".venv/bin/python docs/results/2026-12-06-round3-d5/ccc_d5.py report"
    path = write_study_report(only, protocol, measured, labels(only, measured), CCC, command, dest=HERE, note=note)
    print(path)


if __name__ == "__main__":
    if sys.argv[1:2] == ["train"] and len(sys.argv) == 4:
        train(int(sys.argv[2]), sys.argv[3])
    elif sys.argv[1:2] == ["scratch"] and len(sys.argv) == 3:
        train_scratch(int(sys.argv[2]))
    elif sys.argv[1:2] == ["grow"] and len(sys.argv) in (4, 5):
        train_grown(int(sys.argv[2]), sys.argv[3], {float(f) for f in sys.argv[4].split(",")} if sys.argv[4:] else None)
    elif sys.argv[1:] == ["report"]:
        report()
    else:
        raise SystemExit(__doc__)
