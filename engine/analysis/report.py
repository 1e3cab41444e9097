"""The miniseries report: summary.json, report.md and plots, from the budget runs' own final.json.

Accounting (method.md section 6; the math is engine/analysis/savings.py):
- a run's cost is its training FLOPs plus the Fisher FLOPs its penalty used plus the penalty's own
  work (engine.analysis.runs.rung_cost); evaluation FLOPs are counted in neither arm;
- each rung has a curve of (cost, cooled final val loss), one point per budget;
- a grown rung's FLOPs-to-match is where its curve reaches its scratch twin's full-budget loss,
  as a fraction of that scratch run's FLOPs; marginal counts the rung's own FLOPs, standalone adds
  the FLOPs of the parent run it grew from; a rung that never reaches it is a bound, never dropped;
- the ladder saving charges the base rung (the budget run the chain grew from) and each grown rung
  its FLOPs-to-match, against the scratch rungs' full budgets;
- the whole-chain saving of rung d charges every rung below it the budget run its child grew from,
  plus rung d's FLOPs-to-match, against scratch d's full budget alone (the top model's answer).
The report's first lines are that answer; the per-arm tables follow.
"""
from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from engine.analysis.report_scaling import core_section, scaling_section
from engine.analysis.runs import full_budget, rung_cost
from engine.analysis.savings import REACHED, Reach, iso_loss, ladder_saving, mean_ci, rung_saving, whole_chain_saving
from engine.train.checkpoint import write_json_atomic
from engine.analysis.profile_report import write_report as write_profile_report


def curve(rung: dict) -> list[tuple[float, float]]:
    """(cost, cooled final val loss) of every budget run of a rung."""
    return [(rung_cost(r), r["val_loss"]) for r in rung["runs"]]


