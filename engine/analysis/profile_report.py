"""Where the time, FLOPs, energy and money of a run (or a miniseries) go, against the seeds' claims.

    python -m engine.analysis.profile_report RUN_DIR [--price-per-gpu-hour 3.0] [--assumed-mfu 0.4]

RUN_DIR is either
  (a) a train run dir: final.json (depth, params, scaling_params, tokens, flops, val_loss, wall_s,
      device, world_size), profile_windows.jsonl and profile_meta.json (written by Profiler); or
  (b) a miniseries dir: summary.json plus rung run dirs RUN_DIR/<arm>/d<depth>/, each a train run dir,
      or (budget curves) RUN_DIR/<arm>/d<depth>/<run>/ (stable/, b<frac>/), each a train run dir.
A run started from another run's checkpoint (a WSD branch) is charged only its own work: its
FLOPs and wall time minus those recorded in the checkpoint it started from, so an arm's totals are
what its budget curves cost (the stable run once, plus each cooldown).
It writes RUN_DIR/profile.json, RUN_DIR/profile.md and RUN_DIR/profile_stages.png (stacked bars of
time per stage per rung). Every statement of the report is marked *measured* (read from this
run's files) or *projected* (computed from FLOPs and an MFU, stated with its source).

Definitions used throughout:
- stage seconds = the stage's *exclusive* time summed over windows (profiling/timers.py), so the
  stages plus "other" (untracked time) sum to the total wall time and fractions sum to 1.
- step time = total wall time minus the inclusive time of the once-in-a-while stages
  (eval, checkpoint, growth): what the training steps themselves took.
- inheritance_overhead_fraction = (fisher + penalty + ars) / step time; the slowdown per step
  against the same step without them is overhead / (step time - overhead).
"""
from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

from engine.analysis.runs import rung_cost
from profiling import cost
from profiling.profiler import META_FILE, WINDOWS_FILE, read_windows

INHERITANCE_STAGES = ("fisher", "penalty", "ars", "teacher")  # "teacher": a distilling rung's parent forward
NON_STEP_STAGES = ("eval", "checkpoint", "growth")
OTHER = "other"
PNG_FILE = "profile_stages.png"
SEEDS = {
    "overhead_per_step": 0.05,  # paper 7.2: "~5% slower per step"
    "ladder_dollars": 100.0, "ladder_dollars_inherit": 40.0, "ladder_hours": 4.0,
    "ladder_gpu_hours_counted": 11.0,
}


# ------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------


def _read_json(p: Path) -> dict | None:
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_run_dir(p: Path) -> bool:
    return (p / "final.json").exists() or (p / WINDOWS_FILE).exists()


def find_rungs(root: Path) -> list[tuple[str, str, int, Path]]:
    """(group, arm, depth, dir) for every ROOT/<arm>/d<depth>/ train run dir (or every run dir one
    level below it: the budget runs of a rung); with several seeds
    (ROOT/seed<k>/<arm>/d<depth>/) the group is "seed<k>", else "". ROOT/base/d<lo> (the shared
    lowest rung when `scratch` is not an arm) is found like an arm named "base"."""

    def scan(d: Path, group: str) -> list:
        out = []
        for arm_dir in sorted(p for p in d.iterdir() if p.is_dir()):
            for rung in arm_dir.iterdir():
                m = re.fullmatch(r"d(\d+)", rung.name)
                if not (m and rung.is_dir()):
                    continue
                runs = [rung] if is_run_dir(rung) else sorted(r for r in rung.iterdir() if r.is_dir() and is_run_dir(r))
                out += [(group, arm_dir.name, int(m.group(1)), r) for r in runs]
        return out

    found = scan(root, "")
    if not found:
        for sub in sorted(p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"seed\d+", p.name)):
            found += scan(sub, sub.name)
    return sorted(found, key=lambda r: (r[0], r[1], r[2], str(r[3])))


def _started_from(run_dir: Path) -> dict:
    """The checkpoint extras a run started from (a WSD branch's stable checkpoint), else {}."""
    init = ((_read_json(run_dir / "run.json") or {}).get("config") or {}).get("init_from")
    return (_read_json(Path(init) / "extra.json") or {}) if init else {}


# ------------------------------------------------------------------------------------------
# one run
# ------------------------------------------------------------------------------------------


