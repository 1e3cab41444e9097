"""Scaling-law sweeps and fits (Hoffmann et al. 2022, approaches 2 and 3; see engine/analysis/scaling.py).

Fit a CSV of finished runs (columns params, tokens, loss; flops_budget too for IsoFLOP profiles):

    python launch/scaling_laws.py --fit runs.csv [--out fit.json] [--n-bootstrap 200] [--compute C]

Run an IsoFLOP sweep like nanochat's scaling-laws script: for every FLOP budget and depth, train a
rung for tokens = budget / flops_per_token(depth) with launch/train.py, then fit both approaches:

    python launch/scaling_laws.py --preset cpu-tiny --depths 2:5 --flops 1e13,3e13 --out DIR \
        [--data builtin] [--seed 0]

Each rung goes to DIR/c<budget>/d<depth> (the trainer writes final.json there). Rerunning the same
command only does what is missing: rungs with final.json are skipped, rungs with a ckpt/ but no
final.json are resumed (--resume). Outputs: DIR/results.csv, DIR/scaling.json, DIR/scaling.md,
DIR/isoflop.png, DIR/law.png. Trainer logs: DIR/logs/c<budget>_d<depth>.log.

The trainer command can be replaced (tests, other launchers) with the environment variable
SCALING_LAWS_TRAINER, a command prefix to which the rung arguments are appended.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from launch.argtypes import nonneg_int, positive_int  # noqa: E402
from engine.analysis.scaling import fit_chinchilla, isoflop_analysis, optimal_allocation, predict  # noqa: E402
from models.config import PRESETS, model_config, parse_depths  # noqa: E402

TRAINER_ENV = "SCALING_LAWS_TRAINER"
RESULT_COLUMNS = ["flops_budget", "depth", "params", "tokens", "loss", "val_bpb", "flops", "total_params", "wall_s"]


# ---------------------------------------------------------------------------------------------
# argument parsing


def parse_flops(text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad FLOP budgets {text!r}: use e.g. 1e13,3e13") from None
    if not vals or any(not math.isfinite(v) or v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"bad FLOP budgets {text!r}: budgets must be positive numbers")
    if len(set(vals)) != len(vals):
        raise argparse.ArgumentTypeError(f"bad FLOP budgets {text!r}: repeated budget")
    return sorted(vals)


def budget_tag(c: float) -> str:
    """1e13 -> '1e13', 3e13 -> '3e13', 1.5e13 -> '1.5e13' (directory names)."""
    exp = int(math.floor(math.log10(c)))
    mant = c / 10**exp
    if abs(mant - round(mant, 6)) < 1e-9:
        mant = round(mant, 6)
    if mant >= 10:  # rounding at the boundary
        mant, exp = mant / 10, exp + 1
    return f"{mant:g}e{exp}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--fit", type=Path, help="CSV with params,tokens,loss[,flops_budget]: fit it and stop")
    p.add_argument("--preset", choices=sorted(PRESETS), help="model preset of the sweep")
    p.add_argument("--depths", help="depths of the sweep: '2:5', '2,3,5' or '2:4,8' (models/config.py: parse_depths)")
    p.add_argument("--flops", type=parse_flops, help="FLOP budgets of the sweep, comma separated: 1e13,3e13")
    p.add_argument("--data", default="builtin", help="training data source, passed to the trainer (default builtin)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seq-len", dest="seq_len", type=positive_int, default=None,
                   help="override the preset's sequence length (passed to the trainer; also changes FLOPs per token)")
    p.add_argument("--out", type=Path, help="--fit: JSON file (default FILE.fit.json); sweep: output directory")
    p.add_argument("--metric", choices=("val_loss", "val_bpb"), default="val_loss",
                   help="what the sweep fits (default val_loss)")
    p.add_argument("--n-bootstrap", type=nonneg_int, default=200,
                   help="bootstrap refits for the intervals (default 200)")
    p.add_argument("--compute", type=float, default=None,
                   help="FLOPs (6ND) at which to report the optimal ratio (default: largest in the data)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--trainer-arg", action="append", default=[],
                   help="extra argument passed to every trainer call (repeatable)")
    return p


def check_args(p: argparse.ArgumentParser, args) -> None:
    if args.compute is not None and not (math.isfinite(args.compute) and args.compute > 0):
        p.error("--compute must be a positive number")
    if args.fit is not None:
        if any(getattr(args, k) is not None for k in ("preset", "depths", "flops")):
            p.error("--fit cannot be combined with --preset/--depths/--flops")
        if not args.fit.is_file():
            p.error(f"--fit: file not found: {args.fit}")
        return
    missing = [f"--{k}" for k in ("preset", "depths", "flops", "out") if getattr(args, k) is None]
    if missing:
        p.error(f"a sweep needs {', '.join(missing)} (or use --fit FILE.csv)")
    try:
        args.depths = parse_depths(args.depths)
    except ValueError as e:
        p.error(str(e))
    if not os.environ.get(TRAINER_ENV) and not (REPO / "launch" / "train.py").is_file():
        p.error(f"trainer not found: {REPO / 'launch' / 'train.py'} (or set {TRAINER_ENV})")
    # every rung must be trainable before any compute is spent
    for c in args.flops:
        for d in args.depths:
            cfg = _config(args.preset, d, args.seq_len)
            tokens = int(c // cfg.flops_per_token)
            if tokens < cfg.seq_len:
                p.error(
                    f"budget {c:g} FLOPs gives depth {d} only {tokens} tokens (< one sequence of {cfg.seq_len}); "
                    "raise --flops or lower --depths"
                )


# ---------------------------------------------------------------------------------------------
# fitting and reporting


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        cols = set(reader.fieldnames or [])
    need = {"params", "tokens", "loss"}
    if not need <= cols:
        raise SystemExit(f"error: {path} needs columns {sorted(need)}; has {sorted(cols)}")
    return rows


def _num(row: dict, key: str) -> float:
    try:
        return float(row[key])
    except (TypeError, ValueError, KeyError):
        return float("nan")


def fit_rows(rows: list[dict], *, n_bootstrap: int, seed: int, compute: float | None) -> dict:
    """Both approaches where the data allows; failures are recorded, not raised."""
    pts = [r for r in rows if all(math.isfinite(_num(r, k)) for k in ("params", "tokens", "loss"))]
    out: dict = {"n_rows": len(rows), "n_used": len(pts)}
    try:
        out["chinchilla"] = fit_chinchilla(
            [_num(r, "params") for r in pts],
            [_num(r, "tokens") for r in pts],
            [_num(r, "loss") for r in pts],
            n_bootstrap=n_bootstrap,
            seed=seed,
            compute=compute,
        )
    except ValueError as e:
        out["chinchilla"] = {"error": str(e)}
    if pts and all(math.isfinite(_num(r, "flops_budget")) for r in pts):
        try:
            out["isoflop"] = isoflop_analysis(
                [{k: _num(r, k) for k in ("flops_budget", "params", "tokens", "loss")} for r in pts]
            )
        except ValueError as e:
            out["isoflop"] = {"error": str(e)}
    return out


def _fmt(v, spec: str) -> str:
    try:
        return format(float(v), spec)
    except (TypeError, ValueError):
        return "-"


def _fmt_ci(ci) -> str:
    return "n/a" if not ci else f"[{ci[0]:.4g}, {ci[1]:.4g}]"


def report_lines(fits: dict) -> list[str]:
    """Markdown tables of the fits (also what the CLI prints)."""
    lines = []
    ch = fits.get("chinchilla")
    if ch and "error" not in ch:
        lines += [
            "## Approach 3: L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022)",
            "",
            f"{ch['n_points']} runs ({ch['n_distinct']} distinct), Huber delta {ch['huber_delta']:g}, "
            f"{ch['n_bootstrap']} bootstrap refits, 95% percentile intervals; rms log-residual "
            f"{ch['residual_rms']:.3g}.",
            "",
            "| quantity | fit | 95% interval |",
            "|---|---|---|",
        ]
        for k in ("E", "A", "B", "alpha", "beta", "a_exp", "b_exp", "ratio_opt"):
            lines.append(f"| {k} | {ch[k]:.4g} | {_fmt_ci(ch['ci'].get(k))} |")
        lines += [
            "",
            "a_exp, b_exp: N_opt ∝ C^a_exp, D_opt ∝ C^b_exp. ratio_opt = D_opt/N_opt at C = "
            f"{ch['ratio_opt_compute']:.3g} FLOPs (C = 6ND): N_opt = {ch['N_opt']:.3g}, D_opt = {ch['D_opt']:.3g}.",
            "",
        ]
    elif ch:
        lines += ["## Approach 3", "", f"not fitted: {ch['error']}", ""]
    iso = fits.get("isoflop")
    if iso and "error" not in iso:
        lines += [
            "## Approach 2: IsoFLOP profiles",
            "",
            "| budget (FLOPs) | runs | N_opt | D_opt | D/N | min loss | vertex inside sampled sizes |",
            "|---|---|---|---|---|---|---|",
        ]
        for b in iso["budgets"]:
            if b["ok"]:
                lines.append(
                    f"| {b['flops_budget']:.3g} | {b['n_runs']} | {b['N_opt']:.4g} | {b['D_opt']:.4g} | "
                    f"{b['ratio']:.3g} | {b['loss_opt']:.4f} | {'yes' if b['interior'] else 'NO (extrapolated)'} |"
                )
            else:
                lines.append(f"| {b['flops_budget']:.3g} | {b['n_runs']} | - | - | - | - | {b['reason']} |")
        lines.append("")
        if iso["a"] is not None:
            lines.append(f"N_opt ∝ C^{iso['a']:.3f}, D_opt ∝ C^{iso['b']:.3f} (Hoffmann et al.: 0.49, 0.51).")
        else:
            lines.append("exponents need at least 2 budgets with a fitted minimum.")
        if iso["ratio_at_largest"] is not None:
            lines.append(f"D/N at the largest fitted budget ({iso['largest_budget']:.3g} FLOPs): "
                         f"{iso['ratio_at_largest']:.3g}.")
        lines.append("")
    elif iso:
        lines += ["## Approach 2", "", f"not fitted: {iso['error']}", ""]
    return lines


def make_plots(rows: list[dict], fits: dict, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written = []
    iso = fits.get("isoflop")
    if iso and "error" not in iso:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for i, b in enumerate(iso["budgets"]):
            pts = sorted((_num(r, "params"), _num(r, "loss"))
                         for r in rows if _num(r, "flops_budget") == b["flops_budget"])
            color = f"C{i % 10}"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", color=color, label=f"C = {b['flops_budget']:.2g}")
            if b["ok"]:
                xs = np.linspace(math.log(pts[0][0]) - 0.2, math.log(pts[-1][0]) + 0.2, 100)
                ax.plot(np.exp(xs), np.polyval(b["coef"], xs), "-", color=color, alpha=0.7)
                ax.plot([b["N_opt"]], [b["loss_opt"]], "*", color=color, ms=12)
        ax.set_xscale("log")
        ax.set_xlabel("scaling parameters N")
        ax.set_ylabel("final loss")
        ax.set_title("IsoFLOP profiles (stars: parabola minima)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "isoflop.png", dpi=120)
        plt.close(fig)
        written.append("isoflop.png")
    ch = fits.get("chinchilla")
    if ch and "error" not in ch:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
        N = np.array([_num(r, "params") for r in rows])
        D = np.array([_num(r, "tokens") for r in rows])
        L = np.array([_num(r, "loss") for r in rows])
        ok = np.isfinite(N) & np.isfinite(D) & np.isfinite(L)
        N, D, L = N[ok], D[ok], L[ok]
        pred = predict(ch, N, D)
        ax1.plot(L, pred, "o")
        lo, hi = min(L.min(), pred.min()), max(L.max(), pred.max())
        ax1.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax1.set_xlabel("observed loss")
        ax1.set_ylabel("fitted loss")
        ax1.set_title(f"E={ch['E']:.3g} A={ch['A']:.3g} B={ch['B']:.3g} α={ch['alpha']:.3g} β={ch['beta']:.3g}",
                      fontsize=9)
        C = np.logspace(math.log10((6 * N * D).min()) - 1, math.log10((6 * N * D).max()) + 2, 60)
        n_opt, d_opt = optimal_allocation(ch, C)
        ax2.loglog(C, n_opt, label="N_opt (approach 3)")
        ax2.loglog(C, d_opt, label="D_opt (approach 3)")
        if iso and "error" not in iso:
            good = [b for b in iso["budgets"] if b["ok"]]
            ax2.loglog([b["flops_budget"] for b in good], [b["N_opt"] for b in good], "o", color="C0",
                       label="N_opt (IsoFLOP)")
            ax2.loglog([b["flops_budget"] for b in good], [b["D_opt"] for b in good], "s", color="C1",
                       label="D_opt (IsoFLOP)")
        ax2.set_xlabel("compute C (FLOPs; the law uses C = 6ND, IsoFLOP points their budget)")
        ax2.set_title(f"compute-optimal allocation; D/N at {ch['ratio_opt_compute']:.2g}: {ch['ratio_opt']:.3g}",
                      fontsize=9)
        ax2.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "law.png", dpi=120)
        plt.close(fig)
        written.append("law.png")
    return written


# ---------------------------------------------------------------------------------------------
# the sweep


def trainer_command() -> list[str]:
    env = os.environ.get(TRAINER_ENV)
    if env:
        return shlex.split(env)
    return [sys.executable, str(REPO / "launch" / "train.py")]


def _config(preset: str, depth: int, seq_len: int | None):
    return model_config(preset, depth) if seq_len is None else model_config(preset, depth, seq_len=seq_len)


def plan_rungs(preset: str, depths: list[int], budgets: list[float], out: Path,
               seq_len: int | None = None) -> list[dict]:
    rungs = []
    for c in budgets:
        for d in depths:
            cfg = _config(preset, d, seq_len)
            tag = budget_tag(c)
            rungs.append(
                {
                    "flops_budget": c,
                    "depth": d,
                    "tokens": int(c // cfg.flops_per_token),
                    "dir": out / f"c{tag}" / f"d{d}",
                    "log": out / "logs" / f"c{tag}_d{d}.log",
                }
            )
    return rungs


def run_rung(rung: dict, args, cmd_prefix: list[str]) -> tuple[str, float]:
    """Train one rung unless its final.json exists. Returns (status, seconds)."""
    final = rung["dir"] / "final.json"
    if final.is_file():
        return "skipped (final.json exists)", 0.0
    cmd = cmd_prefix + [
        "--depth", str(rung["depth"]),
        "--preset", args.preset,
        "--data", args.data,
        "--tokens", str(rung["tokens"]),
        "--out", str(rung["dir"]),
        "--seed", str(args.seed),
    ] + (["--seq-len", str(args.seq_len)] if args.seq_len is not None else []) + list(args.trainer_arg)
    resumed = (rung["dir"] / "ckpt").exists()
    if resumed:
        cmd.append("--resume")
    rung["log"].parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(rung["log"], "a") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        rc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
    dt = time.time() - t0
    if rc != 0:
        return f"FAILED (exit {rc}; see {rung['log']})", dt
    if not final.is_file():
        return f"FAILED (trainer exited 0 but wrote no {final})", dt
    return ("resumed" if resumed else "trained"), dt


def collect(rungs: list[dict], metric: str) -> list[dict]:
    rows = []
    for r in rungs:
        final = r["dir"] / "final.json"
        if not final.is_file():
            continue
        with open(final) as f:
            fj = json.load(f)
        rows.append(
            {
                "flops_budget": r["flops_budget"],
                "depth": fj.get("depth", r["depth"]),
                "params": fj.get("scaling_params", fj.get("params")),
                "tokens": fj.get("tokens", r["tokens"]),
                "loss": fj.get(metric),
                "val_bpb": fj.get("val_bpb"),
                "flops": fj.get("flops"),
                "total_params": fj.get("params"),
                "wall_s": fj.get("wall_s"),
            }
        )
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in RESULT_COLUMNS})


def sweep(args) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    rungs = plan_rungs(args.preset, args.depths, args.flops, out, args.seq_len)
    cmd_prefix = trainer_command()
    print(f"sweep: {len(rungs)} rungs ({len(args.flops)} budgets x {len(args.depths)} depths) -> {out}")
    failures = []
    for i, r in enumerate(rungs, 1):
        status, dt = run_rung(r, args, cmd_prefix)
        print(f"[{i}/{len(rungs)}] C={r['flops_budget']:.3g} d{r['depth']} tokens={r['tokens']}: {status}"
              + (f" in {dt:.1f}s" if dt else ""), flush=True)
        if status.startswith("FAILED"):
            failures.append((r, status))
    rows = collect(rungs, args.metric)
    write_csv(rows, out / "results.csv")
    str_rows = [{k: ("" if v is None else v) for k, v in r.items()} for r in rows]
    fits = fit_rows(str_rows, n_bootstrap=args.n_bootstrap, seed=args.seed, compute=args.compute)
    fits.update(
        preset=args.preset,
        depths=args.depths,
        flops_budgets=args.flops,
        metric=args.metric,
        data=args.data,
        seed=args.seed,
        seq_len=args.seq_len,
        results=rows,
        failed=[{"flops_budget": r["flops_budget"], "depth": r["depth"], "status": s} for r, s in failures],
    )
    (out / "scaling.json").write_text(json.dumps(fits, indent=2, default=str) + "\n")
    lines = report_lines(fits)
    plots = [] if args.no_plots else make_plots(str_rows, fits, out)
    md = [
        f"# Scaling sweep: preset {args.preset}, depths {args.depths}, budgets "
        f"{', '.join(f'{c:.3g}' for c in args.flops)}",
        "",
        f"metric: {args.metric}; data: {args.data}; seed {args.seed}; {len(rows)}/{len(rungs)} rungs finished.",
        "",
        "| budget | depth | params N | tokens D | loss | val_bpb | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['flops_budget']:.3g} | {r['depth']} | {r['params']} | {r['tokens']} | {_fmt(r['loss'], '.4f')} | "
            f"{_fmt(r['val_bpb'], '.4f')} | {_fmt(r['wall_s'], '.1f')} |"
        )
    md += [""] + lines + [f"![{p}]({p})" for p in plots]
    if failures:
        md += ["", "## Failed rungs", ""] + [f"- C={r['flops_budget']:.3g} d{r['depth']}: {s}" for r, s in failures]
    (out / "scaling.md").write_text("\n".join(md) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / 'results.csv'}, {out / 'scaling.json'}, {out / 'scaling.md'}"
          + "".join(f", {out / p}" for p in plots))
    if failures:
        print(f"{len(failures)} rung(s) failed; rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0


def fit_file(args) -> int:
    rows = read_csv(args.fit)
    fits = fit_rows(rows, n_bootstrap=args.n_bootstrap, seed=args.seed, compute=args.compute)
    fits["source"] = str(args.fit)
    out = args.out or args.fit.with_suffix(".fit.json")
    print("\n".join(report_lines(fits)))
    Path(out).write_text(json.dumps(fits, indent=2) + "\n")
    print(f"wrote {out}")
    ch = fits["chinchilla"]
    return 1 if "error" in ch and "isoflop" not in fits else 0


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    check_args(p, args)
    return fit_file(args) if args.fit is not None else sweep(args)


if __name__ == "__main__":
    sys.exit(main())