def summarize(lc, results: dict[str, list[dict]]) -> dict:
    scratch = {r["depth"]: r for r in results.get("scratch", [])}
    lo = lc.depths[0]
    arms, grown_from, rungs_out, ladder = {}, {}, {}, {}
    for arm, rungs in results.items():
        arms[arm] = [{"depth": r["depth"], **_run_row(x)} for r in rungs for x in r["runs"]]
        grown_from[arm] = {f"d{r['depth']}": r["grown_from"] for r in rungs if r["grown_from"]}
        if arm == "scratch" or not scratch:
            continue
        per_rung, reaches = {}, []
        for top, r in enumerate(rungs[1:], start=2):
            if r["depth"] in scratch:
                s = per_rung[f"d{r['depth']}"] = _grown_rung_answer(rungs[:top], scratch)
                reaches.append(Reach(s["status"], s["flops_to_match"]))
        rungs_out[arm] = per_rung
        first_grown = next((r for r in rungs if r["depth"] != lo), None)
        if reaches and first_grown is not None:
            base_cost = first_grown["grown_from"]["cost"]
            ladder[arm] = ladder_saving([rung_cost(full_budget(scratch[d])) for d in lc.depths if d in scratch],
                                        base_cost, reaches)
    se = [x.get("val_loss_se") for rungs in results.values() for r in rungs for x in r["runs"] if x.get("val_loss_se")]
    return {"config": asdict(lc), "answer": rungs_out, "ladder": ladder, "arms": arms, "grown_from": grown_from,
            "val_loss_se_max": max(se) if se else None,
            "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def _grown_rung_answer(chain: list[dict], scratch: dict[int, dict]) -> dict:
    """The answer for the grown rung chain[-1], `chain` its arm's rungs from the lowest up to it,
    against its scratch twin in `scratch` (rungs by depth): FLOPs-to-match, marginal, standalone and
    whole-chain savings, the iso-loss table, what it grew from, its growth factor in scaling params
    and its parent depth's scratch full-budget FLOPs (the unit of engine/analysis/transfer.py)."""
    parent, rung = chain[-2], chain[-1]
    scratch_rung = scratch[rung["depth"]]
    twin = full_budget(scratch_rung)
    s = rung_saving(curve(rung), rung_cost(twin), twin["val_loss"], rung["grown_from"]["cost"])
    s["iso_loss"] = iso_loss(curve(rung), curve(scratch_rung))
    s["grown_from"] = rung["grown_from"]
    s["growth_factor"] = rung["runs"][0]["scaling_params"] / parent["runs"][0]["scaling_params"]
    if parent["depth"] in scratch:
        s["parent_scratch_flops"] = rung_cost(full_budget(scratch[parent["depth"]]))
    # each rung below it is charged the run its child actually grew from
    chain_costs = [r["grown_from"]["cost"] for r in chain[1:]]
    s.update(whole_chain_saving(chain_costs, Reach(s["status"], s["flops_to_match"]), rung_cost(twin)))
    return s


def _run_row(r: dict) -> dict:
    keys = ("budget_frac", "steps", "tokens", "scaling_params", "params", "flops", "fisher_flops", "penalty_flops",
            "val_loss", "val_loss_se", "val_bpb", "wall_s", "start_val_loss", "run")
    growth = r.get("growth") or {}
    return {**{k: r.get(k) for k in keys}, "cost": rung_cost(r),
            "growth_max_abs_logit_diff": growth.get("growth_max_abs_logit_diff")}


def _pct(x):
    return "—" if x is None else f"{x:.1%}"


def answer_lines(summary: dict) -> list[str]:
    """The report's first lines: per grown rung, FLOPs-to-match and the savings; the ladder."""
    lines = []
    for arm, per_rung in summary["answer"].items():
        lines += [_rung_line(arm, d, s) for d, s in per_rung.items()]
        lad = summary["ladder"].get(arm)
        if lad:
            kind = "" if lad["kind"] == "exact" else f" ({lad['kind']}: a bound, some rung is known only by a bound)"
            lines.append(f"- **{arm} ladder**: {_pct(lad['saving'])} of the scratch ladder's FLOPs saved{kind} "
                         f"({lad['inherit_flops']:.3e} vs {lad['scratch_flops']:.3e}).")
    se = summary.get("val_loss_se_max")
    if se:
        lines.append(f"- Val-loss noise: the largest standard error of one run's val loss (spread over the fixed "
                     f"strided validation windows) is {se:.4f} nats; arms share the set, so their differences are "
                     f"less noisy than that.")
    return lines or ["- No grown rung with a scratch twin in this ladder: nothing to compare."]


def _rung_line(arm: str, d: str, s: dict) -> str:
    """One grown rung's answer: FLOPs-to-match, marginal, standalone and whole-chain savings."""
    frac = Reach(s["status"], s["fraction"]).describe()
    head = (f"- **{arm} {d}** (growth x{s['growth_factor']:.2f} in scaling params, grown from the parent's budget "
            f"{s['grown_from']['budget_frac']:g} {s['grown_from']['kind']} run): reaches scratch {d}'s full-budget val "
            f"loss {s['target_loss']:.4f} at **{frac}** of scratch's FLOPs")
    kind = s["whole_chain_kind"]
    chain = (f"whole chain (every rung below it charged the run it was grown from) "
             f"{'' if kind == 'exact' else kind + ' '}**{_pct(s['whole_chain_saving'])}**")
    if s["status"] == REACHED:
        return (f"{head}: marginal saving **{_pct(s['marginal_saving'])}**, standalone (parent's FLOPs added) "
                f"**{_pct(s['standalone_saving'])}**, {chain}.")
    return f"{head} ({s['status']}; standalone fraction {s['standalone_fraction']:.3g}; {chain})."


def _plot_curves(results: dict, summary: dict, out: Path) -> list[str]:
    import matplotlib  # imported here: only the plots need it, and it is slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    scratch = {r["depth"]: r for r in results.get("scratch", [])}
    for d, twin in scratch.items():
        grown = {arm: next(r for r in rungs if r["depth"] == d) for arm, rungs in results.items()
                 if arm != "scratch" and f"d{d}" in summary["answer"].get(arm, {})}
        if not grown:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for arm, rung in {"scratch": twin, **grown}.items():
            xs, ys = zip(*sorted(curve(rung)))
            ax.plot(xs, ys, marker="o", ms=4, label=arm)
            s = summary["answer"].get(arm, {}).get(f"d{d}")
            if s and s["status"] == REACHED:
                ax.plot([s["flops_to_match"]], [s["target_loss"]], marker="*", ms=14, color=ax.lines[-1].get_color())
                ax.annotate(f"{s['fraction']:.0%}", (s["flops_to_match"], s["target_loss"]), textcoords="offset points",
                            xytext=(4, 6))
        ax.axhline(full_budget(twin)["val_loss"], color="gray", lw=0.8, ls="--", label="scratch full-budget loss")
        ax.set_xscale("log")
        ax.set_xlabel("FLOPs of the run (training + Fisher + penalty)")
        ax.set_ylabel("cooled final val loss (nats/token)")
        ax.set_title(f"d{d}: cooled loss against compute, one point per budget (star: match point)", fontsize=10)
        # below the axes: a recipe's arm name (engine/ladder/config.py arm_dir_name) can be wider than the plot
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16))
        name = f"curve_d{d}.png"
        fig.savefig(out / name, dpi=120, bbox_inches="tight")
        plt.close(fig)
        made.append(name)
    return made


