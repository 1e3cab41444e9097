"""Train one rung of the ladder: the loop, its budget, its outputs.

One optimizer step:
    loader.next() x accum -> forward -> backward        (FSDP2 reduce-scatters inside backward)
    [loss, non-finite gradient?] -> skip verdict         (engine/train/guard.py; read a step late on CUDA)
    ARS factor from the step's loss                      (engine/inherit/ars.py; a device tensor on CUDA)
    penalty terms for this step                          (engine/inherit/penalty.py; kappa, anchors, SVD term)
    optimizer.step: one fused kernel pass per group      (Fisher accumulate, g' = d (g + kappa (p - A)), AdamW)

Outputs in `cfg.out`: metrics.jsonl (one line per optimizer step; eval results on the steps that
evaluated), ckpt/ (atomic DCP checkpoints), final.json (written last: its presence means the rung
finished), fisher.pt when the online Fisher was accumulated, and the profiler's files.
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch

from engine.train import checkpoint as ckpt
from engine.data import prepare_data, TokenLoader
from engine.runtime.distributed import DistEnv, all_reduce_sum, compile_blocks, device_name, full_tensor, local, resolve_compile, shard_like, shard_model
from engine.train.evaluate import evaluate
from engine.train.optim import InheritTerms, LadderOptimizer, model_param_groups
from engine.train.guard import DeviceValues, NonFiniteGuard, found_inf, resolve_host_sync, step_flags
from engine.train.schedule import lr_multiplier
from models.attention import select_backend

from engine.inherit.inheritance import Inheritance
from engine.train.config import MUON_MATRIX_LR, TrainConfig, TrainError, check_val_split, total_steps_for, validate
from models.gpt import GPT


def _step_of(line: str) -> int | None:
    """The step of a metrics line, or None for a blank or torn one."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


class MetricsLog:
    """metrics.jsonl, appended one line per optimizer step. On resume, lines past the checkpoint's
    step (written before a crash) are dropped so the file reads as one uninterrupted run; so is a
    torn line (a kill in the middle of a write), which is necessarily after the checkpoint."""

    def __init__(self, path: Path, resume_step: int | None, enabled: bool):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        if resume_step is None:
            path.write_text("")
        elif path.exists():
            steps = [(l, _step_of(l)) for l in path.read_text().splitlines()]
            keep = [l for l, k in steps if k is not None and k <= resume_step]
            path.write_text("".join(l + "\n" for l in keep))
        self.f = open(path, "a")

    def write(self, rec: dict):
        if self.enabled:
            self.f.write(json.dumps(rec) + "\n")
            self.f.flush()

    def close(self):
        if self.enabled:
            self.f.close()


def _profiler(cfg, out, env, mcfg):
    try:
        from profiling import Profiler
    except ImportError:
        Profiler = None
    if Profiler is None or not cfg.profile or not env.is_main:
        return _NullProfiler()
    return Profiler(out, env.device, enabled=True, flops_per_token=mcfg.flops_per_token)


class _NullProfiler:
    def stage(self, name):
        return nullcontext()

    def step_end(self, *a, **k):
        pass

    def close(self):
        pass