def _stage_table(acc: dict[str, dict], total: float, steps: int, untracked: float) -> dict[str, dict]:
    stages = {}
    for name, a in acc.items():
        stages[name] = {"seconds": a["exclusive_s"], "inclusive_s": a["inclusive_s"], "calls": a["calls"],
                        "fraction": a["exclusive_s"] / total if total > 0 else 0.0,
                        "per_step_s": a["exclusive_s"] / steps if steps else None}
    stages[OTHER] = {"seconds": untracked, "inclusive_s": untracked, "calls": None,
                     "fraction": untracked / total if total > 0 else 0.0,
                     "per_step_s": untracked / steps if steps else None}
    return stages


def _overhead(acc: dict[str, dict], total: float) -> dict[str, Any]:
    step_time = total - sum(acc[n]["inclusive_s"] for n in NON_STEP_STAGES if n in acc)
    inh = sum(acc[n]["exclusive_s"] for n in INHERITANCE_STAGES if n in acc)
    frac = inh / step_time if step_time > 0 else 0.0
    return {"step_time_s": step_time, "inheritance_s": inh, "inheritance_overhead_fraction": frac,
            "inheritance_slowdown": inh / (step_time - inh) if step_time - inh > 0 else None,
            "has_inheritance_stages": any(n in acc for n in INHERITANCE_STAGES)}


def summarize_run(run_dir, price_per_gpu_hour: float = cost.DEFAULT_PRICE_PER_GPU_HOUR) -> dict[str, Any]:
    """Everything measured about one train run dir (no projection)."""
    run_dir = Path(run_dir)
    final = _read_json(run_dir / "final.json") or {}
    meta = _read_json(run_dir / META_FILE) or {}
    windows = read_windows(run_dir)
    acc: dict[str, dict] = {}
    wall = steps = tokens = 0
    mflops = xflops = 0.0
    energy, energy_known = 0.0, bool(windows)
    for w in windows:
        wall += w.get("wall_s", 0.0)
        steps += w.get("steps", 0)
        tokens += w.get("tokens", 0)
        mflops += w.get("model_flops", 0.0)
        xflops += w.get("extra_flops", 0.0)
        for name, s in (w.get("stages") or {}).items():
            a = acc.setdefault(name, {"inclusive_s": 0.0, "exclusive_s": 0.0, "calls": 0})
            a["inclusive_s"] += s["inclusive_s"]
            a["exclusive_s"] += s["exclusive_s"]
            a["calls"] += s["calls"]
        e = (w.get("sampler") or {}).get("energy_j")
        if e is None:
            energy_known = False
        else:
            energy += e
    tracked = sum(a["exclusive_s"] for a in acc.values())
    untracked = max(wall - tracked, 0.0)
    total = tracked + untracked
    device_type = meta.get("device_type") or ("cuda" if "cuda" in str(final.get("device", "")) else "cpu")
    world = int(final.get("world_size") or meta.get("world_size") or 1)
    peak = meta.get("peak_flops_per_s")
    before = _started_from(run_dir)  # a branch: charge only its own work
    wall_s = float(final["wall_s"]) - float(before.get("wall_s", 0.0)) if final.get("wall_s") is not None else wall
    on_gpu = device_type == "cuda"
    gh = cost.gpu_hours(wall_s, world) if on_gpu else None
    out = {
        "run_dir": str(run_dir), "depth": final.get("depth"), "device_type": device_type,
        "device_name": meta.get("device_name", final.get("device")), "world_size": world,
        "sampler_kind": meta.get("sampler_kind"), "sampler_reason": meta.get("sampler_reason"),
        "windows": len(windows), "steps": steps, "profiled_wall_s": wall, "total_s": total,
        "stages": _stage_table(acc, total, steps, untracked),
        **_overhead(acc, total),
        "tokens": final.get("tokens", tokens), "profiled_tokens": tokens,
        "flops": (float(final["flops"]) - float(before.get("flops", 0.0)) if final.get("flops") is not None
                  else mflops + xflops),
        "model_flops": mflops, "extra_flops": xflops,
        "fisher_flops": final.get("fisher_flops") or 0.0, "penalty_flops": final.get("penalty_flops") or 0.0,
        "val_loss": final.get("val_loss"), "params": final.get("params"), "scaling_params": final.get("scaling_params"),
        "peak_flops_per_s": peak, "peak_source": meta.get("peak_source"),
        "mfu": cost.mfu(mflops, wall, peak, world) if windows else None,
        "wall_s": wall_s, "gpu_hours": gh,
        "dollars": cost.dollars(gh, price_per_gpu_hour) if gh is not None else None,
        "energy_j": energy if energy_known else None,
        "energy_kwh": cost.kwh(energy) if energy_known else None,
        "energy_source": ("nvml" if meta.get("sampler_kind") == "nvml" else "rapl") if energy_known else None,
    }
    return out


