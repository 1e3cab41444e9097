"""Scaling-law fits for the ladder: Chinchilla approaches 2 and 3.

Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models" (arXiv:2203.15556):

* Approach 3 (section 3.3, appendix D.2) models the final loss of a run with N parameters trained
  on D tokens as

      L(N, D) = E + A / N^alpha + B / D^beta

  and fits it by minimising the Huber loss (delta = 1e-3) between the *log* of the prediction and
  the log of the observed loss, with the prediction written as a log-sum-exp so that the
  optimiser works on unconstrained quantities:

      log L_hat = LSE(a - alpha log N, b - beta log D, e),   A = exp(a), B = exp(b), E = exp(e)

  minimised with L-BFGS from a grid of starting points, keeping the best. Under the 6ND
  approximation of training compute (C = 6 N D) the law gives the compute-optimal allocation

      N_opt(C) = G (C/6)^(beta/(alpha+beta)),  D_opt(C) = G^-1 (C/6)^(alpha/(alpha+beta)),
      G = (alpha A / (beta B))^(1/(alpha+beta)),

  so the compute-optimal tokens-per-parameter ratio D_opt/N_opt = (C/6)^((alpha-beta)/(alpha+beta))
  / G^2 depends on C unless alpha == beta. We report it at a stated compute.
  Confidence intervals come from a bootstrap over the runs (rows resampled with replacement),
  95% percentile intervals, as in Besiroglu et al. 2024 ("Chinchilla Scaling: A replication
  attempt", arXiv:2404.10102), who showed that the intervals matter when few runs are fitted.

* Approach 2 (section 3.2, "IsoFLOP profiles"): for each compute budget C, train several model
  sizes for C FLOPs each, fit a parabola to the final loss as a function of log N, take its
  minimum as N_opt(C), and fit power laws N_opt ∝ C^a and D_opt ∝ C^b by least squares in log
  space. (Hoffmann et al. found a = 0.49, b = 0.51.)

Everything here is numpy/scipy only: no torch, so the fits can run anywhere.
"""
from __future__ import annotations

import contextlib
import ctypes
import itertools
import math
import re
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp

HUBER_DELTA = 1e-3  # Hoffmann et al. 2022, appendix D.2
PARAM_NAMES = ("E", "A", "B", "alpha", "beta")

# Initialisation grid of Hoffmann et al. 2022 (appendix D.2): alpha, beta in {0, 0.5, ..., 2},
# e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}. 5*5*5*6*6 = 4500 starts.
PAPER_GRID = {
    "alpha": np.arange(0.0, 2.01, 0.5),
    "beta": np.arange(0.0, 2.01, 0.5),
    "e": np.arange(-1.0, 1.01, 0.5),
    "a": np.arange(0.0, 25.01, 5.0),
    "b": np.arange(0.0, 25.01, 5.0),
}


# ---------------------------------------------------------------------------------------------
# BLAS threads. scipy's L-BFGS-B calls BLAS on 5-vectors; a multi-threaded OpenBLAS spends ~5 ms
# per call waking its threads on a busy machine (measured: 30x slower fits on a loaded 2-core
# box). The fits are tiny, so they run with one BLAS thread (threadpoolctl if installed, else the
# OpenBLAS entry points of the libraries already loaded; a no-op where neither is found).


@contextlib.contextmanager
def _single_thread_blas():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
        return
    restore = []
    try:
        with open("/proc/self/maps") as f:
            paths = {m.group(1) for line in f if (m := re.search(r"(/\S*openblas\S*\.so\S*)$", line.strip()))}
    except OSError:
        paths = set()
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas", "64_"), ("scipy_openblas", ""), ("openblas", "64_"),
                               ("openblas", "")):
            get, set_ = f"{prefix}_get_num_threads{suffix}", f"{prefix}_set_num_threads{suffix}"
            if hasattr(lib, get) and hasattr(lib, set_):
                n = int(getattr(lib, get)())
                getattr(lib, set_)(1)
                restore.append((getattr(lib, set_), n))
                break
    try:
        yield
    finally:
        for set_, n in restore:
            set_(n)


