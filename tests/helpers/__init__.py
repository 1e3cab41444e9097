"""Helpers shared by several test files, one module per subject (none of them holds tests):

    runs          launch/train.py and launch/miniseries.py as subprocesses (the flags, env, readers)
    train         in-process training pieces: a tiny model and optimizer, a tiny TrainConfig, both
                  host-sync modes as a parametrization
    faults        a full disk's OSError, token ids overwritten in a cache file, non-finite losses and
                  gradients injected into chosen steps
    strategies    hypothesis strategies for configuration values, edge cases included
    growth        random token batches; small trained models to grow, cached per process
    text          a synthetic multilingual corpus
    core          a CORE bundle on disk and a byte-level tokenizer for it
    kernel_steps  optimizer-step inputs, backends run side by side, tolerances
    profiling     a fake pynvml, the windows reader, the sampler threads
    scaling       a Chinchilla law and a (params, tokens) grid

Fixtures live in conftest.py files: tests/conftest.py (one thread, a small tmpfs), and the folder's
own for fixtures used in one folder only (tests/engine/data/, tests/models/).

ROOT is the repository root.
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
