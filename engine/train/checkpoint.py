"""Checkpoints through torch.distributed.checkpoint (DCP), written so an interrupted write is never
loaded and loadable at another world size.

Layout of a run's checkpoint directory:

    ckpt/step_000000120/         one complete checkpoint
        *.distcp, .metadata      DCP's files (model + optimizer tensors, sharded as they were)
        extra.json               everything else: step, loader position, ARS state, RNG, config
        manifest.json            written LAST: size and sha256 of every other file
    ckpt/.tmp_step_000000130/    a write in progress (never read; removed on the next save)

A checkpoint becomes visible only by the atomic rename of its temporary directory after its
manifest is on disk. Loading walks checkpoints newest first and verifies the manifest; a truncated
or corrupted one is named in a warning and the previous good one is used.

Before writing, every rank checks that the filesystem has room for the checkpoint (the previous
checkpoint's size, or this state's byte count when larger, plus slack); a shortage, or any error
while writing, stops every rank with one StorageError naming the path, the bytes needed and free
and the last intact checkpoint, after the partial temporary directory is removed. Earlier
checkpoints are never touched before the new one is complete.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    set_model_state_dict,
)

from engine.runtime.diskspace import (StorageError, checkpoint_advice, ensure_free, remove_quietly, rerun_advice,
                                      with_slack, write_failure)
from engine.runtime.distributed import DistEnv, all_reduce_sum, barrier, broadcast_object, local
from models.config import GPTConfig
from models.gpt import GPT

# A single process saving through DCP is intended here (world size 1 runs without a process group).
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")

MANIFEST = "manifest.json"
EXTRA = "extra.json"


class CheckpointError(RuntimeError):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON via a temporary file and os.replace: readers see the old or the new file, never
    a partial one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, default=_json_default)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        remove_quietly(tmp)  # a failed write (disk full) leaves no partial file behind
        if e.filename is None:  # name the file in the message (write() errors carry no name)
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    except BaseException:
        remove_quietly(tmp)
        raise


def _json_default(o):
    if isinstance(o, (bytes, bytearray)):
        return {"__bytes__": base64.b64encode(bytes(o)).decode()}
    if isinstance(o, torch.Tensor):
        return {"__tensor_u8__": base64.b64encode(o.cpu().contiguous().view(torch.uint8).numpy().tobytes()).decode()}
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"cannot serialise {type(o).__name__} to JSON")


def _json_hook(d):
    if "__bytes__" in d:
        return base64.b64decode(d["__bytes__"])
    if "__tensor_u8__" in d:
        return torch.frombuffer(bytearray(base64.b64decode(d["__tensor_u8__"])), dtype=torch.uint8).clone()
    return d


def read_json(path: Path):
    with open(path) as f:
        return json.load(f, object_hook=_json_hook)


def verify(ckpt: Path) -> str | None:
    """None when `ckpt` is complete and intact, else the reason it is not."""
    mpath = ckpt / MANIFEST
    if not mpath.is_file():
        return "no manifest (write never completed)"
    try:
        manifest = read_json(mpath)
    except Exception as e:  # truncated or garbled manifest
        return f"unreadable manifest: {e}"
    for name, meta in manifest.get("files", {}).items():
        f = ckpt / name
        if not f.is_file():
            return f"missing file {name}"
        if f.stat().st_size != meta["size"]:
            return f"file {name} has {f.stat().st_size} bytes, manifest says {meta['size']}"
        if _sha256(f) != meta["sha256"]:
            return f"file {name} fails its sha256 check"
    return None


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    if not ckpt_dir.is_dir():
        return []
    return sorted((p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step_")), reverse=True)


def last_intact_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest checkpoint in `ckpt_dir` that passes `verify`, or None (silent: for messages)."""
    return next((ck for ck in list_checkpoints(Path(ckpt_dir)) if verify(ck) is None), None)


def resume_advice(ckpt_dir: Path) -> str:
    """What is still safe in a run's checkpoint directory after a failed write, and what to do."""
    return checkpoint_advice(last_intact_checkpoint(ckpt_dir))