def _arm_tables(summary: dict) -> list[str]:
    lines = []
    for arm, rows in summary["arms"].items():
        lines += [f"### {arm}", "",
                  "| depth | budget | steps | tokens | FLOPs (Fisher+penalty incl.) | val loss | ± se | "
                  "val bpb | wall s | run |", "|" + "---|" * 10]
        for x in rows:
            lines.append(f"| d{x['depth']} | {x['budget_frac']:g} | {x['steps']} | {x['tokens']:,} | {x['cost']:.3e} | "
                         f"{x['val_loss']:.4f} | {x.get('val_loss_se') or 0:.4f} | {x['val_bpb']:.4f} | "
                         f"{x['wall_s']:.0f} | `{Path(x['run']).name}` |")
        lines.append("")
        for d, g in summary["grown_from"].get(arm, {}).items():
            lines.append(f"- {d} grew from `{g['checkpoint']}` (budget {g['budget_frac']:g}, {g['kind']}; "
                         f"{'reached' if g['reached_target'] else 'did not reach'} its scratch twin; val loss "
                         f"{g['val_loss']:.4f}, FLOPs {g['cost']:.3e}).")
        lines.append("")
    return lines


def _iso_lines(summary: dict) -> list[str]:
    lines = []
    for arm, per_rung in summary["answer"].items():
        for d, s in per_rung.items():
            lines += [f"**{arm} {d}**: FLOPs the inheriting arm needs for each scratch budget's loss", "",
                      "| scratch FLOPs | loss | inheriting FLOPs | speedup |", "|---|---|---|---|"]
            for row in s["iso_loss"]:
                inh = Reach(row["status"], row["inherit_flops"]).describe()
                lines.append(f"| {row['scratch_flops']:.3e} | {row['loss']:.4f} | {inh} | "
                             f"{row['speedup']:.2f}x{'' if row['status'] == REACHED else ' (bound)'} |")
            lines.append("")
    return lines


def _penalty_setup(lc, results: dict[str, list[dict]]) -> str:
    """The setup line's penalty: lambda (a number, or "ewc" with the lambda derived for each grown
    rung, its measured r and token counts), gamma, subspace; the form and early decay when not the defaults."""
    lam = f"{lc.lam:g}" if isinstance(lc.lam, (int, float)) else str(lc.lam)
    derived = sorted({(g["to_depth"], g["ewc"]["lambda"], g["ewc"]["r"], g["ewc"]["parent_tokens"],
                       g["ewc"]["child_tokens"])
                      for rungs in results.values() for rung in rungs for run in rung["runs"]
                      if isinstance(g := run.get("growth"), dict) and "ewc" in g})
    if derived:
        lam += " (" + "; ".join(f"d{d}: {v:.3g} = {p:.3g}/{c:.3g} tokens x r={r:.3g}"
                                for d, v, r, p, c in derived) + ")"
    text = f"lambda={lam}, gamma={lc.gamma:g}, subspace={lc.subspace}"
    if lc.penalty_form != "coupled":
        text += f", {lc.penalty_form} form"
    if lc.penalty_decay_frac > 0:
        text += f", decaying to 0 over the first {lc.penalty_decay_frac:g} of each grown rung"
    return text


