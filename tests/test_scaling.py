"""Scaling-law fits (engine/analysis/scaling.py) and the sweep/fit CLI (launch/scaling_laws.py)."""
from __future__ import annotations

import csv
import json
import math
import sys
import textwrap

import numpy as np
import pytest

from engine.analysis.scaling import fit_chinchilla, isoflop_analysis, optimal_allocation, predict, ratio_at

TRUE = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)  # Hoffmann et al. 2022's fit


def grid(n_sizes=8, ratios=(2, 5, 10, 20, 50)):
    Ns = np.logspace(5, 8, n_sizes)
    N = np.array([n for n in Ns for _ in ratios])
    D = np.array([n * r for n in Ns for r in ratios])
    return N, D


def test_recovers_noiseless_parameters():
    N, D = grid()
    fit = fit_chinchilla(N, D, predict(TRUE, N, D), n_bootstrap=0)
    for k, v in TRUE.items():
        assert fit[k] == pytest.approx(v, rel=0.01), k
    assert fit["n_points"] == len(N) and fit["huber_delta"] == 1e-3
    assert fit["ci"]["E"] is None and fit["n_bootstrap"] == 0
    # derived allocation, checked against the closed form
    C = fit["ratio_opt_compute"]
    assert C == pytest.approx(float(np.max(6 * N * D)))
    a, b = TRUE["alpha"], TRUE["beta"]
    G = (a * TRUE["A"] / (b * TRUE["B"])) ** (1 / (a + b))
    n_opt = G * (C / 6) ** (b / (a + b))
    assert fit["N_opt"] == pytest.approx(n_opt, rel=0.02)
    assert fit["ratio_opt"] == pytest.approx((C / 6) / n_opt**2, rel=0.03)
    assert fit["a_exp"] == pytest.approx(b / (a + b), rel=0.01)


def test_allocation_is_the_constrained_minimum():
    C = 1e21
    n_opt, d_opt = optimal_allocation(TRUE, C)
    assert 6 * n_opt * d_opt == pytest.approx(C)
    for f in (0.9, 1.1):  # moving along the iso-compute curve raises the loss
        assert predict(TRUE, n_opt * f, C / (6 * n_opt * f)) > predict(TRUE, n_opt, d_opt)
    assert ratio_at(TRUE, C) == pytest.approx(d_opt / n_opt)
    assert predict(TRUE, 1e9, 2e10) == pytest.approx(1.69 + 406.4 / 1e9**0.34 + 410.7 / 2e10**0.28)


def test_noisy_fit_interval_covers_truth():
    N, D = grid()
    rng = np.random.default_rng(1)
    L = predict(TRUE, N, D) * np.exp(rng.normal(0.0, 0.005, len(N)))
    fit = fit_chinchilla(N, D, L, n_bootstrap=30, seed=0, n_refine=16)
    assert fit["n_bootstrap"] == 30
    for k, v in TRUE.items():
        lo, hi = fit["ci"][k]
        assert lo <= v <= hi, (k, lo, v, hi)
    lo, hi = fit["ci"]["ratio_opt"]
    assert lo <= fit["ratio_opt"] <= hi
    # same seed, same intervals
    a, b = (fit_chinchilla(N, D, L, n_bootstrap=3, seed=5, n_refine=4) for _ in range(2))
    assert a["ci"] == b["ci"]


@pytest.mark.parametrize(
    "N, D, L, match",
    [
        ([1e6, 2e6, 3e6, 4e6], [1e7, 2e7, 3e7, 4e7], [3.0, 2.9, 2.8, 2.7], "5 distinct"),
        ([1e6] * 6, [1e7, 2e7, 3e7, 4e7, 5e7, 6e7], [3.0] * 6, "degenerate"),
        ([1e6, 2e6, 3e6, 4e6, 5e6, 6e6], [1e7] * 6, [3.0] * 6, "degenerate"),
        ([1e6, 1e6, 1e6, 1e6, 1e6, 2e6], [1e7] * 5 + [2e7], [3.0] * 6, "5 distinct"),
        ([1e6, 2e6, 3e6, 4e6, -5e6], [1e7] * 5, [3.0] * 5, "positive"),
        ([1e6, 2e6, 3e6, 4e6, 5e6], [1e7, 2e7, 3e7, 4e7, 5e7], [3.0, 2.9, float("nan"), 2.7, 2.6], "non-finite"),
        ([1e6, 2e6, 3e6, 4e6, 5e6], [1e7, 2e7, 3e7, 4e7], [3.0] * 5, "same length"),
    ],
)
def test_bad_input_errors(N, D, L, match):
    with pytest.raises(ValueError, match=match):
        fit_chinchilla(N, D, L, n_bootstrap=0)