def storage_advice(out: Path) -> str:
    """storage_guard's advice for a run directory `out`: its checkpoints' state once it has ckpt/."""
    out = Path(out)
    return resume_advice(out / "ckpt") if (out / "ckpt").is_dir() else rerun_advice(out)


def latest_valid(ckpt_dir: Path, env: DistEnv | None = None) -> Path | None:
    """Newest intact checkpoint (rank 0 decides, every rank gets the same answer)."""
    choice = None
    if env is None or env.is_main:
        for ck in list_checkpoints(Path(ckpt_dir)):
            reason = verify(ck)
            if reason is None:
                choice = str(ck)
                break
            warnings.warn(f"checkpoint {ck} is unusable ({reason}); falling back to the previous one", stacklevel=2)
    if env is not None:
        choice = broadcast_object(choice, env)
    return Path(choice) if choice else None


def model_state(model) -> dict:
    return get_model_state_dict(model)


def state_bytes(state) -> int:
    """Bytes of this rank's tensors in a (nested) state dict: what DCP will write for it."""
    if isinstance(state, torch.Tensor):
        t = local(state)
        return t.numel() * t.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    return 0


def checkpoint_bytes(ckpt: Path) -> int:
    """Total size of a written checkpoint, from its manifest (0 when it has none)."""
    try:
        return sum(int(m["size"]) for m in read_json(Path(ckpt) / MANIFEST)["files"].values())
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _needed_bytes(ckpt_dir: Path, state: dict, env: DistEnv) -> int:
    """Expected size of the next checkpoint (all ranks): the newest one's, or the state's bytes."""
    total = float(all_reduce_sum(torch.tensor(float(state_bytes(state)), dtype=torch.float64), env))
    previous = [checkpoint_bytes(ck) for ck in list_checkpoints(ckpt_dir)[:1]]
    return with_slack(max([int(total), *previous]))


def _attempt(fn) -> BaseException | None:
    """Run one stage of a write; its exception is returned, to be raised once every rank knows."""
    try:
        fn()
    except (Exception, dcp.api.CheckpointException) as e:  # DCP's exception is a BaseException
        return e
    return None


def _agree(err: BaseException | None, env: DistEnv, tmp: Path, need: int, what: str) -> None:
    """When any rank failed: remove the partial `tmp` and raise one StorageError on every rank
    (free space is measured after the removal, so the message says what a retry would have)."""
    if float(all_reduce_sum(torch.tensor(0.0 if err is None else 1.0), env)) == 0:
        return
    if env.is_main:
        remove_quietly(tmp)
    barrier(env)
    if isinstance(err, StorageError):
        raise err
    if err is None:
        raise StorageError(f"writing {what} to {tmp} failed on another rank (see its message); "
                           f"{resume_advice(tmp.parent)}")
    raise write_failure(tmp, need, what, err, resume_advice(tmp.parent)) from err


def save(ckpt_dir: Path, step: int, model, optimizer, extra: dict, env: DistEnv, keep_last: int = 2,
         extra_tensors: dict | None = None, keep_steps=()) -> Path:
    """Write checkpoint `step` atomically; refuse to write non-finite weights. `extra_tensors`
    (e.g. the online Fisher buffers) are saved through DCP beside the model, sharded as they are.
    Checkpoints older than the newest `keep_last` are removed, except those at `keep_steps` (the
    branch points of a WSD stable run). Raises StorageError on every rank when the disk lacks room or a write fails."""
    ckpt_dir = Path(ckpt_dir)
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(local(p.detach())).all())]
    if float(all_reduce_sum(torch.tensor(float(len(bad))), env)) > 0:
        raise CheckpointError(f"refusing to checkpoint step {step}: non-finite values in {bad or 'another rank'}")
    final = ckpt_dir / f"step_{step:09d}"
    tmp = ckpt_dir / f".tmp_step_{step:09d}"
    if env.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        for stale in [*ckpt_dir.glob(".tmp_step_*"), *ckpt_dir.glob(".old_step_*")]:
            shutil.rmtree(stale, ignore_errors=True)
    barrier(env)
    state = {"model": model_state(model), "optim": optimizer.state_dict()["state"], **(extra_tensors or {})}
    need = _needed_bytes(ckpt_dir, state, env)
    what = f"checkpoint step {step}"
    _agree(_attempt(lambda: ensure_free(ckpt_dir, need, what, lambda: resume_advice(ckpt_dir))), env, tmp, need, what)
    _agree(_attempt(lambda: dcp.save(state, checkpoint_id=str(tmp))), env, tmp, need, what)
    err = _attempt(lambda: _finish(ckpt_dir, tmp, final, step, optimizer, extra, env)) if env.is_main else None
    _agree(err, env, tmp, need, what)
    if env.is_main:
        for old in list_checkpoints(ckpt_dir)[keep_last:]:
            if int(old.name.removeprefix("step_")) not in keep_steps:
                shutil.rmtree(old, ignore_errors=True)
    barrier(env)
    return final


