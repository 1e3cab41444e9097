"""The scaling-law sweep and fit CLI (launch/scaling_laws.py), with a stub trainer: runs, resumes,
fits; bad arguments refused before compute; a CSV fitted on its own."""
from __future__ import annotations

import csv
import json
import sys
import textwrap

import pytest

from engine.analysis.scaling import predict
from launch import scaling_laws as cli
from models.config import model_config
from tests.helpers.scaling import TRUE, grid


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
        f.write(json.dumps({{"depth": a.depth, "tokens": a.tokens, "resume": a.resume, "out": a.out,
                            "seq_len": a.seq_len}}) + "\\n")
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
        return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []

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
    argv = ["--preset", "cpu-tiny", "--depths", "2,3", "--flops", "1e12", "--seq-len", "64", "--n-bootstrap", "0",
            "--no-plots"]
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
