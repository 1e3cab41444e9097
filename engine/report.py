"""The miniseries report: summary.json, report.md and plots, computed from the rungs' own files.

Accounting (method.md section 6):
- a rung's cost is its training FLOPs plus the Fisher FLOPs its penalty used plus the penalty's
  own work; evaluation FLOPs are counted in neither arm;
- FLOPs to match: the FLOPs (Fisher included) at which an inherited rung's val-loss curve first
  reaches its scratch twin's final val loss, linearly interpolated between evaluations; null when
  it never does, and then the report says so in a sentence;
- ladder saving at matched quality: 1 - inherit_total / scratch_total over the shared lowest rung
  and the rungs that matched, each at what it actually spent; unmatched rungs are listed.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from engine.checkpoint import write_json_atomic


def read_metrics(run: Path) -> list[dict]:
    path = Path(run) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def rung_cost(final: dict) -> float:
    return final["flops"] + final.get("fisher_flops", 0.0) + final.get("penalty_flops", 0.0)


def eval_curve(run: Path, offset: float = 0.0) -> list[tuple[float, float]]:
    """(FLOPs, val_loss) at every evaluation of a rung, step 0 included."""
    return [(offset + m["flops"], m["val_loss"]) for m in read_metrics(run) if "val_loss" in m]


def flops_to_match(curve: list[tuple[float, float]], target: float) -> float | None:
    """First FLOPs at which the curve reaches `target` (linear interpolation), else None."""
    for i, (f, l) in enumerate(curve):
        if l <= target:
            if i == 0:
                return f
            f0, l0 = curve[i - 1]
            return f0 + (f - f0) * (l0 - target) / (l0 - l) if l0 != l else f
    return None


def _run_dir(lc, arm: str, depth: int) -> Path:
    from engine.ladder import rung_dir

    return rung_dir(Path(lc.out), arm, depth, lc)


def summarize(lc, results: dict[str, list[dict]]) -> dict:
    scratch = {r["depth"]: r for r in results.get("scratch", [])}
    lo = lc.depths[0]
    arms, ladder, sentences = {}, {}, []
    for arm, rungs in results.items():
        rows = []
        for r in rungs:
            row = {k: r.get(k) for k in ("depth", "params", "scaling_params", "tokens", "flops", "fisher_flops",
                                         "penalty_flops", "val_loss", "val_bpb", "wall_s", "start_val_loss", "steps")}
            if arm != "scratch":
                g = r.get("growth") or {}
                row["growth_max_abs_logit_diff"] = g.get("growth_max_abs_logit_diff")
                row["flops_to_match_scratch"] = None
                if r["depth"] == lo:
                    row["shared_base_rung"] = True
                elif r["depth"] in scratch:
                    curve = eval_curve(_run_dir(lc, arm, r["depth"]), r.get("fisher_flops", 0.0))
                    ftm = flops_to_match(curve, scratch[r["depth"]]["val_loss"])
                    row["flops_to_match_scratch"] = ftm
                    row["flops_to_match_fraction"] = ftm / scratch[r["depth"]]["flops"] if ftm is not None else None
                    if ftm is None:
                        sentences.append(
                            f"{arm} d{r['depth']}: did not reach its scratch twin's val loss "
                            f"({r['val_loss']:.4f} vs {scratch[r['depth']]['val_loss']:.4f}) within its budget "
                            f"({lc.inherit_fraction:g} x the scratch tokens).")
            rows.append(row)
        arms[arm] = rows
    for arm, rows in arms.items():
        total = sum(rung_cost(r) for r in results[arm])
        entry = {"flops": total, "wall_s": sum(r["wall_s"] for r in results[arm]), "rungs": len(rows)}
        if arm != "scratch" and scratch:
            grown = [r for r in rows if r["depth"] != lo and r["depth"] in scratch]
            matched = [r for r in grown if r["flops_to_match_scratch"] is not None]
            base = rung_cost(scratch[lo]) if lo in scratch else 0.0
            spent = {r["depth"]: rung_cost(f) for r, f in zip(rows, results[arm])}
            inh_total = base + sum(spent[r["depth"]] for r in matched)
            scr_total = base + sum(rung_cost(scratch[r["depth"]]) for r in matched)
            entry.update({
                "rungs_matched": len(matched), "rungs_compared": len(grown),
                "unmatched_depths": [r["depth"] for r in grown if r["flops_to_match_scratch"] is None],
                "flops_saving_vs_scratch": (1 - inh_total / scr_total) if matched else None,
                "flops_saving_if_stopped_at_match": (
                    1 - (base + sum(r["flops_to_match_scratch"] for r in matched)) / scr_total) if matched else None,
                "total_spend_vs_scratch": total / sum(rung_cost(r) for r in results["scratch"]),
                "wall_saving_vs_scratch": 1 - entry["wall_s"] / sum(r["wall_s"] for r in results["scratch"]),
            })
        elif arm == "scratch":
            entry.update({"rungs_matched": len(rows), "flops_saving_vs_scratch": 0.0})
        ladder[arm] = entry
    return {"config": asdict(lc), "arms": arms, "ladder": ladder, "not_matched": sentences,
            "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def _fmt(x, spec=".4f"):
    if x is None:
        return "—"
    if isinstance(x, float) and (abs(x) >= 1e5 or (0 < abs(x) < 1e-3)):
        return f"{x:.3e}"
    return format(x, spec) if isinstance(x, float) else str(x)


def _plots(lc, results, summary, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    colors = {"scratch": "tab:blue", "inherit": "tab:red", "inherit-nopenalty": "tab:orange",
              "inherit-noars": "tab:green", "grow-only": "tab:purple"}
    # 1. val loss vs cumulative FLOPs
    fig, ax = plt.subplots(figsize=(8, 5))
    for arm, rungs in results.items():
        offset = 0.0
        for i, r in enumerate(rungs):
            run = _run_dir(lc, arm, r["depth"])
            curve = eval_curve(run, offset + r.get("fisher_flops", 0.0))
            if curve:
                xs, ys = zip(*curve)
                ax.plot(xs, ys, color=colors.get(arm), label=arm if i == 0 else None, marker=".", ms=3, lw=1)
                ax.annotate(f"d{r['depth']}", (xs[-1], ys[-1]), fontsize=7, color=colors.get(arm))
            offset += rung_cost(r)
    ax.set_xlabel("cumulative training FLOPs of the arm (Fisher included)")
    ax.set_ylabel("val loss (nats/token)")
    ax.set_xscale("log")
    ax.set_title("val loss against cumulative FLOPs, every arm and rung")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "val_loss_vs_flops.png", dpi=120)
    plt.close(fig)
    made.append("val_loss_vs_flops.png")
    # 2. final val loss vs scaling params
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, rows in summary["arms"].items():
        ax.plot([r["scaling_params"] for r in rows], [r["val_loss"] for r in rows], marker="o", label=arm, color=colors.get(arm))
    ax.set_xscale("log")
    ax.set_xlabel("scaling params N")
    ax.set_ylabel("final val loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss_vs_params.png", dpi=120)
    plt.close(fig)
    made.append("loss_vs_params.png")
    # 3. ARS factor and penalty over steps (inheriting arms)
    growers = [a for a in results if a != "scratch"]
    if growers:
        fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 6), sharex=False)
        for arm in growers:
            for r in results[arm][1:]:
                m = [x for x in read_metrics(_run_dir(lc, arm, r["depth"])) if "loss" in x]
                a1.plot([x["step"] for x in m], [x.get("ars", 1.0) for x in m], lw=0.8, label=f"{arm} d{r['depth']}")
                if any("penalty" in x for x in m):
                    a2.plot([x["step"] for x in m], [x.get("penalty", math.nan) for x in m], lw=0.8, label=f"{arm} d{r['depth']}")
        a1.set_ylabel("ARS factor d_t")
        a2.set_ylabel("penalty Phi")
        a2.set_xlabel("step within the rung")
        a1.legend(fontsize=7)
        if a2.lines:
            a2.set_yscale("log")
            a2.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "ars_penalty.png", dpi=120)
        plt.close(fig)
        made.append("ars_penalty.png")
    return made


def write_ladder_report(lc, results: dict[str, list[dict]], core_bundle: str | None = None) -> Path:
    out = Path(lc.out)
    summary = summarize(lc, results)
    plots = _plots(lc, results, summary, out)
    summary["plots"] = plots
    from engine.report_scaling import core_section, scaling_section

    run_dir_of = lambda arm, d: _run_dir(lc, arm, d)
    summary["scaling"], scaling_md = scaling_section(lc, results, run_dir_of)
    summary["core"], core_md = core_section(lc, results, run_dir_of, core_bundle) if core_bundle else (None, [])
    profile_md = None
    try:
        from profiling.report import write_report

        profile_md = write_report(out)
        summary["profile"] = str(Path(profile_md).name)
    except Exception as e:  # the profile is an addition to the report, never a reason to lose it
        summary["profile_error"] = f"{type(e).__name__}: {e}"
    write_json_atomic(out / "summary.json", summary)
    lines = [f"# Miniseries report: {lc.preset}, depths {lc.depths}, arms {', '.join(results)}", "",
             f"Created {summary['created']}. Ratio {lc.ratio:g} tokens per scaling parameter for scratch rungs; "
             f"inherited rungs train {lc.inherit_fraction:g} x that budget. Penalty lambda={lc.lam:g}, gamma={lc.gamma:g}, "
             f"subspace={lc.subspace}, schedule={lc.penalty_schedule}; ARS={lc.ars}; Fisher={lc.fisher} "
             f"over {lc.fisher_batches} batches; placement={lc.placement}; seed {lc.seed}.", ""]
    first = next(iter(results.values()))[0]
    lines += [f"Device: {first.get('device')} ({first.get('device_name', '')}), world size {first.get('world_size')}, "
              f"attention {first.get('attention_backend')}, optimizer kernel {first.get('kernel_backend')}, "
              f"dtype {first.get('dtype')}.", ""]
    lines += ["## Ladder totals", "", "| arm | FLOPs | wall s | rungs matched | FLOPs saving at matched quality | "
              "saving if stopped at match | total spend vs scratch |", "|---|---|---|---|---|---|---|"]
    for arm, e in summary["ladder"].items():
        lines.append(f"| {arm} | {e['flops']:.3e} | {e['wall_s']:.0f} | {e.get('rungs_matched', '—')}"
                     f"{'/' + str(e['rungs_compared']) if 'rungs_compared' in e else ''} | "
                     f"{_pct(e.get('flops_saving_vs_scratch'))} | {_pct(e.get('flops_saving_if_stopped_at_match'))} | "
                     f"{_fmt(e.get('total_spend_vs_scratch'), '.3f')} |")
    lines += ["", "## Rungs", ""]
    for arm, rows in summary["arms"].items():
        lines += [f"### {arm}", "", "| depth | params | N | tokens | FLOPs (Fisher incl.) | wall s | val loss | val bpb | "
                  "val loss after growth | growth logit error | FLOPs to match scratch |", "|" + "---|" * 11]
        for r in rows:
            cost = (r["flops"] or 0) + (r.get("fisher_flops") or 0) + (r.get("penalty_flops") or 0)
            ftm = r.get("flops_to_match_scratch")
            ftm_s = "shared base rung" if r.get("shared_base_rung") else (
                "—" if arm == "scratch" else ("never" if ftm is None else f"{ftm:.3e} ({r['flops_to_match_fraction']:.0%})"))
            lines.append(f"| d{r['depth']} | {r['params']:,} | {r['scaling_params']:,} | {r['tokens']:,} | {cost:.3e} | "
                         f"{r['wall_s']:.0f} | {r['val_loss']:.4f} | {r['val_bpb']:.4f} | "
                         f"{_fmt(r.get('start_val_loss')) if arm != 'scratch' and not r.get('shared_base_rung') else '—'} | "
                         f"{_fmt(r.get('growth_max_abs_logit_diff'), '.2e')} | {ftm_s} |")
        lines.append("")
    lines += ["## Rungs that did not match", ""]
    lines += [f"- {s}" for s in summary["not_matched"]] or ["- none: every inherited rung reached its scratch twin's val loss."]
    lines += [""] + scaling_md + core_md
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    if profile_md:
        lines += ["", f"Per-stage profile: [{Path(profile_md).name}]({Path(profile_md).name})"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out / "report.md"


def _pct(x):
    return "—" if x is None else f"{x:+.1%}"


def write_multiseed_summary(out: Path, configs) -> Path:
    """Mean and spread of the ladder numbers over seeds."""
    per_seed = [json.loads((Path(lc.out) / "summary.json").read_text()) for lc in configs]
    agg = {}
    for arm in per_seed[0]["ladder"]:
        vals = [s["ladder"][arm].get("flops_saving_vs_scratch") for s in per_seed]
        vals = [v for v in vals if v is not None]
        finals = {}
        for s in per_seed:
            for r in s["arms"][arm]:
                finals.setdefault(r["depth"], []).append(r["val_loss"])
        agg[arm] = {
            "flops_saving_vs_scratch": {"mean": statistics.mean(vals) if vals else None,
                                        "stdev": statistics.stdev(vals) if len(vals) > 1 else None, "n": len(vals)},
            "rungs_matched": [s["ladder"][arm].get("rungs_matched") for s in per_seed],
            "val_loss": {f"d{d}": {"mean": statistics.mean(v), "stdev": statistics.stdev(v) if len(v) > 1 else None}
                         for d, v in finals.items()},
        }
    write_json_atomic(out / "summary.json", {"seeds": [lc.seed for lc in configs], "arms": agg,
                                             "per_seed": [str(Path(lc.out) / "summary.json") for lc in configs]})
    return out / "summary.json"
