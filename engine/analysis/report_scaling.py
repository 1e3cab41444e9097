"""The miniseries report's scaling-law and CORE sections (engine/analysis/report.py calls these).

`scaling_section(lc, results, run_dir_of)`: per arm, the Chinchilla law L(N, D) = E + A/N^alpha +
B/D^beta (engine.analysis.scaling.fit_chinchilla, approach 3), fitted side by side for the scratch arm and
every inheriting arm, and a plain sentence on whether inheritance changes the exponents or the
compute-optimal tokens-per-parameter ratio.

Points (N = the rung's scaling params, D = tokens, L = val loss), two variants per arm:
- "final": one point per rung, its final val loss after its whole budget. This is the proper
  input of approach 3, but a miniseries has only a few rungs, and the fit needs >= 5 distinct
  (N, D) points; with fewer the section says "not enough points" and why.
- "intermediate" (weaker, clearly labelled): every evaluation along every rung (metrics.jsonl
  lines with val_loss and tokens > 0), i.e. (N, tokens seen so far, val loss). It has enough
  points even for 2-3 rungs, but the points are NOT separate runs: each sits inside one LR schedule
  (warmup, then warmdown), so an early point's loss is not the loss a run with that budget would
  reach (its LR never decayed), and a rung's points are correlated. The bootstrap resamples points,
  not rungs, so its intervals are too narrow for this variant.

Token accounting for inheriting arms (a decision, stated in the report text): D is the rung's
OWN training tokens, the tokens this rung's training paid for (honest about cost: the law then
says what loss an arm gets for what it spends on that rung, the quantity the ladder comparison is
about). The weights of a grown rung have also seen the tokens of every rung it inherited from,
so a second variant, "intermediate_cumulative" (inheriting arms only), uses own tokens + the tokens
of the lower rungs of the same arm (the shared base rung included): the information-theoretic
count. The two bracket the truth; exponents that differ between them are an artefact of the
accounting, not of the method. For the scratch arm both counts are the same.

Comparability: every fit reports its compute-optimal ratio D_opt/N_opt at ONE compute C for all
arms, the largest 6 N D over every arm's final points (own tokens), so the ratios in a row are
read at the same C.

`core_section(lc, results, run_dir_of, bundle_dir, device)`: CORE (engine.analysis.core_eval) of every
rung's final weights, per arm; the shared base rung is evaluated once.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from engine.analysis.core_eval import evaluate_core
from engine.analysis.scaling import fit_chinchilla
from engine.data import prepare_data
from engine.train.checkpoint import load_run_model
from models.config import model_config


N_BOOTSTRAP = 50  # small: the section must fit in seconds on a busy 2-core CPU
N_REFINE = 16  # L-BFGS starts from the best 16 of the paper's 4,500-point grid (fit_chinchilla: 64)
BOOTSTRAP_REFITS_BUDGET = 250  # bootstrap refits over all fits of the section (~0.05 s each, busy CPU)
MIN_DISTINCT = 5  # fit_chinchilla's own minimum
MIN_SIZES = 3  # distinct model sizes (rungs) before alpha means anything
PARAMS = ("E", "A", "alpha", "B", "beta", "ratio_opt")
VARIANTS = {
    "final": "cooled budget runs (one point per finished run, own tokens)",
}
# A fit is reported as failed, never as a result, when it is degenerate: an exponent that is not
# positive or implausibly large (the data cannot separate the terms), or an irreducible loss E
# that collapsed to ~0 (the optimiser ran into the edge of the log-parametrised space).
EXPONENT_RANGE = (0.01, 3.0)
MIN_E = 1e-3


def fit_failure(fit: dict) -> str | None:
    """Why a fit cannot be read as a result, or None."""
    bad = [f"{k}={fit[k]:.3g}" for k in ("alpha", "beta") if not EXPONENT_RANGE[0] < fit[k] < EXPONENT_RANGE[1]]
    if fit["E"] < MIN_E:
        bad.append(f"E={fit['E']:.3g}")
    return (f"degenerate fit ({', '.join(bad)}; exponents must lie in {EXPONENT_RANGE} and E >= {MIN_E})"
            if bad else None)


def _is_inheriting(arm: str) -> bool:
    return arm != "scratch"


def arm_points(results: dict, run_dir_of: Callable[[str, int], Path] | None, arm: str,
               variant: str = "final") -> list[tuple[float, float, float, int]]:
    """(N, D, L, depth): one point per finished run of the arm (each a cooled budget run)."""
    if variant != "final":
        raise ValueError(f"unknown variant {variant!r}; only finished runs are fit points")
    return [(float(r["scaling_params"]), float(r["tokens"]), float(r["val_loss"]), int(r["depth"]))
            for r in sorted(results[arm], key=lambda r: (r["depth"], r["tokens"]))]


def _fit(pts, compute: float | None, n_bootstrap: int, seed: int) -> dict:
    distinct = {(n, d) for n, d, _, _ in pts}
    depths = sorted({p[3] for p in pts})
    base = {"n_points": len(pts), "n_distinct": len(distinct), "depths": depths}
    if len(distinct) < MIN_DISTINCT:
        return {**base, "error": f"{len(distinct)} distinct (N, D) points (rungs "
                                 f"{', '.join(f'd{d}' for d in depths) or 'none'}); the fit needs at least "
                                 f"{MIN_DISTINCT}"}
    sizes = len({p[0] for p in pts})
    if sizes < MIN_SIZES:  # through two sizes any exponent fits: alpha would be a line through two points
        return {**base, "error": f"{sizes} model size(s) N; the N term needs at least {MIN_SIZES}"}
    N, D, L = (np.array([p[i] for p in pts]) for i in range(3))
    t0 = time.time()
    try:
        # bootstrap refits start from the full-data optimum only (n_refine_bootstrap=0): resamples of
        # the same points rarely move the optimum far, and it keeps a section within seconds
        fit = fit_chinchilla(N, D, L, n_bootstrap=n_bootstrap, seed=seed, compute=compute, n_refine=N_REFINE,
                             n_refine_bootstrap=0)
    except Exception as e:  # the report must never be lost to a fit
        return {**base, "error": str(e) if isinstance(e, ValueError) else f"fit failed: {type(e).__name__}: {e}"}
    fit.update(depths=depths, fit_s=time.time() - t0)
    failure = fit_failure(fit)
    return {**base, "error": failure,
            "rejected_fit": {k: fit[k] for k in ("E", "A", "alpha", "B", "beta")}} if failure else fit


def scaling_section(lc, results: dict[str, list[dict]], run_dir_of: Callable[[str, int], Path], *,
                    n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> tuple[dict, list[str]]:
    """Fits per arm and variant, and markdown lines. Returns ({arm: {variant: fit or {"error": reason}}},
    lines). Each fit is engine.analysis.scaling.fit_chinchilla's dict (E, A, B, alpha, beta, ratio_opt at
    ratio_opt_compute, ci, ...) plus `depths`; a failed one is {"error", n_points, n_distinct, depths}."""
    finals = [(float(r["scaling_params"]), float(r["tokens"])) for rungs in results.values() for r in rungs]
    compute = max((6.0 * n * d for n, d in finals), default=None) or None
    plan = {arm: ["final"] for arm in results}
    n_fits = sum(len(v) for v in plan.values())
    # many arms: fewer resamples per fit so the whole section stays within ~20 s on a busy 2-core CPU
    nb = min(n_bootstrap, max(10, BOOTSTRAP_REFITS_BUDGET // max(1, n_fits))) if n_bootstrap > 0 else 0
    out: dict = {}
    for arm, variants in plan.items():
        out[arm] = {v: _fit(arm_points(results, run_dir_of, arm, v), compute, nb, seed) for v in variants}
    return out, scaling_lines(out, compute, nb)


def _cell(fit: dict, k: str) -> str:
    if "error" in fit:
        return "—"
    v = fit.get(k)
    ci = (fit.get("ci") or {}).get(k)

    def fmt(x):
        return f"{x:.3g}"

    s = fmt(v) if v is not None and math.isfinite(v) else "—"
    return s + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "")


def _overlap(a, b) -> bool:
    return a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1]


def compare_sentence(arm: str, fit: dict, ref: dict, variant: str) -> str:
    """One plain sentence: does `arm` change alpha, beta or ratio_opt relative to scratch?"""
    label = VARIANTS[variant]
    if "error" in ref or "error" in fit:
        why = "; ".join(f"{name}: {f['error']}" for name, f in (("scratch", ref), (arm, fit)) if "error" in f)
        return f"- {label}: not enough points to compare {arm} with scratch ({why})."
    parts, changed, unknown = [], [], []
    for k, name in (("alpha", "alpha"), ("beta", "beta"), ("ratio_opt", "the optimal ratio D/N")):
        ca, cb = (ref.get("ci") or {}).get(k), (fit.get("ci") or {}).get(k)
        if ca is None or cb is None:
            verdict = "no intervals"
            unknown.append(name)
        elif _overlap(ca, cb):
            verdict = "intervals overlap"
        else:
            verdict = "intervals do not overlap"
            changed.append(name)
        parts.append(f"{name} from {_cell(ref, k)} to {_cell(fit, k)} ({verdict})")
    head = (f"inheritance changes {', '.join(changed)} beyond the bootstrap intervals" if changed
            else "no change detectable beyond the bootstrap intervals (wide intervals mean the data cannot tell, not "
                 "that nothing changed)" + (f" (no intervals for {', '.join(unknown)})" if unknown else ""))
    return f"- {label}: {arm} vs scratch: {head}; " + "; ".join(parts) + "."


def scaling_lines(out: dict, compute: float | None, n_bootstrap: int) -> list[str]:
    arms = list(out)
    lines = ["## Scaling-law fits", "",
             "L(N, D) = E + A / N^alpha + B / D^beta fitted per arm (engine/analysis/scaling.py, Chinchilla approach "
             "3; N = scaling params, D = tokens, L = val loss); intervals are bootstrap 2.5-97.5 percentiles over "
             f"{n_bootstrap} resamples of the points. ratio_opt = D_opt / N_opt at C = 6ND = "
             f"{compute:.3e} FLOPs for every arm (the largest final rung's 6ND)." if compute else "No rungs.",
             "",
             "**Token accounting.** D is a rung's *own* training tokens, the tokens that rung paid for, so an "
             "inheriting arm is charged only what it spent. A grown rung's weights have also seen the tokens of the "
             "rungs it inherited from; the `cumulative` variant (inheriting arms only) counts those too. For scratch "
             "both are the same. Every inheriting arm's points include the shared lowest rung (trained from scratch "
             "once for all arms).",
             "",
             "Every point is a finished run with a cooled learning rate (a WSD branch or a separate run), so "
             "each (N, D, L) is a genuine approach-3 point; evaluations inside one schedule are not used. "
             f"A fit whose exponents fall outside {EXPONENT_RANGE} or whose E < {MIN_E} is shown as failed.", ""]
    for v, label in VARIANTS.items():
        have = [a for a in arms if v in out[a]]
        if not have:
            continue
        lines += [f"### {label}", "", "| | " + " | ".join(have) + " |", "|---|" + "---|" * len(have)]
        for k in PARAMS:
            lines.append(f"| {k} | " + " | ".join(_cell(out[a][v], k) for a in have) + " |")
        lines.append("| points (distinct) | " + " | ".join(
            f"{out[a][v].get('n_points', 0)} ({out[a][v].get('n_distinct', 0)})" for a in have) + " |")
        lines.append("| bootstrap refits | " + " | ".join(
            str(out[a][v].get("n_bootstrap", "—")) for a in have) + " |")
        lines.append("| residual rms (log L) | " + " | ".join(
            "—" if "error" in out[a][v] else f"{out[a][v]['residual_rms']:.3g}" for a in have) + " |")
        errs = [f"- {a}: failed: {out[a][v]['error']}" for a in have if "error" in out[a][v]]
        lines += [""] + errs + ([""] if errs else [])
    lines += ["### Does inheritance change the exponents or the optimal ratio?", ""]
    ref = out.get("scratch")
    growers = [a for a in arms if _is_inheriting(a)]
    if ref is None or not growers:
        lines.append("- Needs the scratch arm and at least one inheriting arm; this report has "
                     f"{', '.join(arms) or 'no arms'}.")
    for a in growers if ref is not None else []:
        lines.append(compare_sentence(a, out[a]["final"], ref["final"], "final"))
    lines.append("")
    return lines


# ------------------------------------------------------------------------------------------------
# CORE


CPU_MAX_PER_TASK = 100  # docs/SCALING.md: the full bundle is tens of thousands of forwards per rung on CPU


def core_section(lc, results: dict[str, list[dict]], run_dir_of: Callable[[str, int], Path], bundle_dir,
                 device="auto", *, max_per_task: int | None | str = "auto", tokenizer=None,
                 load_model=None) -> tuple[dict, list[str]]:
    """CORE of every rung's final weights (engine.analysis.core_eval.evaluate_core), per arm.

    Weights: `load_model(run_dir)` (default engine.train.checkpoint.load_run_model: the rung's last
    intact checkpoint, unsharded, on CPU), moved to `device`. Tokenizer: engine.data.prepare_data on
    lc.train's data source / vocab / cache dir (the one the rungs trained with) unless given.
    device "auto": cuda when available, else cpu. max_per_task "auto": every item on CUDA,
    the first CPU_MAX_PER_TASK items per task (nanochat's fixed shuffle) on CPU; the value used is
    stated in the table's text. A rung shared by several arms (the base rung) is evaluated once. Returns
    ({"bundle", "max_per_task", "arms": {arm: {"d<depth>": {"core", "tasks"} or {"error"}}}}, lines)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if max_per_task == "auto":
        max_per_task = None if torch.device(device).type == "cuda" else CPU_MAX_PER_TASK
    if load_model is None:
        load_model = load_run_model
    if tokenizer is None:
        over = {k: lc.train[k] for k in ("vocab_size", "seq_len") if lc.train.get(k) is not None}
        vocab = model_config(lc.preset, lc.depths[0], **over).vocab_size
        tokenizer = prepare_data(lc.train.get("data", "builtin"), vocab, lc.train.get("cache_dir"),
                                 progress=False).tokenizer
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # evaluate_core all-reduces its counts whenever a process group exists, and the report is
        # written by rank 0 alone: calling it here would hang the other ranks' collective.
        msg = ("CORE skipped: the report is written by rank 0 alone while a process group of "
               f"{dist.get_world_size()} ranks exists (evaluate_core would all-reduce); run it single-process")
        return {"bundle": str(bundle_dir), "error": msg}, ["## CORE", "", f"- {msg}.", ""]
    cache: dict = {}
    arms_out: dict = {}
    t0 = time.time()
    for arm, rungs in results.items():
        arms_out[arm] = {}
        for r in sorted(rungs, key=lambda r: r["depth"]):
            run = Path(run_dir_of(arm, r["depth"]))
            key = str(run.resolve())
            if key not in cache:
                try:
                    model = load_model(run).to(device)
                    with torch.no_grad():
                        res = evaluate_core(model, tokenizer, bundle_dir, device=device, max_per_task=max_per_task)
                    cache[key] = {"core": res["core"], "tasks": res["tasks"]}
                    del model
                except Exception as e:  # one rung's failure is reported, the others go on
                    cache[key] = {"error": f"{type(e).__name__}: {e}"}
            arms_out[arm][f"d{r['depth']}"] = cache[key]
    out = {"bundle": str(bundle_dir), "max_per_task": max_per_task, "device": str(device), "eval_s": time.time() - t0,
           "arms": arms_out}
    depths = sorted({int(k[1:]) for a in arms_out.values() for k in a})
    arms = list(arms_out)
    lines = ["## CORE", "",
             "CORE (DCLM in-context tasks, centred accuracy averaged over tasks; engine/analysis/core_eval.py) of "
             f"each rung's final weights, bundle `{bundle_dir}`, "
             + (f"first {max_per_task} items per task (fixed shuffle)" if max_per_task else "all items")
             + ". GPT-2 (124M) scores 0.114; rungs this small are expected near 0, where differences between "
               "arms are mostly noise.", "",
             "| rung | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for d in depths:
        cells = []
        for a in arms:
            e = arms_out[a].get(f"d{d}")
            cells.append("—" if e is None else ("error" if "error" in e else f"{e['core']:.4f}"))
        lines.append(f"| d{d} | " + " | ".join(cells) + " |")
    errs = [f"- {a} d{k[1:]}: {e['error']}" for a in arms for k, e in arms_out[a].items() if "error" in e]
    lines += [""] + errs + ([""] if errs else [])
    return out, lines
