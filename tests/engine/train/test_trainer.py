"""The training loop (engine/train/trainer.py) on the built-in corpus: it learns and writes its
records; bad values and another run's directory refused; the logged penalty of a grown rung is the
whole Phi; the Fisher window leaves out a skipped step and survives a resume; a resume with the
other host sync, or at another peak-LR multiplier, is refused by name. Whole runs killed, resumed
or spread over ranks: tests/system/."""
import json
import shutil
from dataclasses import asdict

import pytest
import torch

from engine.inherit.inheritance import Inheritance
from engine.inherit.penalty import Penalty, PenaltyConfig
from engine.ladder.config import LadderConfig
from engine.ladder.grow import build_inheritance
from engine.runtime.distributed import init_distributed, local
from engine.train import checkpoint as ckpt
from engine.train.config import TrainConfig, TrainError
from engine.train.optim import LadderOptimizer
from engine.train.trainer import train_rung
from models.config import model_config
from models.gpt import build_model
from tests.helpers.faults import inject_nonfinite
from tests.helpers.runs import run_train
from tests.helpers.train import SYNC_MODES, tiny_train_config


def test_loss_falls_on_builtin_corpus(tmp_path):
    cfg = TrainConfig(depth=2, out=str(tmp_path / "r"), steps=60, seq_len=64, global_batch=8, eval_tokens=2048,
                      progress=False, profile=False)
    final = train_rung(cfg, init_distributed("cpu"))
    assert final["start_val_loss"] > 7.4  # ~ln(2048) = 7.62 at init
    assert final["val_loss"] < final["start_val_loss"] - 1.5, final
    for key in ("depth", "params", "scaling_params", "tokens", "flops", "val_loss", "val_bpb", "wall_s", "device",
                "attention_backend", "world_size"):
        assert key in final
    assert (final["tokens"] == 60 * 8 * 64
            and final["flops"] == pytest.approx(60 * 8 * 64 * cfg.model_config().flops_per_token))
    lines = [json.loads(line) for line in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in lines if "loss" in rec] == list(range(1, 61))
    assert all({"step", "loss", "lr", "tokens", "flops", "dt"} <= rec.keys() for rec in lines if "loss" in rec)
    assert json.loads((tmp_path / "r/final.json").read_text())["val_bpb"] == final["val_bpb"]


@pytest.mark.parametrize("kw,message", [
    (dict(data="text:/nonexistent/corpus.txt"), "/nonexistent/corpus.txt"),
    (dict(data="ftp://x"), "ftp://x"),
    (dict(global_batch=6, device_batch=4), "global_batch=6 is not a multiple of device_batch"),
    (dict(seq_len=10**7), "seq_len"),
    (dict(ars="wild"), "--ars must be off, seed or detrended"),
])
def test_bad_config_values_give_clear_errors(tmp_path, kw, message):
    cfg = TrainConfig(**{**dict(depth=1, out=str(tmp_path / "r"), steps=2, progress=False, profile=False), **kw})
    with pytest.raises((ValueError, FileNotFoundError), match=message.replace("(", r"\(")):
        train_rung(cfg, init_distributed("cpu"))


def test_out_dir_with_another_runs_checkpoints_is_refused(tmp_path):
    run_train(["--depth", "1", "--steps", "2"], tmp_path / "r")
    p = run_train(["--depth", "1", "--steps", "2"], tmp_path / "r", check=False)
    assert p.returncode != 0 and "already holds checkpoints" in p.stderr
    p = run_train(["--depth", "2", "--steps", "2", "--resume"], tmp_path / "r", check=False)
    assert p.returncode != 0 and "belongs to a different run" in p.stderr


