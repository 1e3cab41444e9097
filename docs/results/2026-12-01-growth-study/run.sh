#!/usr/bin/env bash
# The commands behind docs/results/2026-12-01-growth-study-cpu.md (2-core CPU, one thread per job).
# Same setup as 2026-12-01-budget-curves (ratio 8, WSD branches, 131,072 validation tokens); every
# command resumes after any interruption and skips finished runs.
set -euo pipefail
cd "$(dirname "$0")/../../.."
# --depth-init identity --data-order restart --optimizer-state fresh: plain growth, the launcher's defaults
# when these runs were made (since 71581a6 launch/miniseries.py defaults to copy, since part 4 also to continue
# and carry); a recipe's own flags come later and win
COMMON=(--ratio 8 --scratch-budgets 0.25,0.5,0.75,1 --inherit-budgets 0.1,0.2,0.35,0.5,0.7,1
        --eval-tokens 131072 --ckpt-every 200 --no-progress --depth-init identity --data-order restart
        --optimizer-state fresh)
DEPTHS=${DEPTHS:-2:3}
# DATA=text:PATH runs the same design on another corpus (#13's second corpus: DATA=text:runs/prose/gcide,
# made by docs/results/2026-12-02-growth-study/get_corpus.sh), under runs/r8-<corpus folder name>/
DATA=${DATA:-builtin}
ROOT=runs/r8-lr; [ "$DATA" = builtin ] || ROOT="runs/r8-$(basename "${DATA#*:}")"
mini() { OMP_NUM_THREADS=1 .venv/bin/python launch/miniseries.py --depths "$DEPTHS" --data "$DATA" "${COMMON[@]}" "$@"; }
# What ran for the report (seed 0 unless said):
#   run.sh lr-scratch 2 0; run.sh lr-scratch 0.5 0; run.sh lr-scratch 0.25 0; run.sh lr-scratch 0.5 1
#   run.sh recipe 0.5 0; run.sh recipe 0.5 1; run.sh recipe 0.5 0 --data-order continue
#   run.sh recipe 0.5 1 --data-order continue; run.sh recipe 0.5 0 --width-init split
#   run.sh recipe 0.5 0 --arms scratch,inherit-noars --lam ewc --gamma 0 --penalty-decay-frac 0.5 --fisher posthoc
#   (2026-12-02) run.sh recipe 0.5 0 --arms scratch,inherit-nopenalty --ars seed
#   run.sh recipe 0.5 0 --inherit-lr-mult 0.5; run.sh recipe 0.5 0 --inherit-lr-mult 2
#   run.sh recipe 0.5 0 --depth-init copy; run.sh recipe 0.5 0 --optimizer-state carry
#   run.sh recipe 0.5 0 --grow-from stable; run.sh recipe 0.5 0 --inherit-warmup-frac 0.15
#   OUT=runs/r8-lr/m0.5/seed0-decoupled run.sh recipe 0.5 0 --arms scratch,inherit-noars --penalty-form decoupled \
#       --lam 1 --gamma 0 --penalty-decay-frac 0.5 --fisher posthoc
#   run.sh recipe 0.5 1 --depth-init copy
#   docs/results/2026-12-02-growth-study/get_corpus.sh; DATA=text:runs/prose/gcide run.sh lr-scratch 1 0
#   DATA=text:runs/prose/gcide run.sh recipe 0.5 0; DATA=text:runs/prose/gcide run.sh recipe 0.5 1 (partial)
#   (part 3) DATA=text:runs/prose/gcide run.sh recipe 0.5 1; DATA=... run.sh recipe 0.5 <0|1> --depth-init copy
#   DEPTHS=2:4 run.sh recipe 0.5 0 --arms scratch; DEPTHS=2:4 run.sh recipe 0.5 0
#   DEPTHS=2:4 run.sh recipe 0.5 0 --depth-init copy
#   (part 3, second sitting) run.sh recipe 0.5 <0|1> --depth-init copy --data-order continue --optimizer-state carry
#   run.sh recipe 0.5 0 --depth-init copy --distill 0.5 [--distill-frac 0.15]
#   DEPTHS=2:4 run.sh recipe 0.5 1 --arms scratch; DEPTHS=2:4 run.sh recipe 0.5 1 (partial)
#   DEPTHS=2:4 run.sh lr-scratch 0.25 0 (partial)
#   (part 4, a new machine: earlier runs/ not carried over) DEPTHS=4 run.sh lr-scratch 0.125 0
#   run.sh recipe 0.5 2 --depth-init copy; run.sh recipe 0.5 2 --depth-init copy --data-order continue --optimizer-state carry
#   (part 5, a new machine; C="--depth-init copy --data-order continue --optimizer-state carry")
#   DEPTHS=4 run.sh lr-scratch 0.25 0; run.sh recipe 0.5 0 $C; run.sh recipe 0.5 2 $C; run.sh recipe 0.5 2
#   (runs/r8-lr/m0.5/seed0/scratch/d4 linked to m0.25/seed0/scratch/d4, each +inherit_lr_mult_d4=K arm's d3 to the
#   combination's grown d3) DEPTHS=2:4 run.sh recipe 0.5 0 $C --lr-mult 0.5,4=0.25 [--inherit-lr-mult 1,4=<2|4>]
#   DEPTHS=2:4 run.sh recipe 0.5 1 $C --lr-mult 0.5,4=0.25 --inherit-lr-mult 1,4=2
#   DATA=text:runs/prose/gcide run.sh recipe 0.5 <0|1> $C
#   (part 6, the same machine as part 5; new arm directories' lower rungs linked to the same recipe's finished rungs)
#   DEPTHS=2:4 run.sh recipe 0.5 2 $C --lr-mult 0.5,4=0.25 --inherit-lr-mult 1,4=2
#   DEPTHS=2:4 run.sh recipe 0.5 1 $C --lr-mult 0.5,4=0.25 --inherit-lr-mult 1,4=4
#   DEPTHS=5 run.sh lr-scratch 0.125 0; DEPTHS=5 run.sh lr-scratch 0.25 0
#   DEPTHS=2:5 run.sh recipe 0.5 0 $C --lr-mult 0.5,4=0.25,5=0.125 --inherit-lr-mult 1,4=4,5=4  (scratch/d5 -> m0.125's)
#   DEPTHS=2:5 run.sh recipe 0.5 0 $C --lr-mult 0.5,4=0.25,5=0.25 --inherit-lr-mult 1,4=4,5=2   (scratch/d5 -> m0.25's)
#   DEPTHS=2:4 run.sh recipe 0.5 2 --lr-mult 0.5,4=0.25 --inherit-lr-mult 1,4=2
#   (started, not finished) DEPTHS=2:4 run.sh recipe 0.5 0 $C --lr-mult 0.5,4=0.25 --inherit-lr-mult 1,4=8
#   DEPTHS=2:4 run.sh recipe 0.5 1 --depth-init copy --lr-mult 0.5,4=0.25 --inherit-lr-mult 1,4=2
#   (part 7, the same machine; m0.5/seed1/scratch/d5 -> m0.25/seed1's, the new seed-1 arm's d3 -> the x0.5 arm's,
#   d4 -> the x1 arm's; seed0-d5x1/scratch -> seed0/scratch, its arm's d3, d4 -> the combination's d3, x1 d4)
#   DEPTHS=5 run.sh lr-scratch 0.25 1; OUT=runs/r8-lr/m0.5/seed0-scratch-d5 DEPTHS=5 run.sh lr-scratch 0.5 0
#   DEPTHS=2:5 run.sh recipe 0.5 1 $C --lr-mult 0.5,4=0.25,5=0.25 --inherit-lr-mult 1,4=4,5=2
#   OUT=runs/r8-lr/m0.5/seed0-d5x1 DEPTHS=2:5 run.sh recipe 0.5 0 $C --lr-mult 0.5,4=0.25,5=0.25 --inherit-lr-mult 1,4=4,5=4
#   and the two unfinished part-6 runs above (finished in part 7)
#   (started at the end of part 7, not finished) DEPTHS=2:4 run.sh recipe 0.5 1 --lr-mult 0.5,4=0.25 --inherit-lr-mult 1,4=2
#   DEPTHS=5 run.sh lr-scratch 0.25 2
#   (part 8, a new machine: runs/ not carried over; m0.5/seed2/scratch/d5 -> m0.25/seed2's, the new d5 arm's
#   d3, d4 -> the +inherit_lr_mult_d4=4 arm's) DEPTHS=5 run.sh lr-scratch 0.25 2
#   DEPTHS=2:4 run.sh recipe 0.5 <2|3> $C --lr-mult 0.5,4=0.25 --inherit-lr-mult 1,4=4
#   DEPTHS=2:5 run.sh recipe 0.5 2 $C --lr-mult 0.5,4=0.25,5=0.25 --inherit-lr-mult 1,4=4,5=2
#   DEPTHS=2:5 run.sh recipe 0.5 2 --lr-mult 0.5,4=0.25,5=0.25 --inherit-lr-mult 1,4=4,5=2   (plain growth to d5)
#   DEPTHS=2:4 run.sh recipe 0.5 3 --lr-mult 0.5,4=0.25 --inherit-lr-mult 1,4=4               (plain growth, seed 3)
#   (started at the end of part 8, not finished) DEPTHS=5 run.sh lr-scratch 0.25 3
case "${1:-}" in
  lr-scratch)  # lr-scratch MULT SEED: the scratch rungs at one global LR multiplier (the baseline's sweep);
    # OUT=DIR puts them elsewhere, when that seed directory holds a recipe whose scratch rungs are links
    mini --arms scratch --lr-mult "$2" --seed "$3" --out "${OUT:-$ROOT/m$2/seed$3}" ;;
  recipe)  # recipe MULT SEED [flags...]: scratch at the tuned MULT plus grow-only with a recipe, one OUT per seed
    m=$2 s=$3; shift 3; out="$ROOT/m$m/seed$s"
    [ "$m" = 1 ] && [ "$DATA" = builtin ] && out="runs/r8/seed$s"  # the untuned preset's runs of the budget-curves report
    # penalty settings are not in an arm's directory name: OUT=... gives one a directory of its own
    # (its scratch/ a link to the seed's, so scratch is trained once)
    if [ -n "${OUT:-}" ]; then mkdir -p "$OUT"; [ -e "$OUT/scratch" ] || ln -s "$(realpath "$out/scratch")" "$OUT/scratch"; out=$OUT; fi
    LADDER_RUN_LOCK=off mini --arms scratch,grow-only --lr-mult "$m" --seed "$s" --out "$out" "$@" ;;
  *) echo "usage: $0 lr-scratch MULT SEED | recipe MULT SEED [flags...]" >&2; exit 2 ;;
esac
