"""The answer as one command: tune on a seed it never reports, freeze the protocol, measure fresh seeds,
report the saving three ways (per rung, per ladder, per chain). The phases: engine/ladder/study.py.

    python launch/study.py                                    # the CPU default: d2:3, ratio 2, plain vs the best recipe
    python launch/study.py --depths 2:4 --ratio 8 --seeds 1001,1002,1003,1004 --out runs/study-r8
    torchrun --standalone --nproc_per_node=8 launch/study.py --preset nanochat --depths 10:14 --ratio 8 --jobs 1
    python launch/study.py --replicate docs/results/X/protocol.json --data text:MY_CORPUS --seeds 7,8 --out runs/rep
    python launch/study.py --replicate docs/results/X/protocol.json --reuse-tuned --seeds 7,8 --out runs/rep2
    python launch/study.py --status --out runs/study-r8        # how far it has got, while it runs
    python launch/study.py --interim --out runs/study-r8       # the report of the seeds finished so far

--replicate FILE takes every setting of a committed protocol.json as the defaults (any flag given
overrides it, and the new protocol names each setting that changed) and tunes again on its tuning seed;
with --reuse-tuned it takes the file's tuned values instead and tunes nothing (the report says where
they were tuned).

Writes OUT/protocol.json (every setting and tuned value, before any measured run), OUT/report.md,
OUT/summary.json and plots; training runs under OUT/tune/ and OUT/seed<k>/. Rerunning the same command
skips finished runs and resumes an interrupted one; a different setting asked of the same OUT is
refused, by name (a new protocol needs a new --out); more measured seeds may be added later. A study
that spans sessions commits its protocol and, with --interim, the report of the seeds finished so far
(OUT/interim/, trained and written by nothing else).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
try:
    import torch  # noqa: F401  (the one dependency a fresh clone's system python usually lacks)
except ImportError:
    sys.exit("error: torch is not importable by this python; run `make study` (it sets up .venv first) "
             "or `.venv/bin/python launch/study.py` after `make venv`")

from launch.argtypes import fractions, positive_float, positive_int, seed_list  # noqa: E402
from launch.train import add_training_args  # noqa: E402
from engine.analysis.study_report import write_study_report  # noqa: E402
from engine.analysis.study_status import read_study_protocol, study_status  # noqa: E402
from engine.data import prepare_data  # noqa: E402
from engine.ladder.config import TRAIN_SETTINGS  # noqa: E402
from engine.ladder.protocol import (freeze, note_measured, note_replicates, open_protocol,  # noqa: E402
                                    protocol_settings, read_source, tuned_from)
from engine.ladder.recipes import STUDY_DEFAULTS as DEFAULTS, recipe_names  # noqa: E402
from engine.ladder.study import (BASELINE, StudyConfig, labels, measure, measured_so_far, tune,  # noqa: E402
                                 tuned_values)
from engine.runtime.diskspace import storage_guard  # noqa: E402
from engine.runtime.distributed import destroy, init_distributed  # noqa: E402
from engine.runtime.run_lock import run_lock  # noqa: E402
from engine.train.checkpoint import broadcast_object  # noqa: E402
from engine.train.config import USER_ERRORS, TrainConfig  # noqa: E402
from models.config import model_config, parse_depths  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
INTERIM = "interim"  # OUT/interim/: the report of the measured seeds finished so far (--interim)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = DEFAULTS
    p.add_argument("--depths", default=d["depths"], help="LO:HI inclusive or a list (default %(default)s)")
    p.add_argument("--recipes", "--recipe", dest="recipes", default=d["recipes"],
                   help=f"comma list of named recipes (engine/ladder/recipes.py); {BASELINE!r} is added when "
                        f"missing: every recipe is paired against it (default %(default)s)")
    p.add_argument("--ratio", type=positive_float, default=d["ratio"], help="scratch tokens = ratio x scaling params")
    p.add_argument("--scratch-budgets", dest="scratch_budgets", type=fractions, default=d["scratch_budgets"],
                   help="measured scratch rungs' budgets, fractions of ratio x N tokens (default %(default)s)")
    p.add_argument("--inherit-budgets", dest="inherit_budgets", type=fractions, default=d["inherit_budgets"],
                   help="grown rungs' budgets, fractions of their scratch budget (default %(default)s)")
    p.add_argument("--tune-seed", dest="tune_seed", type=int, default=d["tune_seed"],
                   help="the one seed every tuned value is chosen on; never reported (default %(default)s)")
    p.add_argument("--seeds", type=seed_list, default=d["seeds"], help="measured seeds (default %(default)s)")
    p.add_argument("--bracket-points", dest="bracket_points", type=positive_int, default=d["bracket_points"],
                   help="first LR grid of each bracket, odd, factors of 2 apart (default %(default)s)")
    p.add_argument("--max-extend", dest="max_extend", type=int, default=d["max_extend"],
                   help="steps a bracket may extend past an edge before it stops the study (default %(default)s)")
    p.add_argument("--refine", action="store_true", help="one more LR each side of a bracketed best, at half steps")
    p.add_argument("--accept-edge", dest="accept_edge", action="store_true",
                   help="go on with a bracket still at its edge (the report says so) instead of stopping")
    p.add_argument("--jobs", type=positive_int, default=None,
                   help="training processes at once (default: 2 on a CPU with >= 2 cores, 1 under torchrun)")
    p.add_argument("--out", default=d["out"])
    p.add_argument("--replicate", metavar="PROTOCOL_JSON",
                   help="take every setting of this study protocol as the defaults (flags given override them)")
    p.add_argument("--reuse-tuned", dest="reuse_tuned", action="store_true",
                   help="with --replicate: take its tuned values instead of tuning again")
    p.add_argument("--status", action="store_true",
                   help="print how far the study in --out has got (runs finished, runs under way with the time "
                        "they have left) and exit; safe beside a running study")
    p.add_argument("--interim", action="store_true",
                   help=f"write the report of the measured seeds finished so far to OUT/{INTERIM}/ (its settings "
                        "are the frozen protocol's; trains nothing) and exit; safe beside a running study")
    add_training_args(p, rung=False)
    return p


def protocol_argv(settings: dict) -> list[str]:
    """A protocol's settings as this command's flags: put before the user's, which override them."""
    argv = ["--depths", ",".join(map(str, settings["depths"])), "--recipes", ",".join(settings["recipes"])]
    for k in ("tune_seed", "seeds", "preset", "ratio", "scratch_budgets", "inherit_budgets", "bracket_points",
              "max_extend"):
        v = settings[k]
        argv += ["--" + k.replace("_", "-"), ",".join(map(str, v)) if isinstance(v, list) else str(v)]
    argv += [f"--{k.replace('_', '-')}" for k in ("refine", "accept_edge") if settings.get(k)]
    for k, v in settings.get("train", {}).items():
        if k in ("progress", "profile"):  # on by default, each with a --no- flag only
            argv += [] if v else [f"--no-{k}"]
        elif isinstance(v, bool):
            argv.append(f"--{'' if v else 'no-'}{k.replace('_', '-')}")
        else:
            argv += ["--" + k.replace("_", "-"), str(v)]
    return argv


