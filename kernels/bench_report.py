"""Turn the optimizer-step benchmark JSON (pytest-benchmark --benchmark-json) into markdown, and
the command line every benchmark's markdown writer shares (`markdown_main`).

    python -m kernels.bench_report docs/results/kernels-bench-cpu-2core-2026-11-23.json \
        -o docs/results/kernels-bench-cpu-2core-2026-11-23.md --device cpu-2core

Ratios are computed from the same run's torch.optim.AdamW(fused=True) row of the same size.
Targets: full inherited step <= 1.35x torch fused AdamW time, >= 85% of its GB/s,
>= 5x faster than the unfused eager composition.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

BASE = "torch_fused_adamw"
ORDER = ["torch_fused_adamw", "kernel_inherited", "kernel_inherited_fisher",
         "kernel_inherited_bf16kappa", "eager_composition", "compiled_composition"]
LABEL = {
    "torch_fused_adamw": "torch AdamW(fused=True) alone",
    "kernel_inherited": "fused inherited step (anchor+kappa+damping)",
    "kernel_inherited_fisher": "fused inherited step + online Fisher",
    "kernel_inherited_bf16kappa": "fused inherited step, kappa in bf16",
    "eager_composition": "eager composition (torch ops + fused AdamW)",
    "compiled_composition": "torch.compile of the composition",
}
TARGET_TIME, TARGET_GBS, TARGET_EAGER = 1.35, 0.85, 5.0


def load_rows(data: dict) -> dict:
    rows = defaultdict(dict)  # n_params -> impl -> row
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {})
        if "impl" not in info:
            continue
        st = b["stats"]
        rows[info["n_params"]][info["impl"]] = dict(
            info=info, median=st["median"], min=st["min"], q1=st["q1"], q3=st["q3"],
            rounds=st["rounds"])
    return rows


def gbs(row) -> float:
    return row["info"]["bytes_per_param"] * row["info"]["n_params"] / row["median"] / 1e9


def ratio(row, base) -> float | None:
    """Time ratio to torch fused AdamW: the paired per-round median when recorded, else the
    ratio of the two tests' medians."""
    if row is base:
        return 1.0
    if "paired_time_ratio" in row["info"]:
        return row["info"]["paired_time_ratio"]
    return row["median"] / base["median"] if base else None


def gbs_ratio(row, base) -> float | None:
    r = ratio(row, base)
    if r is None:
        return None
    return row["info"]["bytes_per_param"] / BYTES_BASE / r


BYTES_BASE = 28