def _merge_stages(rungs: list[dict]) -> tuple[dict, float, int, float]:
    acc: dict[str, dict] = {}
    total = steps = 0
    for r in rungs:
        total += r["total_s"]
        steps += r["steps"]
        for name, s in r["stages"].items():
            a = acc.setdefault(name, {"inclusive_s": 0.0, "exclusive_s": 0.0, "calls": 0})
            a["inclusive_s"] += s["inclusive_s"]
            a["exclusive_s"] += s["seconds"]
            a["calls"] += s["calls"] or 0
    untracked = acc.pop(OTHER, {"exclusive_s": 0.0})["exclusive_s"]
    return acc, total, steps, untracked


# ------------------------------------------------------------------------------------------
# profile (run or miniseries)
# ------------------------------------------------------------------------------------------


def _profiled_runs(root: Path, price_per_gpu_hour: float) -> tuple[str, list[dict]]:
    """("miniseries" | "run", summarize_run of every run dir found under `root`, labelled)."""
    rungs_found = [] if is_run_dir(root) else find_rungs(root)
    if rungs_found:
        rungs = []
        for group, arm, depth, d in rungs_found:
            r = summarize_run(d, price_per_gpu_hour)
            nested = d.parent.name == f"d{depth}"
            r.update({"group": group, "arm": arm, "depth": depth if r["depth"] is None else r["depth"],
                      "label": f"{group + '/' if group else ''}{arm}/d{depth}" + (f"/{d.name}" if nested else "")})
            rungs.append(r)
        return "miniseries", rungs
    if is_run_dir(root):
        r = summarize_run(root, price_per_gpu_hour)
        r.update({"group": "", "arm": None, "label": f"d{r['depth']}" if r["depth"] is not None else root.name})
        return "run", [r]
    raise FileNotFoundError(f"{root} is neither a train run dir (final.json / {WINDOWS_FILE}) "
                            f"nor a miniseries dir (<arm>/d<depth>/ run dirs)")


def _arm_totals(rungs: list[dict]) -> dict[str, dict]:
    """Measured totals per arm. The lowest rung is trained once and shared (it lives under scratch/
    or base/): an arm without its own copy is charged the shared one, as engine/ladder/run.py trains it."""
    lo = min((r["depth"] for r in rungs if r["depth"] is not None), default=None)
    shared: dict[str, list[dict]] = {}
    for r in rungs:
        if r["arm"] in ("scratch", "base") and r["depth"] == lo:
            shared.setdefault(r["group"], []).append(r)
    arm_rungs: dict[str, list[dict]] = {}
    for r in rungs:
        if r["arm"] != "base":
            arm_rungs.setdefault(r["arm"] or "run", []).append(r)
    for name, rs in arm_rungs.items():
        have = {(r["group"], r["depth"]) for r in rs}
        rs += [b for g, bs in shared.items() if (g, lo) not in have for b in bs]
    arms: dict[str, dict] = {}
    for name, rs in arm_rungs.items():
        gpu = all(r["gpu_hours"] is not None for r in rs)
        known = all(r["energy_j"] is not None for r in rs)
        arms[name] = {
            "rungs": len(rs), "depths": sorted({r["depth"] for r in rs}),
            "wall_s": sum(r["wall_s"] for r in rs), "flops": sum(rung_cost(r) for r in rs),
            "gpu_hours": sum(r["gpu_hours"] for r in rs) if gpu else None,
            "dollars": sum(r["dollars"] for r in rs) if gpu else None,
            "energy_j": sum(r["energy_j"] for r in rs) if known else None,
        }
        arms[name]["energy_kwh"] = cost.kwh(arms[name]["energy_j"]) if known else None
    return arms