def test_isoflop_recovers_known_parabolas():
    # loss = L0(C) + k (ln N - ln N*(C))^2 with N*(C) = 0.3 C^0.45, D = C / (6N)
    rows = []
    for C in (1e15, 1e16, 1e17, 1e18):
        n_star = 0.3 * C**0.45
        for f in (0.25, 0.5, 1.0, 2.0, 4.0, 8.0):
            n = n_star * f * 1.3  # off-centre sampling
            rows.append({"flops_budget": C, "params": n, "tokens": C / (6 * n), "loss": 3.0 - 0.1 * math.log10(C) + 0.05 * math.log(n / n_star) ** 2})
    out = isoflop_analysis(rows)
    assert out["a"] == pytest.approx(0.45, rel=1e-6)
    assert out["b"] == pytest.approx(0.55, rel=1e-6)
    assert out["N_coef"] == pytest.approx(0.3, rel=1e-5)
    for b in out["budgets"]:
        n_star = 0.3 * b["flops_budget"] ** 0.45
        assert b["ok"] and b["interior"]
        assert b["N_opt"] == pytest.approx(n_star, rel=1e-6)
        assert b["D_opt"] == pytest.approx(b["flops_budget"] / (6 * n_star), rel=1e-6)
        assert b["ratio"] == pytest.approx(b["D_opt"] / b["N_opt"])
    assert out["largest_budget"] == 1e18 and out["ratio_at_largest"] == out["budgets"][-1]["ratio"]


def test_isoflop_degenerate_budgets():
    rows = [{"flops_budget": 1e15, "params": n, "tokens": 1e15 / (6 * n), "loss": l} for n, l in ((1e5, 3.0), (2e5, 2.9))]
    rows += [{"flops_budget": 1e16, "params": n, "tokens": 1e16 / (6 * n), "loss": l} for n, l in ((1e5, 2.0), (2e5, 2.5), (4e5, 2.0))]
    out = isoflop_analysis(rows)
    assert [b["ok"] for b in out["budgets"]] == [False, False]  # too few sizes; concave
    assert out["a"] is None and out["ratio_at_largest"] is None
    with pytest.raises(ValueError, match="params"):
        isoflop_analysis([{"flops_budget": 1e15, "tokens": 1.0, "loss": 2.0}])
    with pytest.raises(ValueError):
        isoflop_analysis([{"flops_budget": 1e15, "params": -1.0, "tokens": 1.0, "loss": 2.0}])
    with pytest.raises(ValueError):
        isoflop_analysis([])


# ---- the CLI --------------------------------------------------------------------------------

from launch import scaling_laws as cli  # noqa: E402

STUB = textwrap.dedent(
    """
    import argparse, json, os, sys
    sys.path.insert(0, {repo!r})
    from models.config import model_config
    p = argparse.ArgumentParser()
    for a in ("--depth", "--tokens", "--seed"): p.add_argument(a, type=int, required=True)
    for a in ("--preset", "--data", "--out"): p.add_argument(a, required=True)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--seq-len", type=int)
    a = p.parse_args()
    with open({calls!r}, "a") as f:
        f.write(json.dumps({{"depth": a.depth, "tokens": a.tokens, "resume": a.resume, "out": a.out, "seq_len": a.seq_len}}) + "\\n")
    if str(a.depth) == os.environ.get("STUB_FAIL_DEPTH"):
        os.makedirs(os.path.join(a.out, "ckpt"), exist_ok=True)  # an interrupted run
        sys.exit(3)
    cfg = model_config(a.preset, a.depth)
    N = cfg.scaling_params
    loss = 1.5 + 400.0 / N ** 0.34 + 400.0 / a.tokens ** 0.28
    os.makedirs(a.out, exist_ok=True)
    json.dump(dict(depth=a.depth, params=cfg.num_params, scaling_params=N, tokens=a.tokens,
                   flops=a.tokens * cfg.flops_per_token, val_loss=loss, val_bpb=loss / 2.0, wall_s=0.1),
              open(os.path.join(a.out, "final.json"), "w"))
    """
)


@pytest.fixture
def stub_trainer(tmp_path, monkeypatch):
    calls = tmp_path / "calls.jsonl"
    script = tmp_path / "stub_train.py"
    script.write_text(STUB.format(repo=str(cli.REPO), calls=str(calls)))
    monkeypatch.setenv(cli.TRAINER_ENV, f"{sys.executable} {script}")

    def read_calls():
        return [json.loads(l) for l in calls.read_text().splitlines()] if calls.exists() else []

    return read_calls


SWEEP = ["--preset", "cpu-tiny", "--depths", "1:6", "--flops", "1e13,3e13", "--n-bootstrap", "5"]


