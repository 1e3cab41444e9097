"""Helpers shared by several test files, one module per subject (none of them holds tests):

    runs          launch/train.py and launch/miniseries.py as subprocesses (the flags, env, readers)
    train         in-process training pieces: a tiny model and optimizer, a tiny TrainConfig,
                  non-finite losses and gradients injected into chosen steps
    growth        random token batches; small trained models to grow, cached per process
    text          a synthetic multilingual corpus
    core          a CORE bundle on disk and a byte-level tokenizer for it
    kernel_steps  optimizer-step inputs, backends run side by side, tolerances
    profiling     a fake pynvml, the windows reader, the sampler threads
    scaling       a Chinchilla law and a (params, tokens) grid

ROOT is the repository root.
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