def setup_paragraph(lc, results: dict[str, list[dict]], arm_terms: Mapping[str, Sequence[bool]]) -> str:
    """The report's setup: budgets, schedule, the growth recipe, and the method's terms that some
    arm of this ladder uses (`_method_setup`)."""
    return (f"Scratch budget: ratio {lc.ratio:g} tokens per scaling parameter. "
            f"Budgets (fractions of it): scratch {lc.scratch_budgets}, grown rungs {lc.inherit_budgets}; schedule "
            f"{lc.schedule}" + (f" (one stable run per rung, each budget a branch cooled over its last "
                                f"{lc.cooldown_frac:g})" if lc.schedule == "wsd" else " (one run per budget)") +
            f". Growth: {lc.placement} placement, new layers {lc.depth_init}, new channels {lc.width_init}, "
            f"grown-rung peak LR x{lc.inherit_lr_mult:g} of its depth's scratch peak, re-warmup "
            f"{lc.inherit_warmup_frac:g} of the scratch steps, grown from the parent's {lc.grow_from} run, data "
            f"order {lc.data_order}, optimizer state {lc.optimizer_state}, "
            + (f"the parent as a teacher (KL weight {lc.distill:g} decaying to 0 over {lc.distill_frac:g} of the "
               f"scratch steps, its forward passes counted)" if lc.distill else "no teacher")
            + f". {_method_setup(lc, results, arm_terms)}; seed {lc.seed}"
            + "".join(f"; d{d} at peak-LR multiplier x{m:g}" for d, m in sorted(lc.lr_mult_by_depth.items()))
            + "".join(f"; grown d{d} at x{m:g} of its scratch peak"
                      for d, m in sorted(lc.inherit_lr_mult_by_depth.items()))
            + ".")


def _method_setup(lc, results: dict[str, list[dict]], arm_terms: Mapping[str, Sequence[bool]]) -> str:
    """The penalty (with the Fisher it weighs by) and ARS settings, each only when some arm of
    `lc.arms` uses it: a grow-only ladder trains with neither, and printing their defaults would say
    it did. `arm_terms` maps each arm to (grows, penalty, ars): engine.ladder.config.ARMS, passed in
    by the caller because the ladder's layer sits above this one."""
    unknown = [a for a in lc.arms if a not in arm_terms]
    if unknown:
        raise ValueError(f"arm(s) {unknown} of the ladder are not in arm_terms (known: {sorted(arm_terms)})")
    penalty = any(arm_terms[a][1] for a in lc.arms)
    ars = any(arm_terms[a][2] for a in lc.arms)
    parts = ([f"Penalty {_penalty_setup(lc, results)}; Fisher={lc.fisher} over {lc.fisher_batches} batches"]
             if penalty else []) + ([f"ARS={lc.ars}"] if ars else [])
    return "; ".join(parts) if parts else "No arm uses the penalty or ARS"