def render(data: dict, device: str | None = None) -> str:
    rows = load_rows(data)
    mi = data.get("machine_info", {})
    first = next((r for by in rows.values() for i, r in by.items() if i.startswith("kernel")),
                 next((r for by in rows.values() for r in by.values()), None))
    info = first["info"] if first else {}
    out = [f"# Fused optimizer step benchmark ({device or info.get('device', '?')})", ""]
    out.append(f"- date: {data.get('datetime', '?')}")
    out.append(f"- device: {info.get('device_name', '?')} ({info.get('device', '?')}); "
               f"cpu: {mi.get('cpu', {}).get('brand_raw', '?')}")
    out.append(f"- torch {info.get('torch', '?')}; kernel backend: {info.get('backend', '?')}"
               + (f" ({info.get('simd')})" if info.get("simd") else ""))
    out.append("- times are per optimizer step over one flat fp32 tensor; GB/s from the useful "
               "bytes per parameter (single pass); ratios against torch fused AdamW of the same "
               "size in the same run. 'paired': each timed round of a variant follows one torch fused "
               "AdamW step on the same tensors, and the ratio is the median of the per-round "
               "ratios (robust to load drifting between tests on a shared machine); the targets "
               "use it. min is the least-disturbed sample.")
    out.append("- floor: at equal GB/s the inherited step takes 36/28 = 1.29x torch fused AdamW's "
               "time (it must also read the anchor and kappa); 34/28 = 1.21x with kappa in bf16.")
    out.append("")
    verdicts = []
    for n in sorted(rows):
        by = rows[n]
        base = by.get(BASE)
        out.append(f"## {n / 2**20:g}M parameters")
        out.append("")
        out.append("| variant | B/param | median ms | min ms | IQR ms | GB/s | x torch fused time "
                   "(paired) | paired q1-q3 | % torch fused GB/s (paired) | x time (unpaired "
                   "medians) | rounds |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for impl in ORDER:
            r = by.get(impl)
            if r is None:
                continue
            tr, gr = ratio(r, base), gbs_ratio(r, base)
            qq = r["info"].get("paired_time_ratio_q1_q3")
            out.append(f"| {LABEL.get(impl, impl)} | {r['info']['bytes_per_param']} | "
                       f"{1e3 * r['median']:.2f} | {1e3 * r['min']:.2f} | "
                       f"{1e3 * (r['q3'] - r['q1']):.2f} | {gbs(r):.1f} | "
                       f"{'-' if tr is None else f'{tr:.2f}'} | "
                       f"{'-' if not qq else f'{qq[0]:.2f}-{qq[1]:.2f}'} | "
                       f"{'-' if gr is None else f'{100 * gr:.0f}%'} | "
                       f"{r['median'] / base['median']:.2f} | {r['rounds']} |" if base else
                       f"| {LABEL.get(impl, impl)} | ... | {1e3 * r['median']:.2f} | |||||||")
        out.append("")
        k, e, c = by.get("kernel_inherited"), by.get("eager_composition"), \
            by.get("compiled_composition")
        if k and base:
            tr, gr = ratio(k, base), gbs_ratio(k, base)
            verdicts.append(f"- {n / 2**20:g}M: inherited step = {tr:.2f}x torch fused AdamW time "
                            f"(target <= {TARGET_TIME}: {'met' if tr <= TARGET_TIME else 'NOT met'})"
                            f"; {100 * gr:.0f}% of its GB/s (target >= {100 * TARGET_GBS:.0f}%: "
                            f"{'met' if gr >= TARGET_GBS else 'NOT met'})")
        if k and e:
            sp = ratio(e, base) / ratio(k, base) if base else e["median"] / k["median"]
            verdicts.append(f"- {n / 2**20:g}M: {sp:.1f}x faster than the eager composition "
                            f"(target >= {TARGET_EAGER:g}x: {'met' if sp >= TARGET_EAGER else 'NOT met'})")
        kb = by.get("kernel_inherited_bf16kappa")
        if kb and base:
            verdicts.append(f"- {n / 2**20:g}M: with kappa in bf16 (34 B/param): "
                            f"{ratio(kb, base):.2f}x torch fused AdamW time")
        if k and c:
            verdicts.append(f"- {n / 2**20:g}M: torch.compile of the composition takes "
                            f"{ratio(c, base) / ratio(k, base):.2f}x the inherited step's time")
    out.append("## Targets")
    out.append("")
    out.extend(verdicts or ["- (no kernel rows)"])
    out.append("")
    return "\n".join(out)


def markdown_main(render_fn, description: str, argv=None, *, note: bool = False) -> None:
    """The command line of a benchmark's markdown writer: the pytest-benchmark JSON in, the
    markdown of `render_fn(data, device[, note])` to -o or stdout."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("json_path")
    ap.add_argument("-o", "--output", help="markdown file (default: print)")
    ap.add_argument("--device", default=None, help="device label for the title")
    if note:
        ap.add_argument("--note", default=None, help="a note printed under the header (e.g. machine load)")
    args = ap.parse_args(argv)
    extra = (args.note,) if note else ()
    text = render_fn(json.loads(Path(args.json_path).read_text()), args.device, *extra)
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text)


def main(argv=None):
    markdown_main(render, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