# ---------------------------------------------------------------------------------------------
# Approach 3: parametric fit


def _as_1d(name: str, values) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    return arr


def _validate(params, tokens, loss) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    N, D, L = _as_1d("params", params), _as_1d("tokens", tokens), _as_1d("loss", loss)
    if not (len(N) == len(D) == len(L)):
        raise ValueError(f"params, tokens and loss must have the same length, got {len(N)}, {len(D)}, {len(L)}")
    for name, arr in (("params", N), ("tokens", D), ("loss", L)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains non-finite values (NaN or inf)")
        if np.any(arr <= 0):
            raise ValueError(f"{name} must be strictly positive (got min {arr.min():g})")
    n_distinct = len({(float(n), float(d)) for n, d in zip(N, D)})
    if n_distinct < 5:
        raise ValueError(
            f"need at least 5 distinct (params, tokens) points to fit the 5-parameter law, got {n_distinct}"
        )
    if len(np.unique(N)) < 2 or len(np.unique(D)) < 2:
        raise ValueError(
            "degenerate data: params and tokens must each take at least 2 distinct values "
            f"(got {len(np.unique(N))} distinct params, {len(np.unique(D))} distinct tokens)"
        )
    return N, D, L


def _huber_objective(theta: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray, delta: float):
    """Sum of Huber(delta) losses of log-residuals, and its gradient in (a, b, e, alpha, beta).

    Scaled by 1/delta^2 so that a residual of ~delta costs ~1: scipy's L-BFGS stopping rules are
    relative to max(|f|, 1) and would otherwise stop on the tiny raw values (~1e-7).
    Written out by hand (no scipy logsumexp): this runs ~10^5 times per bootstrap."""
    a, b, e, alpha, beta = theta
    t0 = a - alpha * logN
    t1 = b - beta * logD
    m = np.maximum(np.maximum(t0, t1), e)
    x0, x1, x2 = np.exp(t0 - m), np.exp(t1 - m), np.exp(e - m)
    z = x0 + x1 + x2
    r = m + np.log(z) - logL
    w0, w1, w2 = x0 / z, x1 / z, x2 / z  # softmax weights = d LSE / d t
    absr = np.abs(r)
    quad = absr <= delta
    f = np.where(quad, 0.5 * r * r, delta * (absr - 0.5 * delta))
    dr = np.where(quad, r, delta * np.sign(r))  # d huber / d r
    g0, g1 = dr * w0, dr * w1
    grad = np.array([g0.sum(), g1.sum(), (dr * w2).sum(), -(g0 @ logN), -(g1 @ logD)])
    s = 1.0 / (delta * delta)
    return f.sum() * s, grad * s


def _grid_starts(grid: Mapping[str, Sequence[float]]) -> np.ndarray:
    """All combinations of the grid, as rows (a, b, e, alpha, beta)."""
    return np.array(list(itertools.product(grid["a"], grid["b"], grid["e"], grid["alpha"], grid["beta"])),
                    dtype=np.float64)


def _objective_batch(starts: np.ndarray, logN, logD, logL, delta) -> np.ndarray:
    """Objective at many parameter vectors at once (vectorised; used to rank the grid)."""
    a, b, e, alpha, beta = (starts[:, i : i + 1] for i in range(5))
    t = np.stack([a - alpha * logN[None], b - beta * logD[None], np.broadcast_to(e, (len(starts), len(logN)))])
    r = logsumexp(t, axis=0) - logL[None]
    absr = np.abs(r)
    f = np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta))
    return f.sum(axis=1) / (delta * delta)


def _lbfgs(theta0, logN, logD, logL, delta):
    res = minimize(
        _huber_objective,
        theta0,
        args=(logN, logD, logL, delta),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 2000, "ftol": 1e-13, "gtol": 1e-8, "maxcor": 20},
    )
    return res.x, float(res.fun)


