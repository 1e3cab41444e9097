"""Reliability at scale: SIGKILL anywhere in a miniseries then rerun = an uninterrupted run (bitwise on
CPU); interrupted or corrupted checkpoint writes are named and skipped; non-finite losses and
gradients are skipped, counted, and stop the run after N in a row; non-finite weights are never
checkpointed; every configuration either validates or fails with a message naming the value
(hypothesis); a two-"node" torchrun run on loopback matches one rank."""
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.train import checkpoint as ckpt
from engine.runtime.distributed import DistEnv, init_distributed
from engine.ladder.config import ARMS, LadderConfig
from engine.train.config import TrainConfig, TrainError, validate
from engine.train.trainer import train_rung
from models.config import PRESETS
from tests.test_miniseries import MINI, run_miniseries
from tests.test_trainer import ENV, FAST, ROOT, losses, run_train

KILL_FLAGS = ["--ckpt-every", "5"]  # checkpoints every 5 steps inside each rung


def rung_metrics(out: Path) -> dict[str, list[dict]]:
    return {str(f.parent.relative_to(out)): [json.loads(l) for l in f.read_text().splitlines() if l.strip()]
            for f in sorted(out.glob("*/d*/*/metrics.jsonl"))}


def assert_same_ladder(got: Path, ref: Path):
    """Bitwise: every number that does not measure time is the same float."""
    from launch.soak import LADDER_KEYS, TIMELESS

    s_got, s_ref = (json.loads((d / "summary.json").read_text()) for d in (got, ref))
    assert set(s_got["arms"]) == set(s_ref["arms"])
    for arm in s_ref["arms"]:
        for a, b in zip(s_got["arms"][arm], s_ref["arms"][arm], strict=True):
            assert {k: a.get(k) for k in TIMELESS} == {k: b.get(k) for k in TIMELESS}, arm
    for arm in s_ref["ladder"]:
        for k in LADDER_KEYS:
            assert s_got["ladder"][arm][k] == s_ref["ladder"][arm][k], (arm, k)
    m_got, m_ref = rung_metrics(got), rung_metrics(ref)
    assert set(m_got) == set(m_ref)
    drop = ("dt",)  # wall time per step
    for run in m_ref:
        a = [{k: v for k, v in r.items() if k not in drop} for r in m_got[run]]
        b = [{k: v for k, v in r.items() if k not in drop} for r in m_ref[run]]
        assert a == b, run


@pytest.fixture(scope="module")
def reference_ladder(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ladder"
    run_miniseries(out, KILL_FLAGS)
    return out


def _steps_logged(path: Path) -> int:
    try:
        return sum(1 for l in path.read_text().splitlines() if l.strip() and '"loss"' in l)
    except FileNotFoundError:
        return 0


# kill points: (name, predicate on OUT telling when to send SIGKILL)
KILL_POINTS = {
    # mid-step inside the scratch d2 rung, after its step-10 checkpoint
    "mid-scratch-rung": lambda o: _steps_logged(o / "scratch/d2/stable/metrics.jsonl") >= 12,
    # the moment the last scratch rung is final: the run is loading d1, building the Fisher, growing
    "mid-growth": lambda o: (o / "scratch/d2/b1/final.json").exists(),
    # mid-step inside the inherited rung, after its step-5 checkpoint
    "mid-inherited-rung": lambda o: _steps_logged(o / "inherit/d2/stable/metrics.jsonl") >= 8,
    # the inherited rung is final: the run is writing the report
    "mid-report": lambda o: (o / "inherit/d2/b1/final.json").exists(),
}


@pytest.mark.parametrize("point", [
    "mid-inherited-rung",
    pytest.param("mid-growth", marks=pytest.mark.slow),
    pytest.param("mid-scratch-rung", marks=pytest.mark.slow),
    pytest.param("mid-report", marks=pytest.mark.slow),
])
def test_sigkill_mid_miniseries_then_rerun_equals_uninterrupted(reference_ladder, tmp_path, point):
    out = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "launch/miniseries.py")] + MINI + KILL_FLAGS + ["--out", str(out)]
    proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not KILL_POINTS[point](out):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists(), "the miniseries finished before the kill; kill earlier"
    run_miniseries(out, KILL_FLAGS)  # the same command again
    assert_same_ladder(out, reference_ladder)


