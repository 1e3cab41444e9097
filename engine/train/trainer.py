"""Train one rung of the ladder: `train_rung(cfg, env, inherit)` runs a `RungTrainer`, whose
methods are the loop's parts: set up, resume, one step, settle, evaluate, checkpoint, finish.

One optimizer step (`RungTrainer.train_step`, step numbers 1-based):
    loader.next() x accum -> forward -> backward        (FSDP2 reduce-scatters inside backward)
      (a distilling grown rung: its teacher's forward first, the loss mixes in its KL: engine/inherit/distill.py)
    [loss, non-finite gradient?] in one device tensor    (engine/train/guard.py step_flags; one all-reduce)
    settle the previous step when lagged                 (HostSync: its verdict read a step late on CUDA)
    update plan: skip verdict and ARS factor             (HostSync.plan; engine/inherit/ars.py)
    penalty terms for this step                          (engine/train/inherited.py; kappa, anchors, SVD term)
    optimizer.step: one fused kernel call per group      (engine/train/optim.py: Fisher accumulate,
                                                          g' = d (g + kappa (p - A)), AdamW; Muon in torch ops)
    settle this step (now, or next step when lagged)     (guard verdict, metrics line, eval, checkpoint)

Outputs in `cfg.out`: run.json (the run's settings), metrics.jsonl (one line per optimizer step;
eval results on the steps that evaluated), ckpt/ (atomic DCP checkpoints), fisher.pt when the
online Fisher was accumulated (its step count in final.json's "fisher_steps"), the profiler's
files, and final.json (written last: its presence means the rung finished).
"""
from __future__ import annotations

import os
import time
from contextlib import nullcontext
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from engine.data import TokenLoader, prepare_data
from engine.inherit.fisher import OnlineFisher
from engine.inherit.inheritance import Inheritance
from engine.runtime.distributed import (DistEnv, all_reduce_sum, compile_blocks, device_name, full_tensor, local,
                                        resolve_compile, shard_model)
from engine.train import checkpoint as ckpt
from engine.train.config import MUON_MATRIX_LR, TrainConfig, TrainError, check_val_split, total_steps_for, validate
from engine.train.evaluate import evaluate
from engine.train.guard import (DeviceValues, HostSync, NonFiniteGuard, StepRecord, UpdatePlan, resolve_host_sync,
                                step_flags)
from engine.train.inherited import (LayerRamp, NewMomentCorrection, build_penalty, build_teacher, penalty_terms,
                                    start_inherited)
from engine.train.metrics_log import MetricsLog
from engine.train.optim import LadderOptimizer, model_param_groups
from engine.train.schedule import lr_multiplier
from models.attention import select_backend
from models.gpt import GPT
from profiling import Profiler


def train_rung(cfg: TrainConfig, env: DistEnv, inherit: Inheritance | None = None) -> dict:
    """Train (or resume) one rung; returns its final.json record."""
    validate(cfg, env)
    return RungTrainer(cfg, env, inherit).run()