def test_sweep_runs_resumes_and_fits(tmp_path, stub_trainer, monkeypatch):
    out = tmp_path / "sweep"
    monkeypatch.setenv("STUB_FAIL_DEPTH", "4")
    assert cli.main(SWEEP + ["--out", str(out), "--no-plots", "--n-bootstrap", "0"]) == 1  # d4 fails at both budgets
    calls = stub_trainer()
    assert len(calls) == 12 and not any(c["resume"] for c in calls)
    d3 = next(c for c in calls if c["depth"] == 3 and "c1e13" in c["out"])
    assert d3["tokens"] == int(1e13 // 4055040) and d3["out"].endswith("c1e13/d3")
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 10

    monkeypatch.delenv("STUB_FAIL_DEPTH")
    assert cli.main(SWEEP + ["--out", str(out)]) == 0
    calls = stub_trainer()[12:]
    assert sorted((c["depth"], c["resume"]) for c in calls) == [(4, True), (4, True)]  # only the missing, resumed
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and set(rows[0]) >= {"flops_budget", "depth", "params", "tokens", "loss"}
    res = json.loads((out / "scaling.json").read_text())
    ch, iso = res["chinchilla"], res["isoflop"]
    for k in ("E", "A", "B", "alpha", "beta", "ratio_opt", "ci"):
        assert k in ch
    assert ch["n_points"] == 12 and res["failed"] == []
    assert all(b["ok"] for b in iso["budgets"]) and iso["a"] is not None
    for name in ("scaling.md", "isoflop.png", "law.png"):
        assert (out / name).stat().st_size > 0
    assert "Approach 2" in (out / "scaling.md").read_text()

    # nothing left to do: a third run trains nothing
    assert cli.main(SWEEP + ["--out", str(out), "--no-plots", "--n-bootstrap", "0"]) == 0
    assert len(stub_trainer()) == 14


@pytest.mark.parametrize(
    "bad",
    [
        ["--depths", "5:2"],
        ["--depths", "a,b"],
        ["--depths", "0:3"],
        ["--depths", "2,2"],
        ["--flops", "-1e13"],
        ["--flops", "abc"],
        ["--flops", "1e5"],  # too small for even one sequence
        ["--preset", "nope"],
    ],
)
def test_sweep_bad_args_fail_before_compute(tmp_path, stub_trainer, bad, capsys):
    args = {"--preset": "cpu-tiny", "--depths": "1:3", "--flops": "1e13"}
    args.update(dict(zip(bad[::2], bad[1::2])))
    argv = [x for kv in args.items() for x in kv] + ["--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err
    assert stub_trainer() == [] and not (tmp_path / "o").exists()


def test_sweep_seq_len_override(tmp_path, stub_trainer):
    from models.config import model_config

    argv = ["--preset", "cpu-tiny", "--depths", "2,3", "--flops", "1e12", "--seq-len", "64", "--n-bootstrap", "0", "--no-plots"]
    assert cli.main(argv + ["--out", str(tmp_path / "o")]) == 0  # too few points to fit: recorded, not fatal
    calls = stub_trainer()
    assert [(c["depth"], c["seq_len"]) for c in calls] == [(2, 64), (3, 64)]
    assert calls[0]["tokens"] == int(1e12 // model_config("cpu-tiny", 2, seq_len=64).flops_per_token)
    assert "error" in json.loads((tmp_path / "o" / "scaling.json").read_text())["chinchilla"]


def test_parse_depths():
    assert cli.parse_depths("2:5") == [2, 3, 4, 5]
    assert cli.parse_depths("2,3,5") == [2, 3, 5]
    assert cli.budget_tag(1e13) == "1e13" and cli.budget_tag(3e13) == "3e13" and cli.budget_tag(1.5e14) == "1.5e14"


def test_fit_csv_cli(tmp_path, capsys):
    N, D = grid(n_sizes=5, ratios=(3, 10, 30))
    path = tmp_path / "runs.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["params", "tokens", "loss", "note"])
        for n, d in zip(N, D):
            w.writerow([n, d, predict(TRUE, n, d), "x"])
    assert cli.main(["--fit", str(path), "--n-bootstrap", "3"]) == 0
    res = json.loads((tmp_path / "runs.fit.json").read_text())["chinchilla"]
    assert res["alpha"] == pytest.approx(0.34, rel=0.01) and res["ci"]["ratio_opt"] is not None
    assert "ratio_opt" in capsys.readouterr().out
    bad = tmp_path / "bad.csv"
    bad.write_text("params,loss\n1,2\n")
    with pytest.raises(SystemExit):
        cli.main(["--fit", str(bad), "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit) as e:
        cli.main(["--fit", str(tmp_path / "missing.csv")])
    assert e.value.code == 2