def train_rung(cfg: TrainConfig, env: DistEnv, inherit: Inheritance | None = None) -> dict:
    validate(cfg, env)
    out = Path(cfg.out)
    mcfg = cfg.model_config()
    on_cuda = env.device.type == "cuda"
    bf16 = on_cuda and mcfg.dtype == "bfloat16"
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    # ---- data (rank 0 builds the cache, the others wait on its file lock and load it) --------
    bundle = prepare_data(cfg.data, mcfg.vocab_size, cfg.cache_dir, progress=cfg.progress and env.is_main)
    if bundle.tokenizer.vocab_size != mcfg.vocab_size:
        raise ValueError(f"tokenizer has vocab {bundle.tokenizer.vocab_size}, model expects {mcfg.vocab_size}")
    gb = cfg.resolved("global_batch")
    db = min(cfg.resolved("device_batch"), gb // env.world_size)
    accum = gb // (db * env.world_size)
    check_val_split(len(bundle.val), cfg, mcfg.seq_len, db, env.world_size)
    total_steps = total_steps_for(cfg, mcfg)
    loader = TokenLoader(bundle.train, mcfg.seq_len, db * env.world_size, rank=env.rank, world_size=env.world_size,
                         seed=cfg.seed, device=env.device)
    token_bytes = torch.as_tensor(bundle.tokenizer.token_bytes, dtype=torch.int64)

    # ---- model: built on meta, materialised, initialised or inherited, then sharded -----------
    torch.manual_seed(cfg.seed)
    with torch.device("meta"):
        model = GPT(mcfg)
    model.to_empty(device=env.device)
    model.init_weights(cfg.seed)
    if inherit is not None:
        model.load_state_dict({k: v.to(env.device) for k, v in inherit.state.items()}, strict=False)
    attention = select_backend(env.device, torch.bfloat16 if bf16 else torch.float32)
    model.set_attention(attention)
    if resolve_compile(cfg.compile, env.device):
        compile_blocks(model)  # per block, before FSDP2 shards it (torchtitan's order)
    model = shard_model(model, env, bf16)
    autocast = (partial(torch.autocast, "cuda", dtype=torch.bfloat16) if bf16 and env.world_size == 1 else nullcontext)

    muon = cfg.optimizer == "muon"
    matrix_lr = MUON_MATRIX_LR if muon and cfg.matrix_lr is None else cfg.resolved("matrix_lr")
    groups = model_param_groups(model, matrix_lr=matrix_lr * cfg.lr_mult, embedding_lr=cfg.resolved("embedding_lr") * cfg.lr_mult,
                                unembedding_lr=cfg.resolved("unembedding_lr") * cfg.lr_mult,
                                weight_decay=cfg.weight_decay, muon=muon)
    opt = LadderOptimizer(groups, adamw_impl=cfg.adamw_impl)
    named = dict(model.named_parameters())

    # ---- inheritance pieces, as rank-local shards ----------------------------------------------
    penalty = None
    if inherit is not None and inherit.penalty.get("enabled", True) and (inherit.penalty.get("lam", 0) or inherit.penalty.get("gamma", 0)):
        from engine.inherit.penalty import Penalty

        loc = lambda d: {n: shard_like(d[n], named[n]) for n in named} if d is not None else None
        pen_kwargs = {k: v for k, v in inherit.penalty.items() if k != "enabled"}
        if pen_kwargs.get("subspace", "coords") == "svd" and env.world_size > 1:
            raise ValueError("--subspace svd needs whole matrices; run it with world_size 1 (coords works sharded)")
        penalty = Penalty([(n, local(p)) for n, p in named.items()], loc(inherit.anchor), loc(inherit.mask),
                          loc(inherit.fisher) if inherit.fisher is not None else {n: torch.zeros_like(local(p)) for n, p in named.items()},
                          total_steps=total_steps, **pen_kwargs)
    lagged = resolve_host_sync(cfg.host_sync, env.device, cfg.adamw_impl) == "lagged"
    ars = None
    if cfg.ars != "off":
        from engine.inherit.ars import ARS, ARSDevice

        # lagged mode never reads the loss on the host: ARS runs on the device (engine/inherit/ars.py)
        ars = ARSDevice(mode=cfg.ars, seed=cfg.seed, device=env.device) if lagged else ARS(mode=cfg.ars, seed=cfg.seed)
    fisher_bufs = None
    fisher_start = total_steps - cfg.fisher_online_steps
    if cfg.fisher_online_steps:
        fisher_bufs = {n: torch.zeros_like(p) for n, p in named.items()}  # DTensors under FSDP

    # ---- resume ----------------------------------------------------------------------------
    start_step, extra = 0, {}
    consumed_flops, wall_before = 0.0, 0.0
    found = ckpt.latest_valid(out / "ckpt", env) if cfg.resume else None
    if cfg.resume and found is None and (out / "final.json").exists():
        raise TrainError(f"{out} holds a finished run (final.json) but no usable checkpoint to resume from")
    # a run starts from its own newest checkpoint (resume), else from init_from (a WSD branch from
    # its stable run: another run's checkpoint, so its step budget differs), else from step 0
    start_from = found if found is not None else (Path(cfg.init_from) if cfg.init_from else None)
    if start_from is not None:
        saved = ckpt.read_json(start_from / ckpt.EXTRA)  # check compatibility before touching any tensor
        if saved.get("model_config") != mcfg.to_dict() or (found is not None and saved.get("total_steps") != total_steps):
            raise TrainError(f"checkpoint {start_from} belongs to a different run (model config or step budget differs); "
                             f"use another --out or delete {out / 'ckpt'}")
        if found is None and not 0 < int(saved["step"]) < total_steps:
            raise TrainError(f"init_from {start_from} is at step {saved['step']}; a run of {total_steps} steps can only "
                             f"start from a step in 1..{total_steps - 1}")
        own = {"fisher": fisher_bufs} if fisher_bufs and found is not None else None  # Fisher: accumulated by this run
        extra = ckpt.load(start_from, model, opt, extra_tensors=own)
        start_step = int(extra["step"])
        loader.load_state_dict(extra["loader"])
        if ars is not None and extra.get("ars") is not None:
            saved_on_device = "buf" in extra["ars"]  # ARSDevice state (lagged mode), else host ARS state
            if saved_on_device != lagged:
                want = "lagged" if saved_on_device else "step"
                raise TrainError(f"checkpoint {found} holds the ARS state of a --host-sync {want} run, and this "
                                 f"run is --host-sync {'lagged' if lagged else 'step'}; resume with --host-sync {want}")
            ars.load_state_dict(extra["ars"])
        consumed_flops, wall_before = float(extra["flops"]), float(extra["wall_s"])
    elif inherit is not None:
        start_inherited(inherit, loader, opt, named)
    if found is None and env.is_main and (out / "ckpt").exists() and not cfg.resume and any((out / "ckpt").iterdir()):
        raise TrainError(f"{out} already holds checkpoints of a run; pass --resume to continue it or choose another --out")

    metrics = MetricsLog(out / "metrics.jsonl", start_step if found is not None else None, env.is_main)
    keep_steps = set(cfg.keep_ckpt_steps)
    prof = _profiler(cfg, out, env, mcfg)
    tokens_per_step = gb * mcfg.seq_len
    flops_per_step = mcfg.flops_per_token * tokens_per_step
    eval_every = cfg.eval_every or max(1, total_steps // 12)
    eval_kw = dict(seq_len=mcfg.seq_len, batch_size=db, max_tokens=cfg.resolved("eval_tokens"), env=env, autocast=autocast)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, round(0.02 * total_steps))
    meta = run_metadata(cfg, env, mcfg, attention.name, opt.kernel_backend, accum, db, total_steps)
    if env.is_main:
        ckpt.write_json_atomic(out / "run.json", meta)

    def do_eval():
        with prof.stage("eval"):
            return evaluate(model, bundle.val, token_bytes, **eval_kw)

    start_eval = None
    if start_step == 0:
        start_eval = do_eval()
        metrics.write({"step": 0, "tokens": 0, "flops": consumed_flops, **start_eval})
    elif "start_eval" in extra:
        start_eval = extra["start_eval"]

    bar = None
    if env.is_main and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=start_step, desc=f"d{cfg.depth} {out.name}", unit="step", dynamic_ncols=True)
    guard = NonFiniteGuard(cfg.max_nonfinite, skipped=int(extra.get("skipped_steps", 0)))

    def save_ckpt():
        with prof.stage("checkpoint"):
            ckpt.save(out / "ckpt", step, model, opt, {
                "loader": loader.state_dict(), "ars": ars.state_dict() if ars else None,
                "model_config": mcfg.to_dict(), "total_steps": total_steps, "flops": consumed_flops,
                "wall_s": wall_before + time.time() - t_loop, "start_eval": start_eval, "skipped_steps": guard.skipped,
            }, env, extra_tensors={"fisher": fisher_bufs} if fisher_bufs else None, keep_steps=keep_steps)

    def settle(entry: dict) -> bool:
        """Read a step's verdict (engine/train/guard.py) and log it; False when it was skipped."""
        nonlocal consumed_flops
        loss_value, bad_grads, pen, *damping = entry.pop("values").read()
        damping = damping[0] if damping else entry.pop("host_damping")
        what = guard.judge(loss_value, bad_grads)
        if what is not None:
            if lagged:  # the device already skipped it; undo the host counts it advanced
                opt.unstep()
                if ars is not None:
                    ars.rollback()
            stop = guard.stop_message(entry["step"] - 1, loss_value, what)
            if stop:
                raise TrainError(stop)
            metrics.write({"step": entry["step"], "skipped": f"non-finite {what}", "tokens": entry["tokens"],
                           "flops": consumed_flops})
            return False
        consumed_flops += flops_per_step
        entry.update(loss=loss_value, flops=consumed_flops, ars=damping)
        if entry.pop("has_penalty"):
            entry["penalty"] = pen
        if bar is not None:
            bar.update(entry["step"] - bar.n)
            bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{tokens_per_step / max(entry['dt'], 1e-9):.0f}")
        return True

    rank_mean = torch.tensor([env.world_size, 1.0], device=env.device)  # made once: a per-step copy would sync
    last_eval = None
    pending = None  # lagged mode: the previous step, its verdict not read yet
    t_loop = time.time()
    step = start_step
    model.train()
    while step < total_steps:
        t0 = time.time()
        loss_sum = torch.zeros((), device=env.device)
        for _ in range(accum):
            with prof.stage("data"):
                x, y = loader.next()
            with prof.stage("forward"), autocast():
                loss = model(x, y) / accum
            with prof.stage("backward"):
                loss.backward()
            loss_sum += loss.detach()
        # [loss sum, ranks with a non-finite gradient], reduced together in one all-reduce
        flags = step_flags(loss_sum, named.values())
        if env.distributed:  # mean loss over ranks; the flag stays a count of ranks
            flags = all_reduce_sum(flags, env) / rank_mean
        lr_mult = lr_multiplier(step, total_steps, warmup, cfg.warmdown_frac, cfg.final_lr_frac)
        lr = groups[-1].lr * lr_mult
        step += 1
        eval_due = step % eval_every == 0 or step == total_steps
        ckpt_due = bool(cfg.ckpt_every and step % cfg.ckpt_every == 0) or step == total_steps or step in keep_steps
        entry = {"step": step, "lr": lr, "lr_mult": lr_mult, "tokens": step * tokens_per_step}
        if lagged:
            if pending is not None and settle(pending):  # its flags were computed before this step's forward
                metrics.write(pending)
            skip, good = found_inf(flags), True  # a bad step becomes a no-op on the device
            with prof.stage("ars"):
                damping = ars.update(flags[0], lr, ok=skip == 0) if ars is not None else 1.0
        else:
            loss_value, bad_grads = flags.tolist()  # one host read per step (free on CPU)
            skip, good, damping = None, math.isfinite(loss_value) and not bad_grads, 1.0
            if good and ars is not None:
                with prof.stage("ars"):
                    damping = ars.update(loss_value, lr)
        pen = None
        if good:
            terms = None
            if penalty is not None:
                with prof.stage("penalty"):
                    terms = penalty_terms(penalty, named, step - 1)
            fishing = fisher_bufs is not None and step - 1 >= fisher_start
            with prof.stage("optimizer"):
                pen = opt.step(lr_mult, damping=damping, terms=terms,
                               fishers={n: local(b) for n, b in fisher_bufs.items()} if fishing else None,
                               fisher_scale=1.0 / cfg.fisher_online_steps if fishing else 1.0, found_inf=skip)
        opt.zero_grad()
        prof.step_end(step, tokens_per_step, flops_per_step)
        entry["dt"] = time.time() - t0
        entry["has_penalty"] = pen is not None
        # what settle() reads, in one small device->host copy (a host float damping stays on the host:
        # making it a device tensor would be a blocking copy)
        on_device = [flags[0], flags[1], all_reduce_sum(pen, env) if pen is not None else flags[1]]
        if isinstance(damping, torch.Tensor):
            on_device.append(damping)
        else:
            entry["host_damping"] = float(damping)
        entry["values"] = DeviceValues(torch.stack([t.reshape(()).to(torch.float64) for t in on_device]))
        if lagged and not (eval_due or ckpt_due):
            pending = entry  # read during the next step; eval and checkpoint steps sync anyway: read now
            continue
        pending = None
        if not settle(entry):
            if step == total_steps:
                last_eval = None  # the final val loss is measured after the loop, on the final weights
            if ckpt_due:
                save_ckpt()  # the run's last step must leave a checkpoint even when it was skipped
            continue
        if eval_due:
            last_eval = do_eval()
            entry.update(last_eval)
        metrics.write(entry)
        if ckpt_due:
            save_ckpt()
    if bar is not None:
        bar.close()
    prof.close()
    metrics.close()
    if last_eval is None:  # resumed exactly at the end
        last_eval = do_eval()
    wall_s = wall_before + time.time() - t_loop
    if fisher_bufs is not None:
        full = {n: full_tensor(b).cpu() for n, b in fisher_bufs.items()}
        if env.is_main:
            tmp = out / ".fisher.pt.tmp"
            torch.save(full, tmp)
            os.replace(tmp, out / "fisher.pt")
    final = {
        "depth": cfg.depth, "params": mcfg.num_params, "scaling_params": mcfg.scaling_params,
        "tokens": total_steps * tokens_per_step, "steps": total_steps, "flops": consumed_flops,
        "fisher_flops": inherit.fisher_flops if inherit else 0.0,
        # the penalty's own elementwise/SVD work, summed over ranks' shards (an estimate, see Penalty)
        "penalty_flops": float(penalty.penalty_flops_per_step * env.world_size * total_steps) if penalty else 0.0,
        "val_loss": last_eval["val_loss"], "val_bpb": last_eval["val_bpb"], "val_loss_se": last_eval.get("val_loss_se"),
        "start_val_loss": start_eval["val_loss"] if start_eval else None,
        "wall_s": wall_s, "setup_s": t_loop - t_start, "skipped_steps": guard.skipped,
        **{k: meta[k] for k in ("device", "device_name", "attention_backend", "kernel_backend", "world_size", "dtype")},
        "growth": inherit.info if inherit else None,
    }
    if env.is_main:
        ckpt.write_json_atomic(out / "final.json", final)
    return final