class RungTrainer:
    """One rung's training run. Construction sets everything up and resumes; `run()` trains the
    remaining steps and finishes."""

    def __init__(self, cfg: TrainConfig, env: DistEnv, inherit: Inheritance | None):
        self.cfg, self.env, self.inherit = cfg, env, inherit
        self.out = Path(cfg.out)
        self.mcfg = cfg.model_config()
        if env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.t_start = time.time()
        self._set_up_data()
        self._set_up_model()
        self._set_up_optimizer()
        self._set_up_method()
        self._resume()
        self._set_up_outputs()

    # ---- set up --------------------------------------------------------------------------------
    def _set_up_data(self) -> None:
        """Rank 0 builds the token cache, the others wait on its file lock and load it."""
        cfg, env, mcfg = self.cfg, self.env, self.mcfg
        self.bundle = prepare_data(cfg.data, mcfg.vocab_size, cfg.cache_dir, progress=cfg.progress and env.is_main)
        if self.bundle.tokenizer.vocab_size != mcfg.vocab_size:
            raise ValueError(f"tokenizer has vocab {self.bundle.tokenizer.vocab_size}, model expects {mcfg.vocab_size}")
        global_batch = cfg.resolved("global_batch")
        self.device_batch = min(cfg.resolved("device_batch"), global_batch // env.world_size)
        self.accum = global_batch // (self.device_batch * env.world_size)
        check_val_split(len(self.bundle.val), cfg, mcfg.seq_len, self.device_batch, env.world_size)
        self.total_steps = total_steps_for(cfg, mcfg)
        self.loader = TokenLoader(self.bundle.train, mcfg.seq_len, self.device_batch * env.world_size, rank=env.rank,
                                  world_size=env.world_size, seed=cfg.seed, device=env.device)
        self.token_bytes = torch.as_tensor(self.bundle.tokenizer.token_bytes, dtype=torch.int64)
        self.tokens_per_step = global_batch * mcfg.seq_len
        self.flops_per_step = mcfg.flops_per_token * self.tokens_per_step

    def _set_up_model(self) -> None:
        """Built on meta, materialised, initialised or inherited, compiled, then sharded."""
        cfg, env, mcfg = self.cfg, self.env, self.mcfg
        bf16 = env.device.type == "cuda" and mcfg.dtype == "bfloat16"
        torch.manual_seed(cfg.seed)
        with torch.device("meta"):
            model = GPT(mcfg)
        model.to_empty(device=env.device)
        model.init_weights(cfg.seed)
        if self.inherit is not None:
            model.load_state_dict({k: v.to(env.device) for k, v in self.inherit.state.items()}, strict=False)
        self.attention = select_backend(env.device, torch.bfloat16 if bf16 else torch.float32)
        model.set_attention(self.attention)
        if resolve_compile(cfg.compile, env.device):
            compile_blocks(model)  # per block, before FSDP2 shards it (torchtitan's order)
        self.model = shard_model(model, env, bf16)
        self.named = dict(self.model.named_parameters())
        self.distill = self.inherit.distill if self.inherit is not None else None
        self.teacher = (build_teacher(self.distill, env, self.attention, bf16, resolve_compile(cfg.compile, env.device))
                        if self.distill else None)
        # the teacher's forward passes of one step, counted in the run's FLOPs while its weight is > 0
        self.teacher_flops_per_step = self.distill.flops_per_token * self.tokens_per_step if self.distill else 0.0
        self.autocast = (partial(torch.autocast, "cuda", dtype=torch.bfloat16) if bf16 and env.world_size == 1
                         else nullcontext)

    def _set_up_optimizer(self) -> None:
        cfg = self.cfg
        muon = cfg.optimizer == "muon"
        matrix_lr = MUON_MATRIX_LR if muon and cfg.matrix_lr is None else cfg.resolved("matrix_lr")
        lr_mult = cfg.resolved("lr_mult")
        self.groups = model_param_groups(self.model, matrix_lr=matrix_lr * lr_mult,
                                         embedding_lr=cfg.resolved("embedding_lr") * lr_mult,
                                         unembedding_lr=cfg.resolved("unembedding_lr") * lr_mult,
                                         weight_decay=cfg.weight_decay, muon=muon)
        self.opt = LadderOptimizer(self.groups, adamw_impl=cfg.adamw_impl)

    def _set_up_method(self) -> None:
        """The inheritance method's pieces, as rank-local shards: penalty, ARS (with the host
        sync it depends on), online Fisher over the last `fisher_online_steps` steps."""
        cfg, env = self.cfg, self.env
        self.penalty = build_penalty(self.inherit, self.named, self.total_steps, env.world_size)
        inherit = self.inherit
        self.correction = (NewMomentCorrection(self.opt, self.named, inherit.mask, inherit.optim_step)
                           if inherit is not None and inherit.correct_new_moments else None)
        self.ramp = (LayerRamp(self.model, inherit.info["new_layer_indices"], inherit.ramp_steps)
                     if inherit is not None and inherit.ramp_steps else None)
        self.sync = HostSync(resolve_host_sync(cfg.host_sync, env.device, cfg.adamw_impl), self.opt,
                             ars_mode=cfg.ars, seed=cfg.seed, device=env.device)
        self.fisher = None
        if cfg.fisher_online_steps:
            self.fisher = OnlineFisher(cfg.fisher_online_steps).begin(self.named.items())  # DTensors under FSDP
        self.first_fisher_step = self.total_steps - cfg.fisher_online_steps + 1

    def _set_up_outputs(self) -> None:
        """metrics.jsonl, profiler, run.json, progress bar, and the evaluation before step 1."""
        cfg, env, mcfg = self.cfg, self.env, self.mcfg
        self.metrics = MetricsLog(self.out / "metrics.jsonl", self.start_step if self.resumed else None, env.is_main)
        self.prof = Profiler(self.out, env.device, enabled=cfg.profile and env.is_main,
                             flops_per_token=mcfg.flops_per_token)
        self.eval_every = cfg.eval_every or max(1, self.total_steps // 12)
        self.warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, round(0.02 * self.total_steps))
        self.meta = run_metadata(cfg, env, mcfg, self.attention.name, self.opt.kernel_backend, self.accum,
                                 self.device_batch, self.total_steps)
        if env.is_main:
            ckpt.write_json_atomic(self.out / "run.json", self.meta)
        if self.start_step == 0:
            self.start_eval = self.run_eval()
            self.metrics.write({"step": 0, "tokens": 0, "flops": self.flops, **self.start_eval})
        self.bar = None
        if env.is_main and cfg.progress:
            self.bar = tqdm(total=self.total_steps, initial=self.start_step, desc=f"d{cfg.depth} {self.out.name}",
                            unit="step", dynamic_ncols=True)
        # made once: a per-step copy would sync
        self.rank_mean = torch.tensor([env.world_size, 1.0], device=env.device)
        self.last_eval = None

    # ---- resume --------------------------------------------------------------------------------
    def _resume(self) -> None:
        """Start from the run's own newest checkpoint (--resume), else from init_from (a WSD branch
        from its stable run: another run's checkpoint, so its step budget differs), else from
        step 0 (a grown rung from its Inheritance)."""
        cfg, out = self.cfg, self.out
        self.start_step, self.flops, self.wall_before, self.start_eval, skipped = 0, 0.0, 0.0, None, 0
        self.distill_flops = 0.0  # the teacher's forward passes, a part of self.flops
        found = ckpt.latest_valid(out / "ckpt", self.env) if cfg.resume else None
        if cfg.resume and found is None and (out / "final.json").exists():
            raise TrainError(f"{out} holds a finished run (final.json) but no usable checkpoint to resume from")
        self.resumed = found is not None
        start_from = found if found is not None else (Path(cfg.init_from) if cfg.init_from else None)
        if start_from is not None:
            skipped = self._load(start_from)
        elif self.inherit is not None:
            start_inherited(self.inherit, self.loader, self.opt, self.named)
        if (not self.resumed and self.env.is_main and (out / "ckpt").exists() and not cfg.resume
                and any((out / "ckpt").iterdir())):
            raise TrainError(f"{out} already holds checkpoints of a run; pass --resume to continue it or choose "
                             "another --out")
        self.guard = NonFiniteGuard(cfg.max_nonfinite, skipped=skipped)

    def _load(self, start_from: Path) -> int:
        """Load checkpoint `start_from` (after checking it belongs to this run); returns the count
        of steps skipped before it."""
        saved = ckpt.read_json(start_from / ckpt.EXTRA)  # check compatibility before touching any tensor
        if (saved.get("model_config") != self.mcfg.to_dict()
                or (self.resumed and saved.get("total_steps") != self.total_steps)):
            raise TrainError(f"checkpoint {start_from} belongs to a different run (model config or step budget "
                             f"differs); use another --out or delete {self.out / 'ckpt'}")
        lr_mult = self.cfg.resolved("lr_mult")
        if self.resumed and (saved_lr_mult := self._saved_lr_mult(saved)) != lr_mult:  # run.json read on resume only
            raise TrainError(f"checkpoint {start_from} was trained at peak-LR multiplier {saved_lr_mult:g}, this run "
                             f"resolves --lr-mult to {lr_mult:g}; pass --lr-mult {saved_lr_mult:g} to resume it, "
                             f"or use another --out or delete {self.out / 'ckpt'}")
        if not self.resumed and not 0 < int(saved["step"]) < self.total_steps:
            raise TrainError(f"init_from {start_from} is at step {saved['step']}; a run of {self.total_steps} steps "
                             f"can only start from a step in 1..{self.total_steps - 1}")
        own_fisher = self.fisher is not None and self.resumed  # the Fisher is accumulated by this run alone
        extra = ckpt.load(start_from, self.model, self.opt,
                          extra_tensors={"fisher": self.fisher.named_buffers()} if own_fisher else None)
        self.start_step = int(extra["step"])
        self.loader.load_state_dict(extra["loader"])
        if own_fisher:
            # checkpoints written before the count was kept: every step of the window so far
            self.fisher.steps_accumulated = int(extra.get("fisher_steps",
                                                          max(0, self.start_step - self.first_fisher_step + 1)))
        self._load_ars(extra.get("ars"), start_from)
        self.flops, self.wall_before = float(extra["flops"]), float(extra["wall_s"])
        self.distill_flops = float(extra.get("distill_flops", 0.0))
        self.start_eval = extra.get("start_eval")
        return int(extra.get("skipped_steps", 0))

    def _saved_lr_mult(self, saved: dict) -> float:
        """The peak-LR multiplier a checkpoint of this run was trained at. Checkpoints record it;
        older ones did not: then the run.json of the attempt that wrote them (not yet overwritten
        by this one), whose config said None only after None came to mean the preset's value
        (d3320ec; before it the field defaulted to 1.0 and was always written)."""
        if "lr_mult" in saved:
            return float(saved["lr_mult"])
        meta = ckpt.read_json(self.out / "run.json") if (self.out / "run.json").exists() else {}
        recorded = meta.get("lr_mult", meta.get("config", {}).get("lr_mult"))
        return float(recorded) if recorded is not None else float(self.cfg.resolved("lr_mult"))

    def _load_ars(self, state: dict | None, where: Path) -> None:
        ars = self.sync.ars
        if ars is None or state is None:
            return
        saved_mode = "lagged" if "buf" in state else "step"  # ARSDevice state (lagged mode), else host ARS state
        if saved_mode != self.sync.mode:
            raise TrainError(f"checkpoint {where} holds the ARS state of a --host-sync {saved_mode} run, and this "
                             f"run is --host-sync {self.sync.mode}; resume with --host-sync {saved_mode}")
        ars.load_state_dict(state)

    # ---- the loop ------------------------------------------------------------------------------
    def run(self) -> dict:
        self.t_loop = time.time()
        self.model.train()
        for step in range(self.start_step + 1, self.total_steps + 1):
            self.train_step(step)
        return self.finish()

    def train_step(self, step: int) -> None:
        """Optimizer step `step` (1-based): forward and backward, the update, its record."""
        t0 = time.time()
        teacher_weight = self.distill.weight_at(step - 1) if self.distill else 0.0
        if self.ramp is not None:
            self.ramp.set(step)
        flags = self._forward_backward(teacher_weight)
        lr_mult = lr_multiplier(step - 1, self.total_steps, self.warmup, self.cfg.warmdown_frac, self.cfg.final_lr_frac)
        lr = self.groups[-1].lr * lr_mult
        previous = self.sync.previous()  # lagged: the step before, read now that this one's work is queued
        if previous is not None:
            self._settle_and_log(previous)
        plan = self.sync.plan(flags, lr, self.prof.stage)
        penalty = self._update(step, lr_mult, plan) if plan.apply else None
        self.opt.zero_grad()
        self.prof.step_end(step, self.tokens_per_step, self.flops_per_step)
        record = self._record(step, lr, lr_mult, time.time() - t0, flags, penalty, plan.damping, teacher_weight)
        eval_due = step % self.eval_every == 0 or step == self.total_steps
        ckpt_due = (bool(self.cfg.ckpt_every and step % self.cfg.ckpt_every == 0) or step == self.total_steps
                    or step in self.cfg.keep_ckpt_steps)
        record = self.sync.hold(record, read_now=eval_due or ckpt_due)
        if record is not None:
            self._settle_and_log(record, eval_due, ckpt_due)

    def _forward_backward(self, teacher_weight: float = 0.0) -> torch.Tensor:
        """Gradients of one global batch; returns [mean loss, ranks with a non-finite gradient].
        teacher_weight > 0: the loss is (1 - w) CE + w KL(teacher || model) (engine/inherit/distill.py)."""
        loss_sum = torch.zeros((), device=self.env.device)
        for _ in range(self.accum):
            with self.prof.stage("data"):
                x, y = self.loader.next()
            teacher = {}
            if teacher_weight > 0:
                with self.prof.stage("teacher"), self.autocast(), torch.no_grad():
                    teacher = {"teacher_logits": self.teacher(x), "teacher_weight": teacher_weight}
            with self.prof.stage("forward"), self.autocast():
                loss = self.model(x, y, **teacher) / self.accum
            with self.prof.stage("backward"):
                loss.backward()
            loss_sum += loss.detach()
        flags = step_flags(loss_sum, self.named.values())  # reduced together in one all-reduce
        if self.env.distributed:  # mean loss over ranks; the flag stays a count of ranks
            flags = all_reduce_sum(flags, self.env) / self.rank_mean
        return flags

    def _fishing(self, step: int) -> bool:
        return self.fisher is not None and step >= self.first_fisher_step

    def _update(self, step: int, lr_mult: float, plan: UpdatePlan) -> torch.Tensor | None:
        """The optimizer step with the method's terms; returns the penalty Phi before it (a device
        tensor, this rank's part) or None without a penalty."""
        terms, subspace_value = None, None
        if self.penalty is not None:
            with self.prof.stage("penalty"):
                terms, subspace_value = penalty_terms(self.penalty, self.named, steps_done=step - 1)
        fishing = self._fishing(step)
        with self.prof.stage("optimizer"):
            penalty = self.opt.step(
                lr_mult, damping=plan.damping, terms=terms,
                fishers={n: local(b) for n, b in self.fisher.named_buffers().items()} if fishing else None,
                fisher_scale=self.fisher.fisher_scale if fishing else 1.0, found_inf=plan.found_inf)
            if self.correction is not None:
                self.correction.apply(self.opt, lr_mult, plan.found_inf)
        return penalty if subspace_value is None else penalty + subspace_value

    def _record(self, step, lr, lr_mult, dt, flags, penalty, damping, teacher_weight) -> StepRecord:
        """What settling the step reads, in one small device->host copy (a host float damping stays
        on the host: making it a device tensor would be a blocking copy)."""
        on_device = [flags[0], flags[1], all_reduce_sum(penalty, self.env) if penalty is not None else flags[1]]
        host_damping = None
        if isinstance(damping, torch.Tensor):
            on_device.append(damping)
        else:
            host_damping = float(damping)
        values = DeviceValues(torch.stack([t.reshape(()).to(torch.float64) for t in on_device]))
        return StepRecord(step=step, lr=lr, lr_mult=lr_mult, tokens=step * self.tokens_per_step, dt=dt, values=values,
                          host_damping=host_damping, has_penalty=penalty is not None, fishing=self._fishing(step),
                          teacher_weight=teacher_weight)

    # ---- settle: the verdict, the metrics line, evaluation and checkpoint ---------------------
    def _settle_and_log(self, record: StepRecord, eval_due: bool = False, ckpt_due: bool = False) -> None:
        line = self._settle(record)
        if line is not None:
            if eval_due:
                self.last_eval = self.run_eval()
                line.update(self.last_eval)
            self.metrics.write(line)
        elif record.step == self.total_steps:  # skipped: the final val loss is measured after the loop
            self.last_eval = None
        if ckpt_due:
            self.save_checkpoint(record.step)  # the run's last step leaves a checkpoint even when skipped

    def _settle(self, record: StepRecord) -> dict | None:
        """Read a step's verdict (engine/train/guard.py); its metrics line, or None when it was
        skipped (then its skip line is written here)."""
        loss, bad_grads, penalty, damping = record.read()
        what = self.guard.judge(loss, bad_grads)
        if what is not None:
            self.sync.undo_skipped()
            stop = self.guard.stop_message(record.step, loss, what)
            if stop:
                raise TrainError(stop)
            self.metrics.write({"step": record.step, "skipped": f"non-finite {what}", "tokens": record.tokens,
                                "flops": self.flops})
            return None
        teacher_flops = self.teacher_flops_per_step if record.teacher_weight > 0 else 0.0
        self.flops += self.flops_per_step + teacher_flops
        self.distill_flops += teacher_flops
        if record.fishing:
            self.fisher.step_done()
        line = {"step": record.step, "lr": record.lr, "lr_mult": record.lr_mult, "tokens": record.tokens,
                "dt": record.dt, "loss": loss, "flops": self.flops, "ars": damping}
        if penalty is not None:
            line["penalty"] = penalty
        if self.distill is not None:  # "loss" is then the mixed training loss, not the cross-entropy
            line["teacher_weight"] = record.teacher_weight
        if self.bar is not None:
            self.bar.update(record.step - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{self.tokens_per_step / max(record.dt, 1e-9):.0f}")
        return line

    def run_eval(self) -> dict:
        with self.prof.stage("eval"):
            return evaluate(self.model, self.bundle.val, self.token_bytes, seq_len=self.mcfg.seq_len,
                            batch_size=self.device_batch, max_tokens=self.cfg.resolved("eval_tokens"), env=self.env,
                            autocast=self.autocast)

    def save_checkpoint(self, step: int) -> None:
        ars = self.sync.ars
        extra = {"loader": self.loader.state_dict(), "ars": ars.state_dict() if ars else None,
                 "model_config": self.mcfg.to_dict(), "total_steps": self.total_steps, "flops": self.flops,
                 "lr_mult": self.cfg.resolved("lr_mult"),  # a resume at another multiplier is refused (_load)
                 "wall_s": self.wall_before + time.time() - self.t_loop, "start_eval": self.start_eval,
                 "skipped_steps": self.guard.skipped, "distill_flops": self.distill_flops}
        if self.fisher is not None:
            extra["fisher_steps"] = self.fisher.steps_accumulated
        with self.prof.stage("checkpoint"):
            ckpt.save(self.out / "ckpt", step, self.model, self.opt, extra, self.env,
                      extra_tensors={"fisher": self.fisher.named_buffers()} if self.fisher else None,
                      keep_steps=set(self.cfg.keep_ckpt_steps))

    # ---- finish --------------------------------------------------------------------------------
    def finish(self) -> dict:
        """Close the outputs, measure the final val loss if the loop did not, write fisher.pt and
        final.json; returns the final record."""
        if self.bar is not None:
            self.bar.close()
        self.prof.close()
        self.metrics.close()
        if self.last_eval is None:  # resumed exactly at the end, or the last step was skipped
            self.last_eval = self.run_eval()
        wall_s = self.wall_before + time.time() - self.t_loop
        if self.fisher is not None:
            self._save_fisher()
        final = self._final_record(wall_s)
        if self.env.is_main:
            ckpt.write_json_atomic(self.out / "final.json", final)
        return final

    def _save_fisher(self) -> None:
        """fisher.pt: the mean of g^2 over the window's steps that ran (zeros if every one was skipped)."""
        omega = self.fisher.result() if self.fisher.steps_accumulated else self.fisher.named_buffers()
        full = {n: full_tensor(t).cpu() for n, t in omega.items()}
        if self.env.is_main:
            tmp = self.out / ".fisher.pt.tmp"
            torch.save(full, tmp)
            os.replace(tmp, self.out / "fisher.pt")

    def _final_record(self, wall_s: float) -> dict:
        mcfg, inherit, penalty = self.mcfg, self.inherit, self.penalty
        final = {
            "depth": self.cfg.depth, "params": mcfg.num_params, "scaling_params": mcfg.scaling_params,
            "tokens": self.total_steps * self.tokens_per_step, "steps": self.total_steps, "flops": self.flops,
            "fisher_flops": inherit.fisher_flops if inherit else 0.0,
            "distill_flops": self.distill_flops,  # the teacher's forward passes, included in "flops"
            # the penalty's own elementwise/SVD work, summed over ranks' shards (an estimate, see Penalty)
            "penalty_flops": (float(penalty.penalty_flops_per_step * self.env.world_size * self.total_steps)
                              if penalty else 0.0),
            "val_loss": self.last_eval["val_loss"], "val_bpb": self.last_eval["val_bpb"],
            "val_loss_se": self.last_eval.get("val_loss_se"),
            "start_val_loss": self.start_eval["val_loss"] if self.start_eval else None,
            "wall_s": wall_s, "setup_s": self.t_loop - self.t_start, "skipped_steps": self.guard.skipped,
            **{k: self.meta[k] for k in ("device", "device_name", "attention_backend", "kernel_backend", "world_size",
                                         "dtype")},
            "growth": inherit.info if inherit else None,
        }
        if self.fisher is not None:  # how many steps fisher.pt averages (what the next rung is charged for)
            final["fisher_steps"] = self.fisher.steps_accumulated
        return final


def run_metadata(cfg, env, mcfg, attention_name, kernel_backend, accum, device_batch, total_steps) -> dict:
    on_cuda = env.device.type == "cuda"
    return {
        "config": asdict(cfg), "model_config": mcfg.to_dict(), "total_steps": total_steps,
        "lr_mult": cfg.resolved("lr_mult"),  # what ran, where config says None (the preset's)
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
        import apex.optimizers  # noqa: F401  (optional: NVIDIA apex; PyPI's "apex" is unrelated and lacks this)

        return True
    except Exception:
        return False