def parse(argv: list[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace, dict | None]:
    """The parser, its namespace and the --replicate source protocol (None without one); with one, the
    source's settings are parsed first, so each flag given overrides its value."""
    p = build_parser()
    ns = p.parse_args(argv)
    if ns.reuse_tuned and not ns.replicate:
        p.error("--reuse-tuned takes the tuned values of the protocol given by --replicate FILE; give one")
    if not ns.replicate:
        return p, ns, None
    try:
        source = read_source(ns.replicate)
        ns = p.parse_args(protocol_argv(source["settings"]) + argv)
        if ns.reuse_tuned:
            ns.tuned_from = tuned_from(source, ns.replicate)
    except ValueError as e:
        p.error(str(e))
    return p, ns, source


def study_config(p: argparse.ArgumentParser, ns) -> StudyConfig:
    """The validated StudyConfig, or one sentence naming the bad value (argparse's exit 2)."""
    if ns.seed != TrainConfig.seed:
        p.error("--seed: a study's seeds are --tune-seed (tuning, never reported) and --seeds (measured)")
    if ns.lr_mult is not None:  # a ladder's per-rung spec; a study tunes each rung around one centre
        try:
            ns.lr_mult = positive_float(ns.lr_mult)
        except argparse.ArgumentTypeError as e:
            p.error(f"--lr-mult is the scratch brackets' centre in a study, one multiplier: {e}")
    try:
        names = recipe_names(ns.recipes)
        names = names if BASELINE in names else [BASELINE, *names]
        jobs = ns.jobs or (2 if (os.cpu_count() or 1) >= 2 and "WORLD_SIZE" not in os.environ else 1)
        sc = StudyConfig(depths=parse_depths(ns.depths), recipes=names, out=ns.out, tune_seed=ns.tune_seed,
                         seeds=ns.seeds, preset=ns.preset, ratio=ns.ratio, scratch_budgets=ns.scratch_budgets,
                         inherit_budgets=ns.inherit_budgets, bracket_points=ns.bracket_points,
                         max_extend=ns.max_extend, refine=ns.refine, accept_edge=ns.accept_edge, jobs=jobs,
                         train={k: v for k, v in vars(ns).items() if k in TRAIN_SETTINGS and v is not None},
                         tuned_from=getattr(ns, "tuned_from", None))
        sc.validate()
    except ValueError as e:
        p.error(str(e))
    return sc


def corpus_key(sc: StudyConfig) -> dict:
    """The corpus by its content: the token cache's key (a hash of the source's bytes and of every
    setting that changes the tokens), its tokenizer and token counts."""
    vocab = sc.train.get("vocab_size") or model_config(sc.preset, sc.depths[0]).vocab_size
    bundle = prepare_data(sc.train.get("data", TrainConfig.data), vocab, sc.train.get("cache_dir"))
    m = bundle.manifest
    return {"data": sc.train.get("data", TrainConfig.data), "cache_key": bundle.directory.name,
            "tokenizer_hash": m.get("tokenizer_hash"), "tokens": m.get("tokens")}


def commit() -> str:
    """The code's commit, '+dirty' when the work tree has changes (recorded in the protocol)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    sha = git("rev-parse", "--short", "HEAD") or "unknown"
    return sha + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def run_study(sc: StudyConfig, env, command: str, log=print, source: dict | None = None,
              replicate: str | None = None) -> Path | None:
    """The four phases; returns the report's path (on the main rank). `source`: the protocol read from
    --replicate's file `replicate`."""
    out = Path(sc.out)
    protocol = open_protocol(out, protocol_settings(sc, corpus_key(sc)), commit()) if env.is_main else None
    if env.is_main and source is not None:
        protocol = note_replicates(out, protocol, source, replicate)
        log(f"[study] replicating {replicate}; changed: {', '.join(protocol['replicates']['changed']) or 'nothing'}")
    protocol = _shared(protocol, env)
    if protocol["status"] != "frozen":
        if sc.tuned_from:
            log(f"[study] tuned values taken from {sc.tuned_from['file']} (--reuse-tuned); nothing tuned here")
            tuned = sc.reused_tuned()
        else:
            log("[study] tuning on seed", sc.tune_seed, "(never reported)")
            tuned = tuned_values(tune(sc, env, log))
        protocol = freeze(out, protocol, tuned, commit()) if env.is_main else None
        protocol = _shared(protocol, env)
        log(f"[study] protocol frozen: {out / 'protocol.json'}")
    measured = measure(sc, protocol["tuned"], env, log)
    if not env.is_main:
        return None
    protocol = note_measured(out, protocol, commit())
    return write_study_report(sc, protocol, measured, labels(sc, measured), BASELINE, command)


def seeds_so_far(out: str, protocol: dict) -> tuple[StudyConfig, dict, dict]:
    """The frozen study in `out` (its `protocol`) read without training: (its StudyConfig, measure()'s
    results for every measured seed whose ladders all finished, {seed: its first run not finished})."""
    p, ns, _ = parse(protocol_argv(protocol["settings"]) + ["--out", out])
    ns.tuned_from = protocol["settings"].get("tuned_from")
    sc = study_config(p, ns)
    return sc, *measured_so_far(sc, protocol["tuned"], init_distributed("cpu"))


def interim_report(out: str) -> Path:
    """--interim: the study's report over the measured seeds whose ladders all finished, written to
    OUT/interim/ and said so in its first line; settings and tuned values from OUT/protocol.json. Trains
    and changes nothing of the study (the final report, OUT/report.md, covers every seed)."""
    protocol = read_study_protocol(out)
    if protocol["status"] != "frozen":
        raise ValueError(f"the study in {out} is still {protocol['status']}: its protocol is not frozen, so no "
                         "measured seed has run yet (--status shows where it is)")
    sc, done, waiting = seeds_so_far(out, protocol)
    if not done:
        raise ValueError(f"no measured seed of {out} has finished yet (seed {sc.seeds[0]} is at "
                         f"{waiting[sc.seeds[0]]})")
    said = ", ".join(f"{s} (at {run.relative_to(out)})" for s, run in waiting.items()) or "none"
    note = (f"Interim report: {len(done)} of {len(sc.seeds)} measured seeds finished (seeds "
            f"{', '.join(map(str, done))}); still to finish: {said}. The study's own report replaces it.")
    return write_study_report(replace(sc, seeds=list(done)), protocol, done, labels(sc, done), BASELINE,
                              f"python launch/study.py --interim --out {out}", dest=Path(out) / INTERIM, note=note)


def status_lines(out: str) -> list[str]:
    """--status: study_status's lines, and for a frozen study which measured seeds have finished (the ones
    --interim would report)."""
    lines = study_status(out)  # refuses a directory without a study
    protocol = read_study_protocol(out)
    if protocol["status"] != "frozen":  # no measured seed yet
        return lines
    _, done, _ = seeds_so_far(out, protocol)
    if done:
        lines.append(f"measured seeds finished: {', '.join(map(str, done))} (`--interim --out {out}` reports them)")
    return lines


def _shared(obj, env):
    """The main rank's `obj` on every rank (the protocol: written by rank 0, read by all)."""
    return broadcast_object(obj, env) if env.distributed else obj


def main(argv=None):
    p, ns, source = parse(sys.argv[1:] if argv is None else list(argv))
    if ns.status or ns.interim:
        try:
            if ns.status:
                print("\n".join(status_lines(ns.out)))
            else:
                print(f"[study] interim report: {interim_report(ns.out)}")
        except ValueError as e:
            sys.exit(f"error: {e}")
        return
    sc = study_config(p, ns)
    env = init_distributed(ns.device)
    try:
        with run_lock(sc.out, env), storage_guard(sc.out):
            command = " ".join(["python", "launch/study.py", *(sys.argv[1:] if argv is None else argv)])
            path = run_study(sc, env, command, log=print if env.is_main else (lambda *a: None), source=source,
                             replicate=ns.replicate)
            if path is not None:
                print(f"[study] report: {path}\n")
                print("\n".join(path.read_text().splitlines()[:30]))
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")
    finally:
        destroy(env)


if __name__ == "__main__":
    main()