def _per_step_vs_scratch(rungs: list[dict]) -> list[dict]:
    """Per-step time of each inheriting arm's run against scratch at the same depth (measured)."""
    comparisons = []
    scratch = {(r["group"], r["depth"]): r for r in rungs if r["arm"] == "scratch" and r["steps"]}
    for r in rungs:
        s = scratch.get((r["group"], r["depth"]))
        if r["arm"] not in (None, "scratch", "base") and s is not None and r["steps"]:
            a, b = r["step_time_s"] / r["steps"], s["step_time_s"] / s["steps"]
            comparisons.append({"label": r["label"], "step_s": a, "scratch_step_s": b, "slower_per_step": a / b - 1})
    return comparisons


def _mfu_used(rungs: list[dict], assumed_mfu: float) -> tuple[float, str]:
    """The MFU the projections use and where it comes from: measured on GPU, else assumed."""
    gpu_rungs = [r for r in rungs if r["device_type"] == "cuda" and r["mfu"]]
    if not gpu_rungs:
        return assumed_mfu, f"assumed ({assumed_mfu:g}; no GPU measurement in this run)"
    w = sum(r["profiled_wall_s"] for r in gpu_rungs)
    return (sum(r["mfu"] * r["profiled_wall_s"] for r in gpu_rungs) / w,
            "measured (wall-time-weighted mean over this run's GPU rungs; smaller models usually reach "
            "a lower MFU than nanochat's d10..d20, so this projection leans high)")


def _projection(arms: dict, summary, mfu_used: float, price_per_gpu_hour: float) -> tuple[dict, float | None]:
    """The seeds' ladder projected for scratch, for each arm at its measured FLOPs ratio to scratch,
    and at each ladder saving summary.json reports; and the inherit arm's FLOPs ratio (or None)."""
    proj = {"scratch": cost.project_ladder(mfu_used, price_per_gpu_hour=price_per_gpu_hour)}
    frac = None
    if "scratch" in arms and arms["scratch"]["flops"] > 0:
        for arm_name, a in arms.items():
            if arm_name in ("scratch", "run"):
                continue
            # total spend of the arm's ladder against the scratch ladder (same depths, same seeds)
            f = a["flops"] / arms["scratch"]["flops"]
            proj[arm_name] = cost.project_ladder(mfu_used, fraction=f, price_per_gpu_hour=price_per_gpu_hour)
            if arm_name == "inherit":
                frac = f
    ladder = ((summary or {}).get("ladder") or {}) if isinstance(summary, dict) else {}
    for arm_name, entry in ladder.items():
        sv = entry.get("saving") if isinstance(entry, dict) else None
        if arm_name != "scratch" and isinstance(sv, (int, float)):
            q = cost.project_ladder(mfu_used, fraction=1 - sv, price_per_gpu_hour=price_per_gpu_hour)
            q["basis"] = f"summary.json ladder saving at matched quality ({entry.get('kind', 'exact')})"
            proj[f"{arm_name} (matched quality)"] = q
    for p in proj.values():
        p.pop("rungs", None)
    return proj, frac


def build_profile(run_dir, price_per_gpu_hour: float = cost.DEFAULT_PRICE_PER_GPU_HOUR,
                  assumed_mfu: float = 0.4) -> dict[str, Any]:
    """The profile dict written to profile.json; see the module docstring for the definitions."""
    root = Path(run_dir)
    kind, rungs = _profiled_runs(root, price_per_gpu_hour)
    acc, total, steps, untracked = _merge_stages(rungs)
    # the overhead is a property of the inheriting arms; scratch rungs enter an empty "ars" stage too
    inh_rungs = [r for r in rungs if r["arm"] not in ("scratch", "base")] or rungs
    step_time = sum(r["step_time_s"] for r in inh_rungs)
    inh = sum(r["inheritance_s"] for r in inh_rungs)
    prof: dict[str, Any] = {
        "kind": kind, "run_dir": str(root),
        "summary": _read_json(root / "summary.json") if kind == "miniseries" else None,
        "total_s": total, "steps": steps,
        "stages": _stage_table(acc, total, steps, untracked),
        "step_time_s": step_time,
        "inheritance_overhead_fraction": inh / step_time if step_time > 0 else 0.0,
        "inheritance_slowdown": inh / (step_time - inh) if step_time - inh > 0 else None,
        "inheritance_overhead_over": [r["label"] for r in inh_rungs],
        "rungs": rungs,
        "price_per_gpu_hour": price_per_gpu_hour,
    }
    prof["arms"] = _arm_totals(rungs)
    prof["per_step_vs_scratch"] = _per_step_vs_scratch(rungs)
    prof["mfu_used"], prof["mfu_source"] = _mfu_used(rungs, assumed_mfu)
    prof["projection"], frac = _projection(prof["arms"], prof["summary"], prof["mfu_used"], price_per_gpu_hour)
    prof["projection_rungs"] = cost.ladder_flops()
    prof["inherit_flops_fraction"] = frac
    prof["lines"] = _claim_lines(prof)
    return prof