def start_inherited(inherit: Inheritance, loader, opt, named) -> None:
    """A grown rung's first step: its token stream and optimizer state as the inheritance says."""
    if inherit.loader_state is not None:
        loader.load_state_dict(inherit.loader_state)  # the grown rung reads on from its parent's stream
    if inherit.moments is not None:
        if opt.step_count != 0 or any("exp_avg" not in opt.state[n] for n in named):
            raise TrainError("carried optimizer moments need a fresh AdamW optimizer (--optimizer adamw)")
        for n, p in named.items():
            for key in ("exp_avg", "exp_avg_sq"):
                local(opt.state[n][key]).copy_(local(shard_like(inherit.moments[n][key], p)))
        opt.step_count = inherit.optim_step


def penalty_terms(penalty, named, step) -> InheritTerms:
    kappas = penalty.kappa_for(step)
    anchors = penalty.anchors()
    names = list(named)
    extra = penalty.extra_grads([local(named[n]) for n in names], step) if penalty.subspace == "svd" else None
    return InheritTerms(
        anchors={n: a for n, a in zip(names, anchors) if a is not None},
        kappas={n: k for n, k in zip(names, kappas) if k is not None},
        extra_grads={n: x for n, x in zip(names, extra) if x is not None} if extra else {},
    )


def run_metadata(cfg, env, mcfg, attention_name, kernel_backend, accum, device_batch, total_steps) -> dict:
    on_cuda = env.device.type == "cuda"
    return {
        "config": asdict(cfg), "model_config": mcfg.to_dict(), "total_steps": total_steps,
        "grad_accum_steps": accum, "device_batch": device_batch,
        "device": env.device.type,
        "device_name": device_name(env.device),
        "world_size": env.world_size, "attention_backend": attention_name, "kernel_backend": kernel_backend,
        "dtype": "bfloat16" if on_cuda and mcfg.dtype == "bfloat16" else "float32",
        "fsdp": env.world_size > 1, "compile": resolve_compile(cfg.compile, env.device), "torch": torch.__version__,
        "apex": _apex_available() if on_cuda else False,
        "threads": torch.get_num_threads(),
        # when the host reads each step's loss/non-finite verdict (engine/train/guard.py)
        "host_sync": resolve_host_sync(cfg.host_sync, env.device, cfg.adamw_impl),
    }


def _apex_available() -> bool:
    try:
        import apex.optimizers  # noqa: F401  (NVIDIA apex; PyPI's "apex" is unrelated and lacks this)

        return True
    except Exception:
        return False
