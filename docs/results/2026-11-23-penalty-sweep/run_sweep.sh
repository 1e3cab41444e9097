#!/bin/bash
# The penalty sweep of 2026-11-23: d2 -> d3 at ratio 8, seed 0, arm inherit-noars (growth + penalty, no
# ARS), reusing the finished scratch rungs of the long run (runs/long/seed0, see ../2026-11-23-miniseries-cpu.md)
# so that only the inherited rung trains. Two runs at a time, one core each.
cd "$(dirname "$0")/../../.."
run() {
  name=$1; shift
  out=runs/sweep/$name
  mkdir -p $out && [ -d $out/scratch ] || cp -r runs/long/seed0/scratch $out/
  OMP_NUM_THREADS=1 .venv/bin/python launch/miniseries.py --depths 2:3 --ratio 8 --arms scratch,inherit-noars \
    --ckpt-every 200 --seed 0 --out $out --no-progress --lr-mult 1 "$@" > runs/sweep/$name.log 2>&1
}
mkdir -p runs/sweep
( run g0.01 --gamma 0.01; run g0 --gamma 0; run g0.1-linear --gamma 0.1 --penalty-schedule linear
  run lam1e4-g0.1 --lam 1e4 --gamma 0.1; run lam1e2-g0.1 --lam 1e2 --gamma 0.1; run g1e-6 --gamma 1e-6 ) &
( run g0.001 --gamma 0.001; run g0-lam1e7 --gamma 0 --lam 1e7; run svd-g0.01 --gamma 0.01 --subspace svd --svd-energy 0.9
  run lam1e3-g0.1 --lam 1e3 --gamma 0.1; run lam1e3-g0 --lam 1e3 --gamma 0 ) &
wait
.venv/bin/python docs/results/2026-11-23-penalty-sweep/make_report.py
