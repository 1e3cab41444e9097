"""A known Chinchilla law and a grid of (params, tokens) points to fit it from."""
from __future__ import annotations

import numpy as np


TRUE = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)  # Hoffmann et al. 2022's fit


def grid(n_sizes=8, ratios=(2, 5, 10, 20, 50)):
    Ns = np.logspace(5, 8, n_sizes)
    N = np.array([n for n in Ns for _ in ratios])
    D = np.array([n * r for n in Ns for r in ratios])
    return N, D