def _fmt_s(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x / 3600:.2f} h" if x >= 3600 else f"{x:.3g} s"


def _claim_lines(p: dict) -> list[str]:
    """Report lines, each starting with *measured* or *projected*."""
    L = []

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"

    # where the time goes
    order = sorted(p["stages"].items(), key=lambda kv: -kv[1]["seconds"])
    where = ", ".join(f"{n} {pct(s['fraction'])}" for n, s in order if s["seconds"] > 0)
    L.append(f"*measured*: where the time goes (exclusive time, {_fmt_s(p['total_s'])} over {p['steps']} steps): "
             f"{where}.")
    # the ~5% claim
    over = ", ".join(p["inheritance_overhead_over"])
    L.append("*measured*: inheritance overhead (fisher+penalty+ars stages) = "
             f"{pct(p['inheritance_overhead_fraction'])} of step time ({over}); a step is "
             f"{pct(p['inheritance_slowdown'])} slower than the same step without those stages. Seeds claim "
             f"~{SEEDS['overhead_per_step']:.0%} slower per step (paper 7.2, not measured there). Work fused into "
             "another stage (e.g. Fisher accumulation and the penalty term inside the optimizer kernel) is not in "
             "these stages: the per-step comparison against scratch below is the complete measure.")
    for c in p["per_step_vs_scratch"]:
        L.append(f"*measured*: {c['label']} step {c['step_s'] * 1e3:.3g} ms vs scratch {c['scratch_step_s'] * 1e3:.3g} "
                 f"ms: {pct(c['slower_per_step'])} slower per step.")
    # measured cost
    for name, a in p["arms"].items():
        money = (f"{a['gpu_hours']:.3g} GPU-hours, ${a['dollars']:.3g} at ${p['price_per_gpu_hour']:g}/GPU-hour"
                 if a["gpu_hours"] is not None else "CPU run: no GPU-hours or dollars")
        energy = f"{a['energy_kwh']:.3g} kWh" if a["energy_kwh"] is not None else "energy not measured on this machine"
        L.append(f"*measured*: {name} ({a['rungs']} rung(s), depths {a['depths']}): wall {_fmt_s(a['wall_s'])}, "
                 f"{a['flops']:.3g} FLOPs (model + Fisher + penalty), {money}, {energy}.")
    # projection
    s = p["projection"]["scratch"]
    L.append(f"*projected*: the seeds' ladder (nanochat d10..d20, ratio 8, 8xH100 at {s['peak_flops_per_s']:.3g} "
             f"FLOP/s dense bf16, MFU {s['mfu']:.2f} {p['mfu_source']}): {s['flops']:.3g} FLOPs = {s['gpu_hours']:.1f} "
             f"GPU-hours = {s['wall_hours']:.2f} h on 8 GPUs = ${s['dollars']:.0f}, ~{s['energy_kwh']:.0f} kWh at "
             f"{s['watts_per_gpu']:.0f} W/GPU (TDP, an upper bound). Seeds: ~${SEEDS['ladder_dollars']:.0f} and "
             f"\"{SEEDS['ladder_hours']:.0f} hours\" (their own arithmetic counts "
             f"{SEEDS['ladder_gpu_hours_counted']:.0f} h of GPU time and calls it 4 hours; "
             f"${SEEDS['ladder_dollars']:.0f} at $24/node-hour is ~4.2 node-hours).")
    for name, q in p["projection"].items():
        if name == "scratch":
            continue
        basis = q.get("basis") or ("its measured total-FLOPs ratio to the scratch ladder (all rungs, matched in "
                                   "quality or not)")
        L.append(f"*projected*: arm '{name}' at {basis}, {q['fraction_of_scratch_flops']:.3f} of scratch: "
                 f"{q['gpu_hours']:.1f} GPU-hours, {q['wall_hours']:.2f} h on 8 GPUs, ${q['dollars']:.0f} "
                 f"(saving {pct(1 - q['fraction_of_scratch_flops'])}); seeds claim $100 -> $40 (60%).")
    if len(p["projection"]) == 1:
        L.append("*projected*: no inheriting arm measured against scratch here, so the seeds' $100 -> $40 cannot be "
                 "projected from this run (needs a miniseries with a scratch arm).")
    return L