@pytest.mark.parametrize("damage,reason", [
    ("no-manifest", "no manifest"),
    ("truncated", "bytes, manifest says"),
    ("bitflip", "fails its sha256 check"),
    ("garbled-manifest", "unreadable manifest"),
])
def test_interrupted_checkpoint_write_is_ignored_on_resume(tmp_path, damage, reason):
    """A kill mid-checkpoint-write leaves a .tmp_step_* directory (never read) or, on a filesystem
    without atomic rename, a step directory without its manifest; damage after the fact truncates
    or flips bytes. Resume names the bad checkpoint, uses the previous one, and loses nothing."""
    args = ["--depth", "1", "--steps", "12", "--ckpt-every", "4"]
    run_train(args, tmp_path / "ref")
    out = tmp_path / "run"
    run_train(args, out)
    (out / "final.json").unlink()
    newest = out / "ckpt/step_000000012"
    tmp = out / "ckpt/.tmp_step_000000012"
    shutil.copytree(newest, tmp)  # a write in progress beside it: half its files, no manifest
    (tmp / "manifest.json").unlink()
    for f in sorted(tmp.glob("*.distcp"))[1:]:
        f.unlink()
    victim = next(newest.glob("*.distcp"))
    if damage == "no-manifest":
        (newest / "manifest.json").unlink()
    elif damage == "truncated":
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    elif damage == "bitflip":
        data = bytearray(victim.read_bytes())
        data[len(data) // 3] ^= 0x01
        victim.write_bytes(bytes(data))
    else:
        m = (newest / "manifest.json").read_text()
        (newest / "manifest.json").write_text(m[: len(m) // 2])
    p = run_train(args + ["--resume"], out)
    assert "step_000000012 is unusable" in p.stderr and reason in p.stderr, p.stderr[-2000:]
    assert losses(out) == losses(tmp_path / "ref")  # bitwise, steps 1..12
    assert json.loads((out / "final.json").read_text())["val_loss"] == json.loads((tmp_path / "ref/final.json").read_text())["val_loss"]
    assert not list((out / "ckpt").glob(".tmp_step_*"))
    assert ckpt.verify(newest) is None  # rewritten whole


def test_no_checkpoint_at_all_is_a_fresh_start(tmp_path):
    """Every checkpoint unusable and no final.json: resume starts over and still equals the reference."""
    args = ["--depth", "1", "--steps", "6", "--ckpt-every", "3"]
    run_train(args, tmp_path / "ref")
    out = tmp_path / "run"
    run_train(args, out)
    (out / "final.json").unlink()
    for ck in ckpt.list_checkpoints(out / "ckpt"):
        (ck / "manifest.json").unlink()
    p = run_train(args + ["--resume"], out)
    assert p.stderr.count("is unusable (no manifest") == 2, p.stderr[-2000:]
    assert losses(out) == losses(tmp_path / "ref")


# ---- non-finite values ---------------------------------------------------------------------


class _InfGrad(torch.autograd.Function):
    """Identity forward; an Inf gradient backward (a finite loss with an overflowed gradient)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


def _inject(monkeypatch, bad_steps: set[int], kind: str = "nan-loss"):
    """Make the training forward of the 1-based optimizer steps in `bad_steps` non-finite
    (accumulation 1 in these tests: one training forward per step)."""
    from models.gpt import GPT

    orig = GPT.forward
    calls = {"n": 0}

    def forward(self, idx, targets=None, reduction="mean"):
        out = orig(self, idx, targets, reduction)
        if self.training and targets is not None:
            calls["n"] += 1
            if calls["n"] in bad_steps:
                if kind == "nan-loss":
                    return out * float("nan")
                if kind == "inf-loss":
                    return out + float("inf")
                return _InfGrad.apply(out)
        return out

    monkeypatch.setattr(GPT, "forward", forward)
    return calls


def _tiny(tmp_path, **kw) -> TrainConfig:
    base = dict(depth=1, out=str(tmp_path / "r"), steps=8, seq_len=64, global_batch=4, eval_tokens=1024,
                progress=False, profile=False, ckpt_every=4)
    return TrainConfig(**{**base, **kw})


# "step" reads each step's verdict on the host; "lagged" decides the skip on the device and reads
# it a step later (the CUDA default, engine/train/guard.py), run here on CPU tensors.
SYNC_MODES = pytest.mark.parametrize("host_sync", ["step", "lagged"])


@SYNC_MODES
@pytest.mark.parametrize("kind", ["nan-loss", "inf-loss", "inf-grad"])
def test_nonfinite_step_is_skipped_and_counted(tmp_path, monkeypatch, kind, host_sync):
    _inject(monkeypatch, {3, 6}, kind)
    final = train_rung(_tiny(tmp_path, host_sync=host_sync), init_distributed("cpu"))
    assert final["skipped_steps"] == 2
    assert json.loads((tmp_path / "r/final.json").read_text())["skipped_steps"] == 2
    lines = [json.loads(l) for l in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    skipped = {l["step"] for l in lines if "skipped" in l}
    assert skipped == {3, 6}
    what = "gradient" if kind == "inf-grad" else "loss"
    assert all(l["skipped"] == f"non-finite {what}" for l in lines if "skipped" in l)
    assert sorted(l["step"] for l in lines if "loss" in l) == [1, 2, 4, 5, 7, 8]
    assert all(math.isfinite(l["loss"]) for l in lines if "loss" in l)
    assert math.isfinite(final["val_loss"])
    for p in ckpt.list_checkpoints(tmp_path / "r/ckpt"):
        assert ckpt.verify(p) is None


@SYNC_MODES
def test_skipped_last_step_still_leaves_a_final_checkpoint(tmp_path, monkeypatch, host_sync):
    _inject(monkeypatch, {8})
    final = train_rung(_tiny(tmp_path, host_sync=host_sync), init_distributed("cpu"))
    assert final["skipped_steps"] == 1
    assert ckpt.latest_valid(tmp_path / "r/ckpt").name == "step_000000008"
    assert ckpt.read_json(tmp_path / "r/ckpt/step_000000008/extra.json")["skipped_steps"] == 1


@SYNC_MODES
def test_consecutive_nonfinite_steps_stop_the_run(tmp_path, monkeypatch, host_sync):
    _inject(monkeypatch, {2, 3, 4, 5})
    # steps 2, 3, 4 are the three in a row: the run stops at step 4 (1-based, as metrics.jsonl counts)
    with pytest.raises(TrainError, match=r"3 consecutive steps with a non-finite loss or gradient at step 4 "
                                         r"\(max_nonfinite=3"):
        train_rung(_tiny(tmp_path, max_nonfinite=3, host_sync=host_sync), init_distributed("cpu"))
    assert not (tmp_path / "r/final.json").exists()


@SYNC_MODES
def test_nonconsecutive_nonfinite_steps_do_not_stop_the_run(tmp_path, monkeypatch, host_sync):
    _inject(monkeypatch, {2, 3, 5, 6})
    final = train_rung(_tiny(tmp_path, max_nonfinite=3, host_sync=host_sync), init_distributed("cpu"))
    assert final["skipped_steps"] == 4


@SYNC_MODES
def test_step_skipped_in_the_fisher_window_is_left_out_of_omega_and_its_cost(tmp_path, monkeypatch, host_sync):
    """A step skipped among the last K accumulates nothing: fisher.pt is the mean of g^2 over the
    K-1 steps that ran (not that mean scaled by (K-1)/K), final.json counts them, and the rung
    grown from it is charged the Fisher FLOPs of those steps only."""
    from engine.ladder.grow import build_inheritance
    from engine.runtime.distributed import local
    from engine.train.optim import LadderOptimizer
    from models.config import model_config

    grads = []  # raw gradients of the Fisher window's steps the optimizer did not skip
    orig_step = LadderOptimizer.step

    def step(self, lr_mult, **kw):
        if kw.get("fishers") is not None and (kw.get("found_inf") is None or kw["found_inf"].item() == 0):
            grads.append({n: local(p.grad).detach().clone() for g in self.groups for n, p in zip(g.names, g.params)})
        return orig_step(self, lr_mult, **kw)

    monkeypatch.setattr(LadderOptimizer, "step", step)
    _inject(monkeypatch, {10}, "inf-grad")  # window: steps 9-12
    final = train_rung(_tiny(tmp_path, host_sync=host_sync, steps=12, fisher_online_steps=4), init_distributed("cpu"))
    monkeypatch.undo()
    assert final["skipped_steps"] == 1 and final["fisher_steps"] == 3 and len(grads) == 3
    omega = torch.load(tmp_path / "r/fisher.pt")
    for n in omega:
        expect = sum(g[n].double() ** 2 for g in grads) / 3
        torch.testing.assert_close(omega[n].double(), expect, rtol=1e-5, atol=1e-14, msg=n)
    lc = LadderConfig(depths=[1, 2], arms=["inherit"], out=str(tmp_path), fisher_batches=4,
                      train=dict(seq_len=64, global_batch=4, eval_tokens=1024))
    inherit = build_inheritance(tmp_path / "r/ckpt/step_000000012", 1, 2, lc, init_distributed("cpu"), use_penalty=True)
    assert inherit.fisher_flops == 2.0 * model_config("cpu-tiny", 1, seq_len=64).num_params * 3


def test_fisher_step_count_survives_a_resume(tmp_path, monkeypatch):
    """The count of Fisher steps that ran is checkpointed with the buffers: a run resumed inside the
    window, after a skipped window step, writes the same fisher.pt and count as an uninterrupted one."""
    runs = {}
    for name in ("once", "resumed"):
        _inject(monkeypatch, {7}, "nan-loss")  # window: steps 7-12; the step-8 checkpoint is inside it
        cfg = _tiny(tmp_path / name, steps=12, ckpt_every=4, fisher_online_steps=6)
        runs[name] = train_rung(cfg, init_distributed("cpu"))
        monkeypatch.undo()
    run_dir = tmp_path / "resumed/r"
    for c in ckpt.list_checkpoints(run_dir / "ckpt"):
        if int(c.name.split("_")[-1]) > 8:
            shutil.rmtree(c)
    (run_dir / "final.json").unlink()
    runs["resumed"] = train_rung(TrainConfig(**{**cfg.__dict__, "out": str(run_dir), "resume": True}), init_distributed("cpu"))
    assert runs["once"]["fisher_steps"] == runs["resumed"]["fisher_steps"] == 5
    fa, fb = (torch.load(tmp_path / n / "r/fisher.pt") for n in ("once", "resumed"))
    assert all(torch.equal(fa[n], fb[n]) for n in fa)


def _timeless_metrics(run):
    return [{k: v for k, v in json.loads(l).items() if k != "dt"} for l in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("optimizer,adamw_impl", [("adamw", "kernel"), ("adamw", "torch"), ("muon", "kernel")])
def test_lagged_guard_equals_the_per_step_guard_bitwise(tmp_path, monkeypatch, optimizer, adamw_impl):
    """The device-side skip (found_inf in the optimizer kernel, host counts undone a step later)
    gives the very run the per-step host read gives: losses, evals, weights, skip count."""
    runs = {}
    for mode in ("step", "lagged"):
        _inject(monkeypatch, {3, 4, 9}, "inf-grad")
        # steps 3-4: consecutive, skipped between checkpoints; 9: skipped just before an eval/ckpt step
        cfg = _tiny(tmp_path / mode, host_sync=mode, steps=12, eval_every=5, ckpt_every=10,
                    optimizer=optimizer, adamw_impl=adamw_impl, fisher_online_steps=4)
        runs[mode] = train_rung(cfg, init_distributed("cpu"))
        monkeypatch.undo()
    a, b = (tmp_path / m / "r" for m in ("step", "lagged"))
    assert _timeless_metrics(a) == _timeless_metrics(b)
    assert runs["step"]["skipped_steps"] == runs["lagged"]["skipped_steps"] == 3
    assert runs["step"]["val_loss"] == runs["lagged"]["val_loss"]
    fa, fb = torch.load(a / "fisher.pt"), torch.load(b / "fisher.pt")
    assert all(torch.equal(fa[n], fb[n]) for n in fa)
    assert json.loads((b / "run.json").read_text())["host_sync"] == "lagged"


def test_lagged_guard_with_device_ars_resumes_bitwise(tmp_path, monkeypatch):
    """Lagged mode runs ARS on the device; a run resumed from its step-8 checkpoint equals the
    uninterrupted one, skipped steps (and their ARS rollbacks) included."""
    def run(out, steps_then_resume):
        _inject(monkeypatch, {3, 7, 10}, "nan-loss")
        cfg = _tiny(out, host_sync="lagged", ars="seed", steps=12, ckpt_every=4, eval_every=6)
        train_rung(cfg, init_distributed("cpu"))
        monkeypatch.undo()
        if steps_then_resume:  # drop everything after the step-8 checkpoint, then resume
            run_dir = out / "r"
            for c in ckpt.list_checkpoints(run_dir / "ckpt"):
                if int(c.name.split("_")[-1]) > 8:
                    shutil.rmtree(c)
            (run_dir / "final.json").unlink()
            _inject(monkeypatch, {2}, "nan-loss")  # the 2nd forward after resuming at 8 is step 10
            train_rung(TrainConfig(**{**cfg.__dict__, "resume": True}), init_distributed("cpu"))
            monkeypatch.undo()
        return out / "r"
    a, b = run(tmp_path / "once", False), run(tmp_path / "twice", True)
    assert _timeless_metrics(a) == _timeless_metrics(b)
    assert json.loads((a / "final.json").read_text())["skipped_steps"] == 3
    assert json.loads((a / "final.json").read_text())["val_loss"] == json.loads((b / "final.json").read_text())["val_loss"]


def test_nonfinite_weights_are_never_checkpointed(tmp_path):
    from engine.train.optim import LadderOptimizer, model_param_groups
    from models.config import model_config
    from models.gpt import GPT

    model = GPT(model_config("cpu-tiny", 1, seq_len=64))
    model.init_weights(0)
    opt = LadderOptimizer(model_param_groups(model, matrix_lr=1e-3, embedding_lr=1e-3, unembedding_lr=1e-3, muon=False,
                                             weight_decay=0.0))
    env = init_distributed("cpu")
    ckpt.save(tmp_path / "ckpt", 1, model, opt, {}, env)
    name, p = list(model.named_parameters())[-1]
    with torch.no_grad():
        p.view(-1)[0] = float("inf")
    with pytest.raises(ckpt.CheckpointError, match=rf"refusing to checkpoint step 2: non-finite values in .*{name}"):
        ckpt.save(tmp_path / "ckpt", 2, model, opt, {}, env)
    assert [c.name for c in ckpt.list_checkpoints(tmp_path / "ckpt")] == ["step_000000001"]
    assert not list((tmp_path / "ckpt").glob(".tmp_step_*"))


# ---- bad input: every configuration validates or names what is wrong --------------------------

def _env(world_size: int) -> DistEnv:
    return DistEnv(rank=0, local_rank=0, world_size=world_size, device=torch.device("cpu"), backend=None)


_budget_lists = st.lists(st.one_of(st.floats(-0.5, 1.5), st.just(float("nan"))), max_size=4)
_floats = st.one_of(st.floats(-2, 2), st.sampled_from([0.0, 1.0, -0.0, float("nan"), float("inf"), -float("inf")]))


@st.composite
def train_configs(draw):
    kw = dict(
        depth=draw(st.integers(-2, 30)),
        preset=draw(st.sampled_from(sorted(PRESETS) + ["huge", ""])),
        out="unused",
        global_batch=draw(st.one_of(st.none(), st.integers(-2, 64))),
        device_batch=draw(st.one_of(st.none(), st.integers(-2, 64))),
        optimizer=draw(st.sampled_from(["adamw", "muon", "sgd"])),
        ars=draw(st.sampled_from(["off", "seed", "detrended", "wild"])),
        warmdown_frac=draw(_floats),
        final_lr_frac=draw(_floats),
        ckpt_every=draw(st.integers(-2, 10)),
        fisher_online_steps=draw(st.integers(-2, 10)),
        seq_len=draw(st.one_of(st.none(), st.integers(-2, 4096))),
        vocab_size=draw(st.one_of(st.none(), st.integers(-2, 70000))),
        eval_every=draw(st.one_of(st.none(), st.integers(-2, 10))),
        eval_tokens=draw(st.one_of(st.none(), st.integers(-2, 10000))),
        warmup_steps=draw(st.one_of(st.none(), st.integers(-2, 10))),
        max_nonfinite=draw(st.integers(-1, 6)),
        host_sync=draw(st.sampled_from(["auto", "step", "lagged", "sometimes"])),
    )
    for k in draw(st.sets(st.sampled_from(["steps", "tokens", "ratio"]), max_size=3)):
        kw[k] = draw(st.one_of(st.integers(-2, 10**6), st.floats(-1, 2e4))) if k == "ratio" else draw(st.integers(-2, 10**6))
    return TrainConfig(**kw), draw(st.sampled_from([1, 2, 3, 4, 8]))


def train_problems(cfg: TrainConfig, ws: int) -> list[str]:
    """An independent oracle: the words a message about each invalid value must contain."""
    from engine.train.config import TRAIN_PRESETS

    bad = []
    if cfg.preset not in PRESETS:
        return [repr(cfg.preset)]  # nothing else can be resolved without a preset
    if cfg.depth < 1:
        bad.append("depth")
    budgets = [k for k in ("steps", "tokens", "ratio") if getattr(cfg, k) is not None]
    if len(budgets) != 1:
        bad.append("exactly one of --steps, --tokens, --ratio")
    for k in ("steps", "tokens"):
        if getattr(cfg, k) is not None and getattr(cfg, k) < 1:
            bad.append(k)
    if cfg.ratio is not None and not 0 < cfg.ratio <= 1e4:
        bad.append("ratio")
    gb = TRAIN_PRESETS[cfg.preset]["global_batch"] if cfg.global_batch is None else cfg.global_batch
    db = TRAIN_PRESETS[cfg.preset]["device_batch"] if cfg.device_batch is None else cfg.device_batch
    if gb < 1 or db < 1:
        bad.append("batch")
    elif gb % ws or gb % (min(db, gb // ws) * ws):
        bad.append(f"global_batch={gb}")
    if cfg.optimizer not in ("adamw", "muon"):
        bad.append(repr(cfg.optimizer))
    if cfg.ars not in ("off", "seed", "detrended"):
        bad.append(repr(cfg.ars))
    if cfg.host_sync not in ("auto", "step", "lagged"):
        bad.append(repr(cfg.host_sync))
    for k in ("warmdown_frac", "final_lr_frac"):
        if not 0 <= getattr(cfg, k) <= 1:
            bad.append(k)
    for k in ("ckpt_every", "fisher_online_steps", "warmup_steps"):
        if getattr(cfg, k) is not None and getattr(cfg, k) < 0:
            bad.append(k)
    for k in ("seq_len", "vocab_size", "eval_every", "eval_tokens", "max_nonfinite"):
        if getattr(cfg, k) is not None and getattr(cfg, k) < 1:
            bad.append(k)
    return bad


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(train_configs())
def test_every_train_config_validates_or_names_the_bad_value(case):
    cfg, ws = case
    bad = train_problems(cfg, ws)
    try:
        validate(cfg, _env(ws))
    except (ValueError, TrainError) as e:
        assert bad, f"valid config refused: {e}"
        assert any(word in str(e) or word.replace("_", "-") in str(e) for word in bad), (str(e), bad)
    else:
        assert not bad, f"invalid config accepted: {bad}"


@st.composite
def ladder_configs(draw):
    from engine.inherit.growth import PLACEMENTS

    subspace = draw(st.sampled_from(["coords", "svd", "pca"]))
    return LadderConfig(
        depths=draw(st.lists(st.integers(-1, 8), max_size=5)),
        arms=draw(st.lists(st.sampled_from(list(ARMS) + ["bogus"]), max_size=4)),
        out="unused",
        ratio=draw(st.one_of(st.floats(-1, 2e4), st.sampled_from([0.0, float("nan"), float("inf")]))),
        scratch_budgets=draw(_budget_lists),
        inherit_budgets=draw(_budget_lists),
        schedule=draw(st.sampled_from(["wsd", "nanochat", "cosine"])),
        cooldown_frac=draw(_floats),
        inherit_lr_mult=draw(_floats),
        grow_from=draw(st.sampled_from(["cooled", "stable", "annealed"])),
        data_order=draw(st.sampled_from(["restart", "continue", "shuffle"])),
        optimizer_state=draw(st.sampled_from(["fresh", "carry", "reset"])),
        depth_init=draw(st.sampled_from(["identity", "copy", "zero"])),
        lam=draw(st.one_of(st.floats(-1, 1e6), st.sampled_from([float("nan"), float("inf")]))),
        gamma=draw(_floats),
        subspace=subspace,
        svd_rank=draw(st.one_of(st.none(), st.integers(-1, 8))),
        svd_energy=draw(st.one_of(st.none(), _floats)),
        penalty_schedule=draw(st.sampled_from(["constant", "linear", "cosine"])),
        ars=draw(st.sampled_from(["seed", "detrended", "off", "on"])),
        fisher=draw(st.sampled_from(["online", "posthoc", "exact"])),
        fisher_batches=draw(st.integers(-1, 4)),
        placement=draw(st.sampled_from(list(PLACEMENTS) + ["top"])),
        inherit_warmup_frac=draw(_floats),
    )


def ladder_problems(lc: LadderConfig) -> list[str]:
    from engine.inherit.growth import PLACEMENTS

    bad = []
    if not lc.depths:
        bad.append("--depths")
    elif any(d < 1 for d in lc.depths) or any(b <= a for a, b in zip(lc.depths, lc.depths[1:])):
        bad.append(str(lc.depths))
    unknown = [a for a in lc.arms if a not in ARMS]
    if unknown or not lc.arms or len(set(lc.arms)) != len(lc.arms):
        bad.append(str(unknown or lc.arms))
    for name, b in (("--scratch-budgets", lc.scratch_budgets), ("--inherit-budgets", lc.inherit_budgets)):
        if not b or any(not 0 < f <= 1 for f in b) or sorted(set(b)) != list(b):
            bad.append(name)
    if lc.schedule not in ("wsd", "nanochat"):
        bad.append(repr(lc.schedule))
    if not 0 < lc.cooldown_frac < 1:
        bad.append("--cooldown-frac")
    if not 0 < lc.inherit_lr_mult < math.inf:
        bad.append("--inherit-lr-mult")
    if lc.grow_from not in ("cooled", "stable"):
        bad.append(repr(lc.grow_from))
    if lc.data_order not in ("restart", "continue"):
        bad.append(repr(lc.data_order))
    if lc.depth_init not in ("identity", "copy"):
        bad.append(repr(lc.depth_init))
    if lc.optimizer_state not in ("fresh", "carry"):
        bad.append(repr(lc.optimizer_state))
    if lc.grow_from == "stable" and lc.schedule == "nanochat":
        bad.append("--grow-from stable")
    if not 0 < lc.ratio <= 1e4:
        bad.append("--ratio")
    if not (0 <= lc.lam < math.inf and 0 <= lc.gamma < math.inf):
        bad.append("--lam")
    if lc.subspace not in ("coords", "svd"):
        bad.append(repr(lc.subspace))
    if lc.subspace == "svd" and lc.svd_rank is None and lc.svd_energy is None:
        bad.append("--svd-rank")
    if lc.svd_rank is not None and lc.svd_rank < 1:
        bad.append("--svd-rank")
    if lc.svd_energy is not None and not 0 < lc.svd_energy <= 1:
        bad.append("--svd-energy")
    if lc.penalty_schedule not in ("constant", "linear"):
        bad.append(repr(lc.penalty_schedule))
    if lc.ars not in ("seed", "detrended", "off"):
        bad.append(repr(lc.ars))
    if lc.fisher not in ("online", "posthoc"):
        bad.append(repr(lc.fisher))
    if not 0 <= lc.inherit_warmup_frac < 1:
        bad.append("--inherit-warmup-frac")
    if lc.fisher_batches < 1:
        bad.append("--fisher-batches")
    if lc.placement not in PLACEMENTS:
        bad.append(repr(lc.placement))
    if lc.depths and len(lc.depths) < 2 and any(ARMS.get(a, (False,))[0] for a in lc.arms):
        bad.append("at least two depths")
    return bad


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ladder_configs())
def test_every_ladder_config_validates_or_names_the_bad_value(lc):
    bad = ladder_problems(lc)
    try:
        lc.validate()
    except ValueError as e:
        assert bad, f"valid config refused: {e}"
        assert any(word in str(e) for word in bad), (str(e), bad)
    else:
        assert not bad, f"invalid config accepted: {bad}"


@pytest.mark.parametrize("args,message", [
    (["--depths", "3:1"], "--depths '3:1': expected LO:HI"),
    (["--depths", "1,1"], "--depths must be strictly increasing, got [1, 1]"),
    (["--depths", "0:2"], "--depths must be positive, got [0, 1, 2]"),
    (["--depths", "2"], "inheriting arms need at least two depths"),
    (["--arms", "scratch,bogus"], "unknown arm(s) ['bogus']"),
    (["--inherit-budgets", "0.5,1.5"], "expected increasing fractions in (0, 1] like 0.25,0.5,1, got '0.5,1.5'"),
    (["--grow-from", "stable", "--schedule", "nanochat"], "--grow-from stable needs --schedule wsd"),
    (["--ratio", "0"], "expected a positive finite number, got '0'"),
    (["--fisher-batches", "0"], "expected a positive integer, got '0'"),
    (["--preset", "huge"], "invalid choice: 'huge'"),
    (["--global-batch", "3", "--device-batch", "2"], "global_batch=3 is not a multiple of device_batch"),
    (["--data", "text:/nonexistent/corpus.txt"], "/nonexistent/corpus.txt"),
    (["--seq-len", "10000000"], "seq_len"),
])
def test_bad_miniseries_input_is_refused_with_a_clear_message(tmp_path, args, message):
    out = tmp_path / "bad"
    p = run_miniseries(out, args, check=False, timeout=120)
    assert p.returncode != 0 and message in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    assert not list(out.glob("*/d*/ckpt/step_*")), "something was trained before the input was refused"


# ---- several ranks, several "nodes" -------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_two_nodes_on_loopback_match_one_rank(tmp_path):
    """Two torchrun launchers (--nnodes 2, one rank each) meeting through a c10d rendezvous on
    127.0.0.1, as two machines would; losses equal one rank's within 1e-4 relative (fp32 reduction order)."""
    args = ["--depth", "2", "--steps", "6", "--ckpt-every", "3"]
    run_train(args, tmp_path / "one")
    port = _free_port()
    out = tmp_path / "two-nodes"
    procs = []
    for node_rank in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--node_rank", str(node_rank), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
               "--rdzv-id", f"t{port}", "--local-addr", "127.0.0.1", "--max-restarts", "0",
               str(ROOT / "launch/train.py")] + FAST + args + ["--out", str(out)]
        procs.append(subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        if node_rank == 0:
            time.sleep(1.0)  # node 0 hosts the rendezvous store
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, f"{o[-2000:]}\n{e[-3000:]}"
    one, two = losses(tmp_path / "one"), losses(out)
    assert sorted(one) == sorted(two) == list(range(1, 7))
    for s in one:
        assert two[s] == pytest.approx(one[s], rel=1e-4), (s, one[s], two[s])
    final = json.loads((out / "final.json").read_text())
    assert final["world_size"] == 2
    assert final["val_loss"] == pytest.approx(json.loads((tmp_path / "one/final.json").read_text())["val_loss"], rel=1e-4)


@pytest.mark.distributed
def test_one_rank_checkpoint_resumes_on_two_ranks(tmp_path):
    """The reverse of tests/test_trainer.py's 2 -> 1: a checkpoint written by 1 rank loads on 2."""
    args = ["--depth", "2", "--steps", "8", "--ckpt-every", "4"]
    run_train(args, tmp_path / "one")
    out = tmp_path / "run"
    shutil.copytree(tmp_path / "one", out)
    shutil.rmtree(out / "ckpt/step_000000008")
    (out / "final.json").unlink()
    run_train(args + ["--resume"], out, nproc=2)
    ref, got = losses(tmp_path / "one"), losses(out)
    assert sorted(got) == list(range(1, 9))
    for s in range(1, 5):
        assert got[s] == ref[s]  # kept from the 1-rank run
    for s in range(5, 9):
        assert got[s] == pytest.approx(ref[s], rel=1e-4), (s, ref[s], got[s])
    assert json.loads((out / "final.json").read_text())["world_size"] == 2


def test_soak_comparison_sees_a_changed_loss(reference_ladder, tmp_path):
    """launch/soak.py's verdict: equal to itself, and one changed bit in a val loss or a metrics line is caught."""
    from launch.soak import differences

    assert differences(reference_ladder, reference_ladder) == []
    copy = tmp_path / "copy"
    shutil.copytree(reference_ladder, copy)
    s = json.loads((copy / "summary.json").read_text())
    s["arms"]["inherit"][-1]["val_loss"] = math.nextafter(s["arms"]["inherit"][-1]["val_loss"], 0.0)
    (copy / "summary.json").write_text(json.dumps(s))
    m = copy / "scratch/d2/stable/metrics.jsonl"
    lines = m.read_text().splitlines()
    rec = json.loads(lines[3])
    rec["loss"] = math.nextafter(rec["loss"], 0.0)
    lines[3] = json.dumps(rec)
    m.write_text("\n".join(lines) + "\n")
    diffs = differences(copy, reference_ladder)
    assert any("summary inherit d2 val_loss" in d for d in diffs), diffs
    assert any("scratch/d2/stable/metrics.jsonl differs from line 3" in d for d in diffs), diffs


def test_real_sigkill_during_a_checkpoint_write(tmp_path):
    """A genuine kill mid-write: checkpoint every step, SIGKILL the moment a .tmp_step_* directory
    appears; the rerun ignores the half-written one and reproduces the uninterrupted losses bitwise."""
    args = ["--depth", "1", "--steps", "40", "--ckpt-every", "1"]
    run_train(args, tmp_path / "ref")
    out = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "launch/train.py")] + FAST + args + ["--out", str(out)]
    proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen_steps = 0
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (out / "ckpt").is_dir():
            tmps = [e.name for e in os.scandir(out / "ckpt") if e.name.startswith(".tmp_step_")]
            if tmps and int(tmps[0].rsplit("_", 1)[1]) >= 5:  # a few good checkpoints exist before it
                proc.send_signal(signal.SIGKILL)
                seen_steps = int(tmps[0].rsplit("_", 1)[1])
                break
        time.sleep(0.0005)
    proc.kill()
    proc.wait()
    assert seen_steps, "never saw a checkpoint write in progress"
    assert not (out / "final.json").exists()
    left = [p.name for p in (out / "ckpt").iterdir()]
    assert any(n.startswith(".tmp_step_") for n in left) or f"step_{seen_steps:09d}" in left, left
    p = run_train(args + ["--resume"], out)
    assert losses(out) == losses(tmp_path / "ref"), p.stderr[-2000:]  # bitwise, every step
    assert not list((out / "ckpt").glob(".tmp_step_*"))


def test_lagged_guard_reads_each_verdict_a_step_late(tmp_path, monkeypatch):
    """No per-step host read in lagged mode: step k's verdict is read after step k+1's forward is
    queued (so on a GPU the host never waits on the step it just launched), except on eval and
    checkpoint steps, which sync anyway."""
    from engine.train import guard
    from models.gpt import GPT

    forwards, reads = {"n": 0}, []
    orig_forward, orig_read = GPT.forward, guard.DeviceValues.read

    def forward(self, *a, **k):
        forwards["n"] += self.training
        return orig_forward(self, *a, **k)

    def read(self):
        reads.append(forwards["n"])
        return orig_read(self)

    monkeypatch.setattr(GPT, "forward", forward)
    monkeypatch.setattr(guard.DeviceValues, "read", read)
    train_rung(_tiny(tmp_path, host_sync="lagged", steps=12, eval_every=6, ckpt_every=0), init_distributed("cpu"))
    sync_steps = {6, 12}
    assert reads == [k if k in sync_steps else k + 1 for k in range(1, 13)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (counts CUDA host syncs)")
@pytest.mark.parametrize("adamw_impl,ars", [("kernel", "off"), ("kernel", "seed"), ("torch", "off")])
def test_lagged_cuda_steps_make_no_host_sync(tmp_path, monkeypatch, adamw_impl, ars):
    """On CUDA a lagged step adds no host sync: torch's sync debug mode warns on every synchronising
    call, and a 12-step run must warn exactly as often as a 6-step one (setup, the final eval and
    checkpoint are the same in both). The one wait we mean to make, the lagged read of the
    previous step's verdict, is excluded."""
    import warnings

    from engine.train import guard

    orig_read = guard.DeviceValues.read

    def read(self):
        mode = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode(0)
        try:
            return orig_read(self)
        finally:
            torch.cuda.set_sync_debug_mode(mode)

    monkeypatch.setattr(guard.DeviceValues, "read", read)
    counts = []
    for steps in (6, 12):
        cfg = _tiny(tmp_path / str(steps), device="cuda", host_sync="lagged", steps=steps, eval_every=steps,
                    ckpt_every=0, adamw_impl=adamw_impl, ars=ars)
        env = init_distributed("cuda")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode(1)
            try:
                train_rung(cfg, env)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        counts.append(sum("synchroniz" in str(w.message).lower() for w in caught))
    assert counts[0] == counts[1], f"host syncs: {counts[0]} in 6 steps, {counts[1]} in 12 (per-step syncs remain)"


def test_resuming_with_the_other_host_sync_names_the_mode_to_use(tmp_path):
    """Host and device ARS keep different state: a checkpoint of one is refused by the other, with
    the --host-sync that resumes it."""
    train_rung(_tiny(tmp_path, host_sync="step", ars="seed"), init_distributed("cpu"))
    with pytest.raises(TrainError, match=r"ARS state of a --host-sync step run.*resume with --host-sync step"):
        train_rung(_tiny(tmp_path, host_sync="lagged", ars="seed", resume=True), init_distributed("cpu"))
