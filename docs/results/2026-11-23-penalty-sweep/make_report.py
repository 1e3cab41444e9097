"""Penalty sweep table + plot (d2->d3, ratio 8, seed 0, arm inherit-noars = growth + penalty, no ARS)."""
import json, sys
from pathlib import Path
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

root = Path(__file__).resolve().parents[3] / "runs"  # the repository's runs/
base = root / "long/seed0"
rows = []
def curve(run):
    pts = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return [(p["step"], p["val_loss"]) for p in pts if "val_loss" in p]
def add(name, run, lam, gamma, extra=""):
    f = json.loads((run / "final.json").read_text())
    c = curve(run)
    rows.append((name, lam, gamma, extra, f["val_loss"], min(v for _, v in c), f["steps"], f["wall_s"], c))
add("grow-only (no penalty, no ARS)", base / "grow-only/d3", 0, 0)
add("inherit-noars at the seeds' settings", base / "inherit-noars/d3", "1e5", "0.1")
cfgs = {"g0.01": ("1e5", "0.01", ""), "g0.001": ("1e5", "0.001", ""), "g0": ("1e5", "0", ""),
        "g0-lam1e7": ("1e7", "0", ""), "g0.1-linear": ("1e5", "0.1", "linear decay"),
        "svd-g0.01": ("1e5", "0.01", "svd, 90% energy"),
        "lam1e4-g0.1": ("1e4", "0.1", ""), "lam1e3-g0.1": ("1e3", "0.1", ""), "lam1e2-g0.1": ("1e2", "0.1", ""),
        "lam1e3-g0": ("1e3", "0", ""), "g1e-6": ("1e5", "1e-6", "")}
for name, (lam, gamma, extra) in cfgs.items():
    run = root / "sweep" / name / "inherit-noars/d3"
    if (run / "final.json").exists():
        add(f"inherit-noars {name}", run, lam, gamma, extra)
scratch = json.loads((base / "scratch/d3/final.json").read_text())
print("| run | lambda | gamma | other | final d3 val loss | best val loss seen | steps | wall s |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.4f} | {r[5]:.4f} | {r[6]} | {r[7]:.0f} |")
print(f"\nscratch d3 (2064 steps): {scratch['val_loss']:.4f}")
fig, ax = plt.subplots(figsize=(8, 5))
colors = plt.cm.tab20.colors
for i, r in enumerate(rows):
    s, v = zip(*r[8])
    grow = r[0].startswith("grow-only")
    ax.plot(s, v, marker=".", color="k" if grow else colors[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20],
            lw=2.5 if grow else 1.2, ls="-" if i % 2 == 0 else "--",
            label=f"{r[0]} (lam {r[1]}, gamma {r[2]}{', ' + r[3] if r[3] else ''}): {r[4]:.3f}")
ax.axhline(scratch["val_loss"], color="grey", ls=":", label="scratch d3, full budget (2064 steps)")
ax.set_xlabel("step of the inherited d3 rung (1032 = half the scratch budget)")
ax.set_ylabel("val loss (nats/token)")
ax.set_title("d2 -> d3, 8 tokens/param, seed 0: the penalty's strength vs growth alone")
ax.legend(fontsize=7)
ax.grid(alpha=0.3)
out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("val_loss_vs_step.png")
fig.tight_layout(); fig.savefig(out, dpi=110)
print("plot:", out)
