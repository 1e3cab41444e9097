"""The engine, in layers; each imports only the layers above it in this list.

    runtime/   processes and machines: ranks and sharding, disk space, the run lock
    data/      corpus -> tokenizer -> token shards -> a resumable loader
    inherit/   the method under test: growth, Fisher, the penalty, ARS, what a grown rung starts from
    train/     one run: its config, the training loop, the fused optimizer, schedule, checkpoints, evaluation
    analysis/  what runs mean: run-directory reader, savings math, scaling fits, CORE, reports
    ladder/    the miniseries: arms, rung directories, the order rungs are trained and grown in

`models/`, `kernels/` and `profiling/` sit below the engine; `launch/` (the command lines) above it.
"""
