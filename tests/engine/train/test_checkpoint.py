"""Checkpoints (engine/train/checkpoint.py): a corrupt or unfinished one is named and the previous
one used; non-finite weights are never written; a write error or a full disk (a real small
tmpfs where mounting is allowed, injected errors everywhere) leaves the earlier checkpoints intact
and no partial one, with one message naming the last intact checkpoint."""
from pathlib import Path

import pytest
import torch

from engine.runtime import diskspace
from engine.runtime.diskspace import StorageError
from engine.runtime.distributed import init_distributed
from engine.train import checkpoint as ckpt
from tests.helpers.faults import enospc
from tests.helpers.runs import run_train
from tests.helpers.train import tiny_model_and_opt


def test_corrupt_checkpoint_falls_back_to_previous(tmp_path):
    run_train(["--depth", "1", "--steps", "6", "--ckpt-every", "3"], tmp_path / "r")
    newest, older = ckpt.list_checkpoints(tmp_path / "r/ckpt")
    victim = next(p for p in newest.iterdir() if p.suffix == ".distcp")
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="step_000000006 is unusable .*sha256"):
        assert ckpt.latest_valid(tmp_path / "r/ckpt") == older
    (newest / "manifest.json").unlink()  # an interrupted write: no manifest
    with pytest.warns(UserWarning, match="no manifest"):
        assert ckpt.latest_valid(tmp_path / "r/ckpt") == older


def test_nonfinite_weights_are_never_checkpointed(tmp_path):
    model, opt = tiny_model_and_opt()
    env = init_distributed("cpu")
    ckpt.save(tmp_path / "ckpt", 1, model, opt, {}, env)
    name, p = list(model.named_parameters())[-1]
    with torch.no_grad():
        p.view(-1)[0] = float("inf")
    with pytest.raises(ckpt.CheckpointError, match=rf"refusing to checkpoint step 2: non-finite values in .*{name}"):
        ckpt.save(tmp_path / "ckpt", 2, model, opt, {}, env)
    assert [c.name for c in ckpt.list_checkpoints(tmp_path / "ckpt")] == ["step_000000001"]
    assert not list((tmp_path / "ckpt").glob(".tmp_step_*"))


def _assert_loadable(ck: Path, model):
    """`ck` verifies and loads into a fresh model with the weights `model` had when it was saved."""
    assert ckpt.verify(ck) is None
    fresh, opt = tiny_model_and_opt()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    ckpt.load(ck, fresh, opt)
    for (n, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), n


def test_real_enospc_inside_dcp_removes_the_partial_checkpoint(small_fs, monkeypatch):
    """Free space estimated wrong (forced to 0): the write itself hits ENOSPC on a real filesystem."""
    d = small_fs(4)
    model, opt = tiny_model_and_opt()
    env = init_distributed("cpu")
    ckpt.save(d / "ckpt", 1, model, opt, {}, env)
    size = ckpt.checkpoint_bytes(d / "ckpt/step_000000001")
    (d / "filler").write_bytes(b"\0" * max(0, diskspace.free_bytes(d) - size // 2))
    monkeypatch.setattr(ckpt, "_needed_bytes", lambda *a: 0)
    with pytest.raises(StorageError, match=r"^the disk is full: writing checkpoint step 2 to .*\.tmp_step_000000002 "
                                           r"failed .*The last intact checkpoint is .*step_000000001") as e:
        ckpt.save(d / "ckpt", 2, model, opt, {}, env)
    assert "free" in str(e.value)
    assert [c.name for c in ckpt.list_checkpoints(d / "ckpt")] == ["step_000000001"]
    assert not list((d / "ckpt").glob(".tmp_*"))
    _assert_loadable(d / "ckpt/step_000000001", model)


def test_injected_write_error_during_checkpoint_keeps_earlier_ones(tmp_path, monkeypatch):
    model, opt = tiny_model_and_opt()
    env = init_distributed("cpu")
    ckpt.save(tmp_path / "ckpt", 1, model, opt, {}, env)
    real_save = ckpt.dcp.save

    def half_written(state, checkpoint_id):
        Path(checkpoint_id).mkdir(parents=True, exist_ok=True)
        (Path(checkpoint_id) / "__0_0.distcp").write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(ckpt.dcp, "save", half_written)
    with pytest.raises(StorageError, match=r"writing checkpoint step 2 to .* failed \(RuntimeError: \[enforce fail.*"
                                           r"The last intact checkpoint is .*step_000000001"):
        ckpt.save(tmp_path / "ckpt", 2, model, opt, {}, env)
    assert not list((tmp_path / "ckpt").glob(".tmp_*"))
    monkeypatch.setattr(ckpt.dcp, "save", real_save)
    _assert_loadable(tmp_path / "ckpt/step_000000001", model)


def test_injected_enospc_in_the_manifest_write_is_named_as_a_full_disk(tmp_path, monkeypatch):
    model, opt = tiny_model_and_opt()
    env = init_distributed("cpu")
    ckpt.save(tmp_path / "ckpt", 1, model, opt, {}, env)
    real = ckpt.write_json_atomic

    def full(path, obj):
        if Path(path).name == ckpt.MANIFEST:
            raise enospc(path)
        return real(path, obj)

    monkeypatch.setattr(ckpt, "write_json_atomic", full)
    with pytest.raises(StorageError, match=r"^the disk is full: writing checkpoint step 2 .*No space left on device"):
        ckpt.save(tmp_path / "ckpt", 2, model, opt, {}, env)
    assert [c.name for c in ckpt.list_checkpoints(tmp_path / "ckpt")] == ["step_000000001"]
    assert not list((tmp_path / "ckpt").glob(".tmp_*"))


def test_space_shortage_is_caught_before_writing(tmp_path, monkeypatch):
    model, opt = tiny_model_and_opt()
    env = init_distributed("cpu")
    ckpt.save(tmp_path / "ckpt", 1, model, opt, {}, env)
    size = ckpt.checkpoint_bytes(tmp_path / "ckpt/step_000000001")
    assert size >= ckpt.state_bytes({"m": ckpt.model_state(model)})  # the estimate: the previous checkpoint
    monkeypatch.setattr(diskspace, "free_bytes", lambda path: size // 2)
    with pytest.raises(StorageError, match=rf"not enough disk space for checkpoint step 2: it needs about "
                                           rf"{diskspace.fmt_bytes(diskspace.with_slack(size))} in "
                                           rf"{tmp_path / 'ckpt'}, only {diskspace.fmt_bytes(size // 2)} free, so it "
                                           r"was not written"):
        ckpt.save(tmp_path / "ckpt", 2, model, opt, {}, env)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step_000000001"]