# ------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------


def _plot(p: dict, path: Path) -> None:
    import matplotlib  # imported here: only the PNG needs it, and it is slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rungs = p["rungs"]
    names = [n for n, _ in sorted(p["stages"].items(), key=lambda kv: -kv[1]["seconds"])]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(rungs) + 2.5), 4.0))
    cmap = plt.get_cmap("tab20")
    bottom = [0.0] * len(rungs)
    x = list(range(len(rungs)))
    for i, n in enumerate(names):
        vals = [r["stages"].get(n, {}).get("seconds", 0.0) for r in rungs]
        ax.bar(x, vals, bottom=bottom, label=n, color=cmap(i % 20))
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xticks(x)
    ax.set_xticklabels([r["label"] for r in rungs], rotation=45 if len(rungs) > 6 else 0,
                       ha="right" if len(rungs) > 6 else "center")
    ax.set_ylabel("seconds (exclusive)")
    ax.set_title("time per stage per rung (measured)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(p: dict) -> str:
    out = [f"# Profile of `{p['run_dir']}` ({p['kind']})", "",
           "Every line is *measured* (read from this run's files) or *projected* (FLOPs x MFU model).", ""]
    out += [f"- {line}" for line in p["lines"]]
    out += ["", "## Stages (measured; exclusive time, fractions sum to 1)", "",
            "| stage | seconds | fraction | per step (ms) | calls |", "|---|---:|---:|---:|---:|"]
    for n, s in sorted(p["stages"].items(), key=lambda kv: -kv[1]["seconds"]):
        ps = "" if s["per_step_s"] is None else f"{1e3 * s['per_step_s']:.3g}"
        out.append(f"| {n} | {s['seconds']:.4g} | {s['fraction']:.3f} | {ps} | "
                   f"{s['calls'] if s['calls'] is not None else ''} |")
    out += ["", "## Rungs (measured)", "",
            "| rung | steps | wall | step time | inheritance overhead | MFU | peak (source) | energy kWh | GPU-h | $ |",
            "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]

    def f(x, fmt):
        return "n/a" if x is None else format(x, fmt)

    for r in p["rungs"]:
        out.append(f"| {r['label']} | {r['steps']} | {_fmt_s(r['wall_s'])} | {_fmt_s(r['step_time_s'])} | "
                   f"{f(r['inheritance_overhead_fraction'], '.3f')} | {f(r['mfu'], '.3g')} | "
                   f"{f(r['peak_flops_per_s'], '.3g')} ({r['peak_source']}) | {f(r['energy_kwh'], '.3g')} | "
                   f"{f(r['gpu_hours'], '.3g')} | {f(r['dollars'], '.3g')} |")
    out += ["", f"![time per stage per rung]({PNG_FILE})", ""]
    return "\n".join(out)


def write_report(run_dir, price_per_gpu_hour: float = cost.DEFAULT_PRICE_PER_GPU_HOUR,
                 assumed_mfu: float = 0.4) -> Path:
    """Write profile.json, profile.md and profile_stages.png into run_dir; returns profile.md's path."""
    run_dir = Path(run_dir)
    p = build_profile(run_dir, price_per_gpu_hour=price_per_gpu_hour, assumed_mfu=assumed_mfu)
    with open(run_dir / "profile.json", "w") as f:
        json.dump(p, f, indent=2, default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o))
    _plot(p, run_dir / PNG_FILE)
    md = run_dir / "profile.md"
    md.write_text(_markdown(p))
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.analysis.profile_report", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--price-per-gpu-hour", type=float, default=cost.DEFAULT_PRICE_PER_GPU_HOUR)
    ap.add_argument("--assumed-mfu", type=float, default=0.4)
    a = ap.parse_args(argv)
    if not a.run_dir.is_dir():
        ap.error(f"{a.run_dir} is not a directory")
    try:
        build_profile(a.run_dir)
    except FileNotFoundError as e:
        ap.error(str(e))
    md = write_report(a.run_dir, price_per_gpu_hour=a.price_per_gpu_hour, assumed_mfu=a.assumed_mfu)
    print(md.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