def _lr_run(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(**{**dict(depth=1, out=str(tmp_path / "r"), steps=2, seq_len=64, global_batch=4,
                                 eval_tokens=1024, progress=False, profile=False), **kw})


def test_resume_at_another_lr_multiplier_is_refused(tmp_path):
    """A checkpoint records the multiplier it was trained at; a resume that resolves another one
    (an explicit --lr-mult, or the preset's default after it changed) stops and names both."""
    env = init_distributed("cpu")
    train_rung(_lr_run(tmp_path, lr_mult=2.0), env)
    with pytest.raises(TrainError, match=r"trained at peak-LR multiplier 2, this run resolves --lr-mult to 0.5"):
        train_rung(_lr_run(tmp_path, resume=True), env)  # None: cpu-tiny's 0.5
    train_rung(_lr_run(tmp_path, resume=True, lr_mult=2.0), env)  # the same multiplier resumes


def test_resume_of_a_checkpoint_from_before_the_record_reads_run_json(tmp_path, monkeypatch):
    """Checkpoints written before the multiplier was recorded: the run.json of the attempt that
    wrote them says it (there the field defaulted to 1.0)."""
    save = ckpt.save
    monkeypatch.setattr(ckpt, "save", lambda d, step, m, o, extra, *a, **k: save(
        d, step, m, o, {k2: v for k2, v in extra.items() if k2 != "lr_mult"}, *a, **k))
    env = init_distributed("cpu")
    train_rung(_lr_run(tmp_path, lr_mult=1.0), env)
    meta = json.loads((tmp_path / "r/run.json").read_text())
    del meta["lr_mult"]  # as written before d3320ec
    (tmp_path / "r/run.json").write_text(json.dumps(meta))
    with pytest.raises(TrainError, match=r"trained at peak-LR multiplier 1, .* pass --lr-mult 1 to resume it"):
        train_rung(_lr_run(tmp_path, resume=True), env)


@pytest.mark.parametrize("subspace", ["coords", "svd"])
def test_logged_penalty_is_the_whole_phi(tmp_path, subspace):
    """The metrics' "penalty" of a grown rung's step is Phi (method.md section 4) of the weights
    the step started from, in both forms (svd: its gamma term included)."""
    cfg = TrainConfig(depth=1, out=str(tmp_path / "r"), steps=2, seq_len=64, global_batch=4, eval_tokens=1024,
                      progress=False, profile=False)
    model = build_model(cfg.model_config(), seed=3)
    state = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(1)
    anchor = {n: w + 0.05 * torch.randn(w.shape, generator=g) for n, w in state.items()}
    mask = {n: (torch.rand(w.shape, generator=g) < 0.7).float() for n, w in state.items()}
    fisher = {n: torch.rand(w.shape, generator=g) * m for (n, w), m in zip(state.items(), mask.values())}
    penalty = PenaltyConfig(lam=2.0, gamma=0.5, subspace=subspace, svd_rank=2 if subspace == "svd" else None)
    inherit = Inheritance(state=state, anchor=anchor, mask=mask, fisher=fisher, penalty=penalty)
    train_rung(cfg, init_distributed("cpu"), inherit)
    first = next(json.loads(line) for line in (tmp_path / "r/metrics.jsonl").read_text().splitlines()
                 if '"step": 1,' in line)
    phi = Penalty(list(state.items()), anchor, mask, fisher, total_steps=cfg.steps, **asdict(penalty))
    assert first["penalty"] == pytest.approx(phi.value(list(state.values()), 0), rel=1e-5)


@SYNC_MODES
def test_step_skipped_in_the_fisher_window_is_left_out_of_omega_and_its_cost(tmp_path, monkeypatch, host_sync):
    """A step skipped among the last K accumulates nothing: fisher.pt is the mean of g^2 over the
    K-1 steps that ran (not that mean scaled by (K-1)/K), final.json counts them, and the rung
    grown from it is charged the Fisher FLOPs of those steps only."""
    grads = []  # raw gradients of the Fisher window's steps the optimizer did not skip
    orig_step = LadderOptimizer.step

    def step(self, lr_mult, **kw):
        if kw.get("fishers") is not None and (kw.get("found_inf") is None or kw["found_inf"].item() == 0):
            grads.append({n: local(p.grad).detach().clone() for g in self.groups for n, p in zip(g.names, g.params)})
        return orig_step(self, lr_mult, **kw)

    monkeypatch.setattr(LadderOptimizer, "step", step)
    inject_nonfinite(monkeypatch, {10}, "inf-grad")  # window: steps 9-12
    final = train_rung(tiny_train_config(tmp_path, host_sync=host_sync, steps=12, fisher_online_steps=4),
                       init_distributed("cpu"))
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
        inject_nonfinite(monkeypatch, {7}, "nan-loss")  # window: steps 7-12; the step-8 checkpoint is inside it
        cfg = tiny_train_config(tmp_path / name, steps=12, ckpt_every=4, fisher_online_steps=6)
        runs[name] = train_rung(cfg, init_distributed("cpu"))
        monkeypatch.undo()
    run_dir = tmp_path / "resumed/r"
    for c in ckpt.list_checkpoints(run_dir / "ckpt"):
        if int(c.name.split("_")[-1]) > 8:
            shutil.rmtree(c)
    (run_dir / "final.json").unlink()
    runs["resumed"] = train_rung(TrainConfig(**{**cfg.__dict__, "out": str(run_dir), "resume": True}),
                                 init_distributed("cpu"))
    assert runs["once"]["fisher_steps"] == runs["resumed"]["fisher_steps"] == 5
    fa, fb = (torch.load(tmp_path / n / "r/fisher.pt") for n in ("once", "resumed"))
    assert all(torch.equal(fa[n], fb[n]) for n in fa)


def test_resuming_with_the_other_host_sync_names_the_mode_to_use(tmp_path):
    """Host and device ARS keep different state: a checkpoint of one is refused by the other, with
    the --host-sync that resumes it."""
    train_rung(tiny_train_config(tmp_path, host_sync="step", ars="seed"), init_distributed("cpu"))
    with pytest.raises(TrainError, match=r"ARS state of a --host-sync step run.*resume with --host-sync step"):
        train_rung(tiny_train_config(tmp_path, host_sync="lagged", ars="seed", resume=True), init_distributed("cpu"))