def write_ladder_report(lc, results: dict[str, list[dict]], core_bundle: str | None = None, *,
                        arm_terms: Mapping[str, Sequence[bool]]) -> Path:
    """summary.json, report.md and the plots of one seed's ladder. `arm_terms`: each arm's
    (grows, penalty, ars), engine.ladder.config.ARMS, so the setup names only the terms in use."""
    out = Path(lc.out)
    summary = summarize(lc, results)
    plots = _plot_curves(results, summary, out)
    summary["plots"] = plots
    flat = {arm: [x for r in rungs for x in r["runs"]] for arm, rungs in results.items()}
    summary["scaling"], scaling_md = scaling_section(lc, flat, lambda arm, d: None)
    core_md = []
    if core_bundle:
        summary["core"], core_md = _core(lc, results, core_bundle)
    write_json_atomic(out / "summary.json", summary)
    profile_md = _profile(out, summary)
    first = next(iter(results.values()))[0]["runs"][0]
    lines = [f"# Miniseries report: {lc.preset}, depths {lc.depths}, arms {', '.join(results)}", "",
             "## The answer", ""] + answer_lines(summary) + [""] + [f"![{p}]({p})" for p in plots] + [""]
    lines += ["## Setup", "", f"Created {summary['created']}. " + setup_paragraph(lc, results, arm_terms), "",
              f"Device: {first.get('device')} ({first.get('device_name', '')}), world size {first.get('world_size')}, "
              f"attention {first.get('attention_backend')}, optimizer kernel {first.get('kernel_backend')}, "
              f"dtype {first.get('dtype')}.", "", "## Iso-loss speedup", ""] + _iso_lines(summary)
    lines += ["## Budget runs", ""] + _arm_tables(summary) + scaling_md + core_md
    if profile_md:
        lines += ["",
                  "Per-stage profile (time, energy, inheritance overhead, cost projections): "
                  f"[{profile_md}]({profile_md})"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out / "report.md"


def _profile(out: Path, summary: dict) -> str | None:
    """The profile report (engine/analysis/profile_report.py) over the miniseries (it reads summary.json, so it
    runs after it is written); the profile is an addition to the report, never a reason to lose it."""
    try:
        summary["profile"] = Path(write_profile_report(out)).name
    except Exception as e:
        summary["profile_error"] = f"{type(e).__name__}: {e}"
    write_json_atomic(out / "summary.json", summary)
    return summary.get("profile")


def _core(lc, results, bundle):
    finals = {arm: [full_budget(r) for r in rungs] for arm, rungs in results.items()}
    runs = {(arm, f["depth"]): Path(f["run"]) for arm, fs in finals.items() for f in fs}
    return core_section(lc, finals, lambda arm, d: runs[(arm, d)], bundle)


# the per-rung numbers averaged over seeds
SEED_KEYS = ("fraction", "marginal_saving", "standalone_saving", "whole_chain_saving")


def write_multiseed_summary(out: Path, configs) -> Path:
    """Mean and a Student-t interval over seeds of every saving; a rung that is a bound in any seed
    is reported as such (its interval would be meaningless)."""
    per_seed = [json.loads((Path(lc.out) / "summary.json").read_text()) for lc in configs]
    agg: dict = {"seeds": [lc.seed for lc in configs], "rungs": {}, "ladder": {},
                 "per_seed": [str(Path(lc.out) / "summary.json") for lc in configs]}
    for arm, per_rung in per_seed[0]["answer"].items():
        for d in per_rung:
            ss = [s["answer"][arm][d] for s in per_seed]
            exact = all(s["status"] == REACHED for s in ss)
            agg["rungs"][f"{arm} {d}"] = {
                "statuses": [s["status"] for s in ss], "all_reached": exact,
                **{k: mean_ci([s[k] for s in ss]) for k in SEED_KEYS},
                "values": {k: [s[k] for s in ss] for k in SEED_KEYS}}
        lads = [s["ladder"][arm] for s in per_seed if arm in s["ladder"]]
        if lads:
            agg["ladder"][arm] = {"kinds": [lad["kind"] for lad in lads], **mean_ci([lad["saving"] for lad in lads]),
                                  "values": [lad["saving"] for lad in lads]}
    write_json_atomic(out / "summary.json", agg)
    lines = [f"# Miniseries over seeds {agg['seeds']}", "",
             "## The answer (mean and 95% Student-t interval over seeds)", ""]
    for key, r in agg["rungs"].items():
        f, m, st, wc = (r[k] for k in SEED_KEYS)
        note = "" if r["all_reached"] else f" — in some seed only a bound ({', '.join(r['statuses'])})"
        lines.append(f"- **{key}**: FLOPs-to-match {_ci(f)} of scratch; marginal saving {_ci(m, pct=True)}, "
                     f"standalone {_ci(st, pct=True)}, whole chain {_ci(wc, pct=True)}{note}. Per seed: "
                     + ", ".join(f"{v:.3f}" for v in r["values"]["fraction"]) + ".")
    for arm, ladder in agg["ladder"].items():
        lines.append(f"- **{arm} ladder**: saving {_ci(ladder, pct=True)} (per seed "
                     f"{', '.join(_pct(v) for v in ladder['values'])}; {', '.join(ladder['kinds'])}).")
    lines += ["", f"Method: {next(iter(agg['rungs'].values()))['fraction']['method'] if agg['rungs'] else '—'}. "
              "Per-seed reports: " + ", ".join(f"[{Path(p).parent.name}]({Path(p).parent.name}/report.md)"
                                              for p in agg["per_seed"]), ""]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out / "summary.json"


def _ci(c: dict, pct: bool = False) -> str:
    fmt = _pct if pct else (lambda x: f"{x:.3f}")
    if c["lo"] is None:
        return fmt(c["mean"])
    return f"{fmt(c['mean'])} [{fmt(c['lo'])}, {fmt(c['hi'])}]"
