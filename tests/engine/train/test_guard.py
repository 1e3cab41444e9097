"""The non-finite guard and the host sync (engine/train/guard.py): non-finite losses and gradients
are skipped, counted, and stop the run after N in a row, in both host-sync modes; the lagged mode
gives the per-step mode's run bitwise, resumes bitwise with device ARS, reads each verdict a step
late, and on CUDA adds no host sync per step."""
import json
import math
import shutil
import warnings

import pytest
import torch

from engine.runtime.distributed import init_distributed
from engine.train import checkpoint as ckpt
from engine.train import guard
from engine.train.config import TrainConfig, TrainError
from engine.train.trainer import train_rung
from models.gpt import GPT
from tests.helpers.faults import inject_nonfinite
from tests.helpers.train import SYNC_MODES, tiny_train_config


@SYNC_MODES
@pytest.mark.parametrize("kind", ["nan-loss", "inf-loss", "inf-grad"])
def test_nonfinite_step_is_skipped_and_counted(tmp_path, monkeypatch, kind, host_sync):
    inject_nonfinite(monkeypatch, {3, 6}, kind)
    final = train_rung(tiny_train_config(tmp_path, host_sync=host_sync), init_distributed("cpu"))
    assert final["skipped_steps"] == 2
    assert json.loads((tmp_path / "r/final.json").read_text())["skipped_steps"] == 2
    lines = [json.loads(line) for line in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    skipped = {rec["step"] for rec in lines if "skipped" in rec}
    assert skipped == {3, 6}
    what = "gradient" if kind == "inf-grad" else "loss"
    assert all(rec["skipped"] == f"non-finite {what}" for rec in lines if "skipped" in rec)
    assert sorted(rec["step"] for rec in lines if "loss" in rec) == [1, 2, 4, 5, 7, 8]
    assert all(math.isfinite(rec["loss"]) for rec in lines if "loss" in rec)
    assert math.isfinite(final["val_loss"])
    for p in ckpt.list_checkpoints(tmp_path / "r/ckpt"):
        assert ckpt.verify(p) is None


@SYNC_MODES
def test_skipped_last_step_still_leaves_a_final_checkpoint(tmp_path, monkeypatch, host_sync):
    inject_nonfinite(monkeypatch, {8})
    final = train_rung(tiny_train_config(tmp_path, host_sync=host_sync), init_distributed("cpu"))
    assert final["skipped_steps"] == 1
    assert ckpt.latest_valid(tmp_path / "r/ckpt").name == "step_000000008"
    assert ckpt.read_json(tmp_path / "r/ckpt/step_000000008/extra.json")["skipped_steps"] == 1


@SYNC_MODES
def test_consecutive_nonfinite_steps_stop_the_run(tmp_path, monkeypatch, host_sync):
    inject_nonfinite(monkeypatch, {2, 3, 4, 5})
    # steps 2, 3, 4 are the three in a row: the run stops at step 4 (1-based, as metrics.jsonl counts)
    with pytest.raises(TrainError, match=r"3 consecutive steps with a non-finite loss or gradient at step 4 "
                                         r"\(max_nonfinite=3"):
        train_rung(tiny_train_config(tmp_path, max_nonfinite=3, host_sync=host_sync), init_distributed("cpu"))
    assert not (tmp_path / "r/final.json").exists()


@SYNC_MODES
def test_nonconsecutive_nonfinite_steps_do_not_stop_the_run(tmp_path, monkeypatch, host_sync):
    inject_nonfinite(monkeypatch, {2, 3, 5, 6})
    final = train_rung(tiny_train_config(tmp_path, max_nonfinite=3, host_sync=host_sync), init_distributed("cpu"))
    assert final["skipped_steps"] == 4


def _timeless_metrics(run):
    return [{k: v for k, v in json.loads(line).items() if k != "dt"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("optimizer,adamw_impl", [("adamw", "kernel"), ("adamw", "torch"), ("muon", "kernel")])
def test_lagged_guard_equals_the_per_step_guard_bitwise(tmp_path, monkeypatch, optimizer, adamw_impl):
    """The device-side skip (found_inf in the optimizer kernel, host counts undone a step later)
    gives the very run the per-step host read gives: losses, evals, weights, skip count."""
    runs = {}
    for mode in ("step", "lagged"):
        inject_nonfinite(monkeypatch, {3, 4, 9}, "inf-grad")
        # steps 3-4: consecutive, skipped between checkpoints; 9: skipped just before an eval/ckpt step
        cfg = tiny_train_config(tmp_path / mode, host_sync=mode, steps=12, eval_every=5, ckpt_every=10,
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
        inject_nonfinite(monkeypatch, {3, 7, 10}, "nan-loss")
        cfg = tiny_train_config(out, host_sync="lagged", ars="seed", steps=12, ckpt_every=4, eval_every=6)
        train_rung(cfg, init_distributed("cpu"))
        monkeypatch.undo()
        if steps_then_resume:  # drop everything after the step-8 checkpoint, then resume
            run_dir = out / "r"
            for c in ckpt.list_checkpoints(run_dir / "ckpt"):
                if int(c.name.split("_")[-1]) > 8:
                    shutil.rmtree(c)
            (run_dir / "final.json").unlink()
            inject_nonfinite(monkeypatch, {2}, "nan-loss")  # the 2nd forward after resuming at 8 is step 10
            train_rung(TrainConfig(**{**cfg.__dict__, "resume": True}), init_distributed("cpu"))
            monkeypatch.undo()
        return out / "r"
    a, b = run(tmp_path / "once", False), run(tmp_path / "twice", True)
    assert _timeless_metrics(a) == _timeless_metrics(b)
    assert json.loads((a / "final.json").read_text())["skipped_steps"] == 3
    assert (json.loads((a / "final.json").read_text())["val_loss"]
            == json.loads((b / "final.json").read_text())["val_loss"])


def test_lagged_guard_reads_each_verdict_a_step_late(tmp_path, monkeypatch):
    """No per-step host read in lagged mode: step k's verdict is read after step k+1's forward is
    queued (so on a GPU the host never waits on the step it just launched), except on eval and
    checkpoint steps, which sync anyway."""
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
    train_rung(tiny_train_config(tmp_path, host_sync="lagged", steps=12, eval_every=6, ckpt_every=0),
               init_distributed("cpu"))
    sync_steps = {6, 12}
    assert reads == [k if k in sync_steps else k + 1 for k in range(1, 13)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (counts CUDA host syncs)")
@pytest.mark.parametrize("adamw_impl,ars", [("kernel", "off"), ("kernel", "seed"), ("torch", "off")])
def test_lagged_cuda_steps_make_no_host_sync(tmp_path, monkeypatch, adamw_impl, ars):
    """On CUDA a lagged step adds no host sync: torch's sync debug mode warns on every synchronising
    call, and a 12-step run must warn exactly as often as a 6-step one (setup, the final eval and
    checkpoint are the same in both). The one wait we mean to make, the lagged read of the
    previous step's verdict, is excluded."""
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
        cfg = tiny_train_config(tmp_path / str(steps), device="cuda", host_sync="lagged", steps=steps, eval_every=steps,
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
