"""The study's report files: OUT/report.md, OUT/summary.json and the saving-against-growth-factor plots,
from the measured ladders (launch/study.py). The numbers are engine/analysis/study.py's (pure); this
module only summarizes each (seed, recipe) ladder with engine/analysis/report.summarize and writes.

`sc` is the study's config (engine/ladder/study.StudyConfig; read by attribute: depths, recipes,
seeds, tune_seed, out, preset, ratio), `protocol` the frozen protocol.json, `measured`
{seed: {recipe: (LadderConfig, results)}} and `labels` {recipe: its arm label in those results}.
"""
from __future__ import annotations

import time
from pathlib import Path

from engine.analysis.report import summarize
from engine.analysis.study import (answer_table, equal_budget_differences, growth_factor_fit, nanochat_growth_factors,
                                   paired_differences, plot_growth_factor_fit, render_study_markdown, saving_points,
                                   transfer_section)
from engine.train.checkpoint import write_json_atomic

def write_study_report(sc, protocol: dict, measured: dict, labels: dict[str, str], baseline: str,
                       command: str, dest: Path | None = None, note: str | None = None) -> Path:
    """Write the report files into `dest` (default sc.out); return report.md's path. Every recipe but
    `baseline` is paired against it; `command` is the command line that regenerates the report (rerunning
    it trains nothing new); `note`, when given, opens the report (an interim report says so there)."""
    out = Path(dest or sc.out)
    out.mkdir(parents=True, exist_ok=True)
    per_seed = {seed: {r: summarize(lc, results) for r, (lc, results) in by_recipe.items()}
                for seed, by_recipe in measured.items()}
    table = answer_table(per_seed, labels, sc.depths)
    paired = [row for r in sc.recipes if r != baseline for row in paired_differences(per_seed, labels, r, baseline)]
    fits, plots = {}, []
    for r in sc.recipes:
        used, _bounds = saving_points(table, r)
        points = [(p["growth_factor"], p["saving"]) for p in used]
        fits[r] = growth_factor_fit(points, nanochat_growth_factors())
        name = f"saving_vs_growth_{r}.png"
        plot_growth_factor_fit(fits[r], points, out / name, title=f"{r}: marginal saving against growth factor")
        plots.append(name)
    tuning = [{**row, "seed": sc.tune_seed} for row in protocol["tuned"]["tried"]]
    transfers = transfer_section(table, sc.recipes)
    equal = [row for r in sc.recipes for row in equal_budget_differences(per_seed, labels, r)]
    lines = render_study_markdown(table, paired, fits, tuning, title=_title(sc), transfers=transfers,
                                  equal_budget=equal)
    lines[2:2] = ([f"**{note}**", ""] if note else []) + _preamble(sc, protocol) + [f"Regenerate: `{command}`", ""]
    lines += [f"![{p}]({p})" for p in plots]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    write_json_atomic(out / "summary.json", {"command": command, "answer": table, "paired": paired, "fits": fits,
                                             "transfers": transfers, "equal_budget": equal, "note": note,
                                             "protocol": protocol, "per_seed": per_seed, "labels": labels,
                                             "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())})
    return out / "report.md"


def _title(sc) -> str:
    return (f"Study: d{sc.depths[0]}..d{sc.depths[-1]}, {sc.preset}, ratio {sc.ratio:g}, "
            f"recipes {', '.join(sc.recipes)}, seeds {', '.join(map(str, sc.seeds))}")


def _preamble(sc, protocol: dict) -> list[str]:
    """What the numbers are, in three lines: the protocol, the tuned values, the bracket edges."""
    tuned = protocol["tuned"]
    scratch = ", ".join(f"d{d} x{m:g}" for d, m in tuned["scratch_lr_mult"].items())
    grown = "; ".join(f"{r}: " + ", ".join(f"d{d} x{m:g}" for d, m in per.items())
                      for r, per in tuned["inherit_lr_mult"].items())
    edges = tuned.get("edges") or []
    measured = protocol["commits"]["measured"]  # the study's commit(s) once every seed finished; none before
    return [f"Protocol frozen before any measured run ({Path(sc.out) / 'protocol.json'}; code "
            f"{protocol['commits'].get('tuned')}, "
            f"{'measured with ' + ', '.join(measured) if measured else 'measured seeds still training'}); "
            f"{_tuned_where(sc)}. Scratch peak-LR multipliers: {scratch}. Grown rungs' "
            f"multipliers (of their depth's scratch peak): {grown}."
            + (f" Brackets left at an edge (--accept-edge): {'; '.join(edges)}." if edges else ""), "",
            *_replication_lines(protocol.get("replicates")),
            _corpus_line(protocol["settings"].get("corpus") or {}), ""]


def _tuned_where(sc) -> str:
    if sc.tuned_from is None:
        return f"tuned on seed {sc.tune_seed}, never reported"
    src = sc.tuned_from
    return (f"tuned values taken as they were frozen in {src['file']} (--reuse-tuned: tuned there on seed "
            f"{src['tune_seed']}, corpus `{src['corpus']}`; nothing tuned here)")


def _replication_lines(replicates: dict | None) -> list[str]:
    if not replicates:
        return []
    changed = ", ".join(f"`{c}`" for c in replicates["changed"]) or "nothing"
    return [f"Replicates the protocol {replicates['file']} (settings sha256 {replicates['settings_sha256'][:12]}); "
            f"settings changed here: {changed}.", ""]


def _corpus_line(corpus: dict) -> str:
    """The corpus by its content: its cache key (a hash of the source's bytes), tokenizer and token counts."""
    tokens = corpus.get("tokens") or {}
    counts = ", ".join(f"{n:,} {split}" for split, n in tokens.items())
    return (f"Corpus: `{corpus.get('data')}`, cache key `{corpus.get('cache_key')}` (its source's content), "
            f"tokenizer `{str(corpus.get('tokenizer_hash'))[:16]}`, tokens: {counts or 'unknown'}.")
