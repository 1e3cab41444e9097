#!/usr/bin/env bash
# The commands behind docs/results/2026-12-01-budget-curves-cpu.md (2-core CPU, one thread per job).
# Every command resumes after any interruption and skips finished runs; recipes share one OUT per
# seed (and its scratch rungs), each grown arm in its own directory named by its recipe.
set -euo pipefail
cd "$(dirname "$0")/../../.."
COMMON=(--ratio 8 --scratch-budgets 0.25,0.5,0.75,1 --inherit-budgets 0.1,0.2,0.35,0.5,0.7,1
        --eval-tokens 131072 --ckpt-every 200 --no-progress
        --lr-mult 1)  # the preset's LRs as they ran here (cpu-tiny defaults to x0.5 since 2026-12-02)
DEPTHS=${DEPTHS:-2:3}
ladder() {  # ladder SEED [recipe flags...]: d2 -> d3 (DEPTHS), scratch and grow-only with a recipe
  local seed=$1; shift
  OMP_NUM_THREADS=1 .venv/bin/python launch/miniseries.py --depths "$DEPTHS" --arms scratch,grow-only "${COMMON[@]}" \
      --seed "$seed" --out "runs/r8/seed$seed" "$@"
}
case "${1:-}" in
  base) ladder 0 & ladder 1 & wait ;;                       # exact growth, fresh Adam, restart, LR x1
  screen-a) LADDER_RUN_LOCK=off ladder 0 --data-order continue; LADDER_RUN_LOCK=off ladder 0 --optimizer-state carry ;;
  screen-b) LADDER_RUN_LOCK=off ladder 0 --inherit-lr-mult 2; LADDER_RUN_LOCK=off ladder 0 --grow-from stable ;;
  confirm) ladder 1 --data-order continue ;;                  # the screen's best recipe, second seed
  d4) DEPTHS=2:4; ladder 0 & ladder 1 & wait ;;              # the third rung on top of `base` (d2, d3 skipped)
  collect-d4)  # after `d4` finished for SEED (default 0): its report with the d4 rung, copied here
    seed=${SEED:-0}; dst=docs/results/2026-12-01-budget-curves/seed$seed-d4; DEPTHS=2:4
    LADDER_RUN_LOCK=off ladder "$seed"; mkdir -p "$dst"
    cp runs/r8/seed$seed/{report.md,summary.json,curve_d3.png,curve_d4.png} "$dst/"
    .venv/bin/python docs/results/2026-12-01-budget-curves/screen_table.py "runs/r8/seed$seed" --depth 4 > "$dst/table.md" ;;
  collect-d4-seeds)  # after `d4` finished for both seeds: the two-seed report (mean, t-interval) of d2..d4
    dst=docs/results/2026-12-01-budget-curves/d4-two-seeds; mkdir -p "$dst"
    LADDER_RUN_LOCK=off OMP_NUM_THREADS=1 .venv/bin/python launch/miniseries.py --depths 2:4 --arms scratch,grow-only \
        "${COMMON[@]}" --seeds 0,1 --out runs/r8
    cp runs/r8/{report.md,summary.json} "$dst/" ;;
  nanochat)  # WSD (c = 0.2) against nanochat's schedule (65% warmdown) at full budget, scratch d2
    for seed in 0 1; do
      OMP_NUM_THREADS=1 .venv/bin/python launch/miniseries.py --depths 2 --arms scratch --schedule nanochat \
          "${COMMON[@]}" --seed "$seed" --out "runs/r8-nanochat/seed$seed"
    done ;;
  collect)  # regenerate the reports (nothing retrains) and copy the small files into this folder
    dst=docs/results/2026-12-01-budget-curves
    LADDER_RUN_LOCK=off OMP_NUM_THREADS=1 .venv/bin/python launch/miniseries.py --depths 2:3 --arms scratch,grow-only \
        "${COMMON[@]}" --seeds 0,1 --out runs/r8
    for seed in 0 1; do
      mkdir -p "$dst/seed$seed"; cp runs/r8/seed$seed/{report.md,summary.json,curve_d3.png} "$dst/seed$seed/"
      LADDER_RUN_LOCK=off ladder "$seed" --data-order continue
      mkdir -p "$dst/seed$seed-continue"; cp runs/r8/seed$seed/{report.md,summary.json,curve_d3.png} "$dst/seed$seed-continue/"
      .venv/bin/python "$dst/screen_table.py" "runs/r8/seed$seed" > "$dst/screen-seed$seed.md"
    done
    cp runs/r8/{report.md,summary.json} "$dst/"
    mkdir -p "$dst/nanochat-seed0"; cp runs/r8-nanochat/seed0/{report.md,summary.json} "$dst/nanochat-seed0/" ;;
  *) echo "usage: $0 base|screen-a|screen-b|confirm|d4|collect-d4|collect-d4-seeds|nanochat|collect" >&2; exit 2 ;;
esac