def _finish(ckpt_dir: Path, tmp: Path, final: Path, step: int, optimizer, extra: dict, env: DistEnv) -> None:
    """Rank 0: extra.json, the manifest, then the rename that makes the checkpoint visible."""
    extra = dict(extra, step=step, optim_step=optimizer.step_count, world_size=env.world_size,
                 saved_at=time.time(), torch_rng=torch.get_rng_state())
    with open(tmp / EXTRA, "w") as f:
        json.dump(extra, f, default=_json_default)
        f.flush()
        os.fsync(f.fileno())
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir()) if p.is_file()}
    write_json_atomic(tmp / MANIFEST, {"step": step, "files": files})
    _fsync_dir(tmp)
    replaced = None
    if final.exists():  # a rerun reaching a step it already saved: swap it out only now
        replaced = final.with_name(".old_" + final.name)
        shutil.rmtree(replaced, ignore_errors=True)
        os.rename(final, replaced)
    os.rename(tmp, final)
    _fsync_dir(ckpt_dir)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)


def load(path: Path, model, optimizer, extra_tensors: dict | None = None) -> dict:
    """Load model + optimizer (+ extra tensors) in place, at any world size; return the extra dict."""
    state = {"model": model_state(model), "optim": optimizer.state_dict()["state"], **(extra_tensors or {})}
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"])
    optimizer.load_state_dict({"step": 0, "state": state["optim"]})
    extra = read_json(Path(path) / EXTRA)
    optimizer.step_count = int(extra["optim_step"])
    if "torch_rng" in extra:
        torch.set_rng_state(extra["torch_rng"])
    return extra


def load_full_weights(path: Path, model) -> None:
    """Load only the model weights of a checkpoint (saved at any world size) into an unsharded
    model on this process: used to grow rung d into d+1."""
    sd = {k: v for k, v in model.state_dict().items()}
    dcp.load({"model": sd}, checkpoint_id=str(path))
    model.load_state_dict(sd)


def load_model(path: Path, mcfg: GPTConfig) -> GPT:
    """A model of config `mcfg` holding the weights of checkpoint `path`, unsharded on CPU
    (whatever world size wrote them)."""
    model = GPT(mcfg)
    model.init_weights(0)
    load_full_weights(path, model)
    return model


def load_run_model(run: Path) -> GPT:
    """The trained model of a finished run: its newest intact checkpoint, in the model config its
    run.json recorded."""
    path = latest_valid(Path(run) / "ckpt")
    if path is None:
        raise FileNotFoundError(f"run {run} is finished but has no intact checkpoint")
    return load_model(path, GPTConfig.from_dict(read_json(Path(run) / "run.json")["model_config"]))


def load_full_moments(path: Path, model) -> tuple[dict, int]:
    """The AdamW moments of a checkpoint (saved at any world size), unsharded on CPU and keyed like
    `model`'s parameters, and the optimizer's step count: used to carry them into a grown rung."""
    moments = {n: {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
               for n, p in model.named_parameters()}
    try:
        dcp.load({"optim": moments}, checkpoint_id=str(path))
    except Exception as e:  # e.g. a Muon checkpoint: its block matrices hold a momentum, not Adam moments
        raise CheckpointError(f"checkpoint {path} holds no AdamW moments for every parameter to carry into the "
                              f"grown rung ({type(e).__name__}); use --optimizer-state fresh") from e
    return moments, int(read_json(Path(path) / EXTRA)["optim_step"])