def _fit_once(logN, logD, logL, delta, starts: np.ndarray, n_refine: int | None) -> tuple[np.ndarray, float]:
    """L-BFGS from the starting points (or from the n_refine best of them by initial objective);
    the best end point is kept."""
    if n_refine is not None and n_refine < len(starts):
        f0 = _objective_batch(starts, logN, logD, logL, delta)
        f0 = np.where(np.isfinite(f0), f0, np.inf)
        starts = starts[np.argsort(f0, kind="stable")[:n_refine]]
    best_x, best_f = None, math.inf
    for theta0 in starts:
        x, f = _lbfgs(theta0, logN, logD, logL, delta)
        if np.all(np.isfinite(x)) and f < best_f:
            best_x, best_f = x, f
    if best_x is None:
        raise RuntimeError("every L-BFGS run diverged; check the data")
    return best_x, best_f


def _theta_to_params(theta: np.ndarray) -> dict[str, float]:
    a, b, e, alpha, beta = (float(v) for v in theta)
    return {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": alpha, "beta": beta}


def optimal_allocation(fit: Mapping, compute) -> tuple[np.ndarray, np.ndarray]:
    """Compute-optimal (N_opt, D_opt) under C = 6 N D for a fitted law (Hoffmann et al. 2022,
    eq. 4 / appendix D.2): N_opt = G (C/6)^(beta/(alpha+beta)), D_opt = C / (6 N_opt)."""
    A, B, alpha, beta = fit["A"], fit["B"], fit["alpha"], fit["beta"]
    C = np.asarray(compute, dtype=np.float64)
    if alpha <= 0 or beta <= 0:
        nan = np.full_like(C, np.nan)
        return nan, nan
    G = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
    N_opt = G * (C / 6.0) ** (beta / (alpha + beta))
    return N_opt, C / (6.0 * N_opt)


def ratio_at(fit: Mapping, compute) -> np.ndarray | float:
    """Compute-optimal tokens per parameter D_opt/N_opt at compute C (FLOPs, C = 6ND)."""
    N_opt, D_opt = optimal_allocation(fit, compute)
    r = D_opt / N_opt
    return float(r) if np.ndim(r) == 0 else r


def predict(fit: Mapping, params, tokens):
    """Loss predicted by a fitted law L(N, D) = E + A/N^alpha + B/D^beta (broadcasts)."""
    N = np.asarray(params, dtype=np.float64)
    D = np.asarray(tokens, dtype=np.float64)
    out = fit["E"] + fit["A"] / N ** fit["alpha"] + fit["B"] / D ** fit["beta"]
    return float(out) if np.ndim(out) == 0 else out


def fit_chinchilla(
    params,
    tokens,
    loss,
    *,
    n_bootstrap: int = 200,
    seed: int = 0,
    compute: float | None = None,
    huber_delta: float = HUBER_DELTA,
    grid: Mapping[str, Sequence[float]] | None = None,
    n_refine: int | None = 64,
    n_refine_bootstrap: int = 4,
) -> dict:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, approach 3).

    Huber loss (delta `huber_delta`, 1e-3 as in the paper) on log L against
    LSE(a - alpha log N, b - beta log D, e); L-BFGS from the paper's initialisation grid (4500
    points). For speed the grid is ranked by its initial objective (one vectorised pass) and
    L-BFGS runs from the `n_refine` best points (None: from all of them, as in the paper); the
    lowest end point is kept.

    Bootstrap: `n_bootstrap` refits on rows resampled with replacement (`seed` fixes the draws;
    resamples with fewer than 5 distinct points are redrawn), each started from the full-data
    optimum and the `n_refine_bootstrap` best grid points; `ci[name] = [2.5%, 97.5%]` percentiles.
    n_bootstrap=0 skips it (`ci` values are then None).

    `compute` (FLOPs, C = 6ND) is where the compute-optimal ratio D_opt/N_opt is reported;
    default: the largest 6ND among the data. Returns a JSON-serialisable dict: E, A, B, alpha,
    beta, a_exp (N_opt ∝ C^a_exp), b_exp (D_opt ∝ C^b_exp), ratio_opt, ratio_opt_compute,
    N_opt, D_opt, ci (per name, also ratio_opt / a_exp / b_exp), n_points, n_distinct,
    huber_delta, objective, n_bootstrap (successful refits), residual_rms (of log L).
    Raises ValueError on fewer than 5 distinct (N, D) points or degenerate data.
    """
    N, D, L = _validate(params, tokens, loss)
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    with _single_thread_blas():
        return _fit_chinchilla(N, D, L, n_bootstrap, seed, compute, huber_delta, grid, n_refine, n_refine_bootstrap)


def _fit_chinchilla(N, D, L, n_bootstrap, seed, compute, huber_delta, grid, n_refine, n_refine_bootstrap) -> dict:
    logN, logD, logL = np.log(N), np.log(D), np.log(L)
    starts = _grid_starts(grid or PAPER_GRID)
    theta, fval = _fit_once(logN, logD, logL, huber_delta, starts, n_refine)
    fit = _theta_to_params(theta)
    C = float(compute) if compute is not None else float(np.max(6.0 * N * D))
    if not C > 0:
        raise ValueError(f"compute must be positive, got {compute!r}")

    def derived(p: Mapping) -> dict[str, float]:
        s = p["alpha"] + p["beta"]
        n_opt, d_opt = optimal_allocation(p, C)
        return {
            "a_exp": p["beta"] / s if s != 0 else float("nan"),
            "b_exp": p["alpha"] / s if s != 0 else float("nan"),
            "ratio_opt": float(d_opt / n_opt),
            "N_opt": float(n_opt),
            "D_opt": float(d_opt),
        }

    out: dict = dict(fit)
    out.update(derived(fit))
    pred = np.log(predict(fit, N, D))
    out.update(
        ratio_opt_compute=C,
        n_points=int(len(N)),
        n_distinct=len({(float(n), float(d)) for n, d in zip(N, D)}),
        huber_delta=huber_delta,
        objective=fval * huber_delta**2,
        residual_rms=float(np.sqrt(np.mean((pred - logL) ** 2))),
        flops_model="C = 6 N D",
    )

    ci_names = list(PARAM_NAMES) + ["a_exp", "b_exp", "ratio_opt"]
    samples: dict[str, list[float]] = {k: [] for k in ci_names}
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        n = len(N)
        done = 0
        attempts = 0
        while done < n_bootstrap and attempts < 10 * n_bootstrap:
            attempts += 1
            idx = rng.integers(0, n, size=n)
            if len({(float(N[i]), float(D[i])) for i in idx}) < 5:
                continue
            # the full-data optimum first, then the best grid points for this resample
            f0 = _objective_batch(starts, logN[idx], logD[idx], logL[idx], huber_delta)
            f0 = np.where(np.isfinite(f0), f0, np.inf)
            sub = np.vstack([theta[None], starts[np.argsort(f0, kind="stable")[:n_refine_bootstrap]]])
            th, _ = _fit_once(logN[idx], logD[idx], logL[idx], huber_delta, sub, None)
            p = _theta_to_params(th)
            p.update(derived(p))
            for k in ci_names:
                samples[k].append(p[k])
            done += 1
    out["n_bootstrap"] = len(samples["E"])
    out["ci_level"] = 0.95
    ci = {}
    for k in ci_names:
        vals = np.asarray(samples[k], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        ci[k] = [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))] if len(vals) else None
    out["ci"] = ci
    return out


# ---------------------------------------------------------------------------------------------
# Approach 2: IsoFLOP profiles


def _budget_minimum(logN: np.ndarray, logD: np.ndarray, loss: np.ndarray) -> dict:
    """Parabola loss = c2 x^2 + c1 x + c0 in x = ln N; its vertex is N_opt. D_opt comes from a
    linear fit of ln D against ln N within the budget (exact when D = C / (k N))."""
    c2, c1, c0 = np.polyfit(logN, loss, 2)
    if not c2 > 0:
        return {"ok": False, "reason": f"parabola opens downward (c2={c2:.3g}): no minimum"}
    x_opt = -c1 / (2.0 * c2)
    s, i = np.polyfit(logN, logD, 1)
    return {
        "ok": True,
        "coef": [float(c2), float(c1), float(c0)],
        "N_opt": float(math.exp(x_opt)),
        "D_opt": float(math.exp(s * x_opt + i)),
        "loss_opt": float(c0 - c1 * c1 / (4.0 * c2)),
        "interior": bool(logN.min() <= x_opt <= logN.max()),
    }


def isoflop_analysis(rows: Iterable[Mapping]) -> dict:
    """Hoffmann et al. 2022 approach 2 (IsoFLOP profiles).

    rows: dicts with flops_budget, params, tokens, loss. For every budget with at least 3
    distinct model sizes, a parabola of loss against ln(params) gives N_opt(C) (its vertex) and
    D_opt(C) (tokens interpolated at N_opt along that budget's runs). With at least 2 usable
    budgets, N_opt ∝ C^a and D_opt ∝ C^b are fitted by least squares in log space.

    Returns {budgets: [{flops_budget, n_runs, ok, N_opt, D_opt, ratio, loss_opt, interior, coef
    | reason}], a, b, N_coef, D_coef (prefactors: N_opt = N_coef * C^a), ratio_at_largest,
    largest_budget}. `interior` is False when the vertex lies outside the sampled sizes (an
    extrapolated minimum: add smaller/larger models). a/b are None with fewer than 2 budgets.
    """
    groups: dict[float, list[tuple[float, float, float]]] = {}
    for r in rows:
        try:
            C, n, d, loss = (float(r[k]) for k in ("flops_budget", "params", "tokens", "loss"))
        except KeyError as e:
            raise ValueError(f"isoflop row is missing the column {e.args[0]!r}: {dict(r)}") from None
        if not all(math.isfinite(v) and v > 0 for v in (C, n, d, loss)):
            raise ValueError(f"isoflop row has non-positive or non-finite values: {dict(r)}")
        groups.setdefault(C, []).append((n, d, loss))
    if not groups:
        raise ValueError("isoflop_analysis needs at least one row")
    budgets = []
    for C in sorted(groups):
        pts = groups[C]
        entry: dict = {"flops_budget": C, "n_runs": len(pts)}
        if len({p[0] for p in pts}) < 3:
            entry.update(ok=False, reason="fewer than 3 distinct model sizes")
        else:
            arr = np.array(pts)
            m = _budget_minimum(np.log(arr[:, 0]), np.log(arr[:, 1]), arr[:, 2])
            entry.update(m)
            if m["ok"]:
                entry["ratio"] = m["D_opt"] / m["N_opt"]
        budgets.append(entry)
    good = [b for b in budgets if b["ok"]]
    out: dict = {"budgets": budgets, "a": None, "b": None, "N_coef": None, "D_coef": None}
    if len(good) >= 2:
        logC = np.log([b["flops_budget"] for b in good])
        a, ia = np.polyfit(logC, np.log([b["N_opt"] for b in good]), 1)
        b_, ib = np.polyfit(logC, np.log([b["D_opt"] for b in good]), 1)
        out.update(a=float(a), b=float(b_), N_coef=float(math.exp(ia)), D_coef=float(math.exp(ib)))
    if good:
        top = good[-1]
        out["largest_budget"] = top["flops_budget"]
        out["ratio_at_largest"] = top["ratio"]
    else:
        out["largest_budget"] = None
        out["ratio_at_largest"] = None
    return out
