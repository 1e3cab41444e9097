"""The heavy sections of `launch/gpu_check.py`, each run in its own subprocess:

    python -m launch.gpu_sections SECTION --params PARAMS.json --result RESULT.json

A section writes its result so far into RESULT.json (atomically) after each piece of work, so
when the driver kills it at its time budget the pieces it finished are still read back. Sections:

  imports    import every project module (a fresh interpreter: an honest import smoke test)
  data       build (or open) the token caches; which tokenizer trainer built them
  bandwidth  the fused optimizer step's GB/s against a device copy and torch's fused AdamW
  train      a nanochat-shape run on the lagged host sync: tokens/s, MFU, peak memory, and the
             host syncs of every step counted under torch.cuda.set_sync_debug_mode

The pure helpers (module list, sync tally, tokens/s, manifest reading) need no GPU and are
unit-tested on CPU (tests/launch/test_gpu_check.py).
"""
from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PACKAGES = ("kernels", "models", "profiling", "engine", "launch")  # as tests/test_imports.py


def write_json_atomic(path: Path, obj) -> None:
    """Write then rename: a reader (or a kill) never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------
# imports
# ------------------------------------------------------------------------------------------------
def project_modules(root: Path = ROOT) -> list[str]:
    """Every module of the project's packages, dotted, in file order (tests/test_imports.py's
    module_files, by the same rule: a package's __init__ is the package)."""
    mods = []
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods.append(".".join(parts))
    return mods


def section_imports(params: dict, emit) -> dict:
    res = {"modules": 0, "failed": {}, "slowest": []}
    times = []
    for mod in project_modules():
        t0 = time.perf_counter()
        try:
            importlib.import_module(mod)
        except BaseException as e:  # noqa: BLE001  (SystemExit too: a module must not exit on import)
            res["failed"][mod] = f"{type(e).__name__}: {e}"[:300]
        times.append((time.perf_counter() - t0, mod))
        res["modules"] += 1
    res["slowest"] = [{"module": m, "s": round(s, 2)} for s, m in sorted(times, reverse=True)[:3]]
    res.update(backends())
    emit(res)
    return res


def backends() -> dict:
    """What would run on this machine: the attention backend and the optimizer kernel backend."""
    import torch

    out = {}
    try:
        import kernels

        out["kernel_backend"] = kernels.backend_for("cuda" if torch.cuda.is_available() else "cpu")
    except Exception as e:  # noqa: BLE001
        out["kernel_backend"] = f"error: {type(e).__name__}: {e}"[:200]
    try:
        from models.attention import select_backend

        cuda = torch.cuda.is_available()
        out["attention_backend"] = select_backend("cuda" if cuda else "cpu",
                                                  torch.bfloat16 if cuda else torch.float32).name
    except Exception as e:  # noqa: BLE001
        out["attention_backend"] = f"error: {type(e).__name__}: {e}"[:200]
    return out


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def tokenizer_trainer(manifest: dict | None, bundle=None) -> str:
    """Which library trained the tokenizer, as the data prep reports it: the manifest's
    "tokenizer_trainer" ("rustbpe" or "tokenizers"), else the bundle's attribute, else "unknown"
    (a cache written before the field existed)."""
    for value in ((manifest or {}).get("tokenizer_trainer"), getattr(bundle, "tokenizer_trainer", None)):
        if value:
            return str(value)
    return "unknown"


def cache_row(vocab: int, manifest: dict, seconds: float, bundle=None) -> dict:
    tokens = manifest.get("tokens", {})
    return {"vocab": vocab, "tokenizer_trainer": tokenizer_trainer(manifest, bundle),
            "train_tokens": tokens.get("train"), "val_tokens": tokens.get("val"),
            "python": (manifest.get("source_info") or {}).get("python"),
            "built_s": (manifest.get("build_seconds") or {}).get("total"), "seconds": round(seconds, 2),
            "directory": manifest.get("cache_key")}


def section_data(params: dict, emit) -> dict:
    from engine.data import prepare_data

    res = {"caches": []}
    for vocab in params["vocabs"]:
        t0 = time.perf_counter()
        bundle = prepare_data(params["source"], vocab, params["cache_dir"], progress=False)
        res["caches"].append(cache_row(vocab, bundle.manifest, time.perf_counter() - t0, bundle))
        emit(res)
    res["tokenizer_trainer"] = ", ".join(sorted({c["tokenizer_trainer"] for c in res["caches"]}))
    emit(res)
    return res


# ------------------------------------------------------------------------------------------------
# bandwidth
# ------------------------------------------------------------------------------------------------
PLAIN_BYTES = 28      # read p, g, m, v; write p, m, v (fp32)
INHERITED_BYTES = 44  # + read anchor, kappa, fisher; write fisher


def _time_ms(fn, reps: int) -> float:
    """Median of `reps` CUDA-event timings after one warm-up call (Triton compiles there)."""
    import torch

    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def model_param_sizes(preset: str, depth: int) -> list[int]:
    """numel of every parameter of the preset's model at `depth` (built on the meta device)."""
    import torch

    from models.config import model_config
    from models.gpt import GPT

    with torch.device("meta"):
        model = GPT(model_config(preset, depth))
    return [p.numel() for p in model.parameters()]


def section_bandwidth(params: dict, emit) -> dict:
    """Plain step (28 B/param) and the inherited step with anchor, kappa and online Fisher
    (44 B/param), on one large tensor and on the real parameter list of nanochat d`depth`,
    against a device copy's GB/s and torch's fused AdamW on the same tensors."""
    import torch

    import kernels

    dev, reps = torch.device("cuda"), params["reps"]
    hp = dict(lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.0)
    step = torch.tensor(1.0, device=dev)
    skip = torch.zeros(1, device=dev)
    n = params["n_params"]
    x, y = torch.randn(n, device=dev), torch.empty(n, device=dev)
    copy_gbs = 8 * n / _time_ms(functools.partial(y.copy_, x), reps) / 1e6
    del x, y
    res = {"kernel_backend": kernels.backend_for(dev), "copy_GBs": copy_gbs, "rows": []}
    res["rows"].append({"case": "device copy", "params": n, "GB/s": copy_gbs, "vs copy": 1.0})
    emit(res)
    cases = [("1 tensor", [n]), (f"nanochat d{params['depth']} params", model_param_sizes("nanochat", params["depth"]))]
    for case, sizes in cases:
        p, g, m, v, a, k, f = ([torch.randn(s, device=dev) for s in sizes] for _ in range(7))
        for t in (*v, *k, *f):
            t.abs_()
        plain = functools.partial(kernels.fused_adamw_multi, p, g, m, v, **hp, step=step, found_inf=skip)
        inherited = functools.partial(kernels.fused_adamw_multi, p, g, m, v, **hp, step=step, anchors=a,
                                      kappas=k, fishers=f, found_inf=skip)
        t_torch = _time_ms(_torch_fused_adamw(p, g).step, reps)
        total = sum(sizes)
        torch_gbs = PLAIN_BYTES * total / t_torch / 1e6
        res["rows"].append({"case": f"{case}, torch fused AdamW", "params": total, "ms": t_torch,
                            "GB/s": torch_gbs, "vs copy": torch_gbs / copy_gbs, "vs torch fused AdamW": 1.0})
        for label, fn, bytes_per in (("plain", plain, PLAIN_BYTES), ("inherited + Fisher", inherited, INHERITED_BYTES)):
            ms = _time_ms(fn, reps)
            gbs = bytes_per * total / ms / 1e6
            res["rows"].append({"case": f"{case}, {label}", "params": total, "ms": ms, "GB/s": gbs,
                                "vs copy": gbs / copy_gbs, "vs torch fused AdamW": t_torch / ms})
            emit(res)
        # the partials hold the tensors (the lambdas they replace did not): drop them too before freeing
        del p, g, m, v, a, k, f, plain, inherited, fn
        torch.cuda.empty_cache()
    return res


def _torch_fused_adamw(params, grads):
    import torch

    ps = [torch.nn.Parameter(p.clone()) for p in params]
    for p, g in zip(ps, grads):
        p.grad = g
    return torch.optim.AdamW(ps, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, fused=True)


# ------------------------------------------------------------------------------------------------
# train: tokens/s, MFU and host syncs per step
# ------------------------------------------------------------------------------------------------
def is_sync_warning(w) -> bool:
    """torch.cuda.set_sync_debug_mode(1) warns "called a synchronizing CUDA operation"."""
    return "synchroniz" in str(getattr(w, "message", w)).lower()


class StepSyncCounter:
    """Per optimizer step: its host clock at entry and the host syncs made inside it.

    Wraps `RungTrainer.train_step` (sync debug mode on for the step, off outside it: setup and the
    step-0 evaluation are not counted) and `DeviceValues.read` (off while reading: the lagged
    guard's one intended wait, for the previous step's verdict, excluded as in
    tests/engine/train/test_guard.py). `set_mode`/`get_mode` are torch.cuda's sync-debug setters;
    injectable so the bookkeeping is tested on CPU."""

    def __init__(self, set_mode, get_mode, clock=time.perf_counter, on_step=None):
        self.set_mode, self.get_mode, self.clock, self.on_step = set_mode, get_mode, clock, on_step
        self.caught: list = []
        self.syncs: dict[int, int] = {}
        self.times: dict[int, float] = {}
        self._restore = []

    def install(self, trainer_cls, values_cls) -> "StepSyncCounter":
        orig_step, orig_read = trainer_cls.train_step, values_cls.read
        counter = self

        def train_step(trainer, step):
            counter.times[step] = counter.clock()
            if counter.on_step is not None:
                counter.on_step(trainer, step)
            before = len(counter.caught)
            counter.set_mode(1)
            try:
                return orig_step(trainer, step)
            finally:
                counter.set_mode(0)
                counter.syncs[step] = sum(is_sync_warning(w) for w in counter.caught[before:])

        def read(values):
            mode = counter.get_mode()
            counter.set_mode(0)
            try:
                return orig_read(values)
            finally:
                counter.set_mode(mode)

        trainer_cls.train_step, values_cls.read = train_step, read
        self._restore = [(trainer_cls, "train_step", orig_step), (values_cls, "read", orig_read)]
        return self

    def uninstall(self) -> None:
        for cls, name, fn in self._restore:
            setattr(cls, name, fn)
        self._restore = []

    def __enter__(self):
        self._warn = warnings.catch_warnings(record=True)
        self.caught = self._warn.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self.set_mode(0)
        self._warn.__exit__(*exc)
        self.uninstall()
        return False


def summarize_syncs(syncs: dict[int, int], total_steps: int, warmup: int) -> dict:
    """The verdict on the lagged steps: every step but the last (evaluation, checkpoint and
    final.json happen there, and sync by design) after `warmup` steps (compilation and lazy
    initialisation). zero is None when no such step ran."""
    lagged = [s for s in sorted(syncs) if warmup < s < total_steps]
    with_syncs = {s: syncs[s] for s in lagged if syncs[s]}
    return {"lagged_steps_counted": len(lagged), "steps_with_syncs": with_syncs,
            "max_per_lagged_step": max((syncs[s] for s in lagged), default=None),
            "zero": (not with_syncs) if lagged else None,
            "warmup_steps": {s: syncs[s] for s in sorted(syncs) if s <= warmup},
            "last_step": syncs.get(total_steps)}


def tokens_per_s(times: dict[int, float], tokens_per_step: int, warmup: int) -> tuple[float | None, int]:
    """Steady-state throughput from the host clock at each step's entry, over steps after
    `warmup`. Under the lagged host sync the host waits, inside step k, for step k-1's values, so
    it runs at most a step ahead of the GPU and these entry times advance at the GPU's pace.
    Returns (tokens/s, steps measured)."""
    steps = sorted(s for s in times if s > warmup)
    if len(steps) < 2:
        return None, 0
    a, b = steps[0], steps[-1]
    dt = times[b] - times[a]
    return (tokens_per_step * (b - a) / dt if dt > 0 else None), b - a


def energy_reader():
    """A callable returning NVML's total-energy counter of GPU 0 in joules, or None."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        return lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0
    except Exception:  # noqa: BLE001
        return None


def section_train(params: dict, emit) -> dict:
    """One nanochat-shape rung on the lagged host sync (ARS on the device, online Fisher over
    the last quarter), evaluated only at the end, checkpointed only at the end, profiler off
    (its windows synchronise by design). `device`, `preset` and `seq_len` exist for the CPU test
    of this plumbing (no syncs to count there)."""
    import torch

    from engine.runtime.distributed import device_name, init_distributed
    from engine.train import guard
    from engine.train.config import TrainConfig
    from engine.train.trainer import RungTrainer, train_rung
    from models.config import model_config
    from profiling.cost import mfu, peak_from_name

    steps, batch, warmup = params["steps"], params["batch"], params["warmup"]
    device, preset, seq_len = params.get("device", "cuda"), params.get("preset", "nanochat"), params.get("seq_len")
    cuda = device == "cuda"
    mcfg = model_config(preset, params["depth"], **({"seq_len": seq_len} if seq_len else {}))
    tokens_per_step = batch * mcfg.seq_len
    env = init_distributed(device)
    peak, peak_label = peak_from_name(device_name(env.device))
    out = Path(params["out"])
    res = {"run": params["label"], "depth": params["depth"], "batch": batch, "steps": steps,
           "compile": params["compile"],
           "tokens_per_step": tokens_per_step, "flops_per_token": mcfg.flops_per_token, "peak_flops": peak,
           "peak_label": peak_label, "phase": "setup"}
    emit(res)
    read_j = energy_reader() if cuda else None
    energy = {}

    def on_step(trainer, step):
        if step == 1:  # run.json is written: what runs
            meta = json.loads((out / "run.json").read_text())
            res.update(attention=meta.get("attention_backend"), kernel=meta.get("kernel_backend"),
                       host_sync=meta.get("host_sync"), phase="training")
        if read_j is not None and step in (warmup + 1, steps):
            energy[step] = read_j()
        if step % 5 == 0 or step == steps:
            res["steps_started"] = step
            emit(res)

    cfg = TrainConfig(depth=params["depth"], preset=preset, data=params["data"], out=str(out), steps=steps,
                      global_batch=batch, device_batch=batch, eval_tokens=params["eval_tokens"], eval_every=steps,
                      ckpt_every=0, compile=params["compile"], device=device, host_sync="lagged", ars="seed",
                      fisher_online_steps=max(1, steps // 4), progress=False, profile=False,
                      cache_dir=params["cache_dir"], seq_len=seq_len)
    if cuda:
        counter = StepSyncCounter(torch.cuda.set_sync_debug_mode, torch.cuda.get_sync_debug_mode, on_step=on_step)
        torch.cuda.reset_peak_memory_stats()
    else:  # CPU (the plumbing's test): nothing synchronises
        counter = StepSyncCounter(lambda mode: None, lambda: 0, on_step=on_step)
    t0 = time.perf_counter()
    try:
        with counter.install(RungTrainer, guard.DeviceValues):
            final = train_rung(cfg, env)
    finally:  # also on an error: what was counted so far goes into the result
        tok_s, measured = tokens_per_s(counter.times, tokens_per_step, warmup)
        res.update(host_syncs=summarize_syncs(counter.syncs, steps, warmup),
                   syncs_per_step={str(k): v for k, v in sorted(counter.syncs.items())},
                   tokens_per_s=tok_s, steps_timed=measured,
                   mfu=mfu(mcfg.flops_per_token * tok_s, 1.0, peak) if tok_s else None,
                   peak_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                   wall_s=time.perf_counter() - t0)
        if len(energy) == 2 and steps in counter.times and warmup + 1 in counter.times:
            span = counter.times[steps] - counter.times[warmup + 1]
            joules = energy[steps] - energy[warmup + 1]
            res.update(energy_j=joules, energy_span_s=span, watts=joules / span if span > 0 else None,
                       j_per_token=joules / (tokens_per_step * (steps - warmup - 1)) if steps > warmup + 1 else None)
        emit(res)
    res.update(phase="done", val_loss=final["val_loss"], setup_s=final.get("setup_s"),
               skipped_steps=final.get("skipped_steps"), attention=final.get("attention_backend"),
               kernel=final.get("kernel_backend"))
    emit(res)
    return res


# ------------------------------------------------------------------------------------------------
SECTIONS = {"imports": section_imports, "data": section_data, "bandwidth": section_bandwidth, "train": section_train}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="one section of launch/gpu_check.py (run by it)")
    p.add_argument("section", choices=sorted(SECTIONS))
    p.add_argument("--params", required=True, help="JSON file of the section's parameters")
    p.add_argument("--result", required=True, help="JSON file the result so far is written to")
    args = p.parse_args(argv)
    params = json.loads(Path(args.params).read_text())
    # the driver ends a section that overruns with SIGTERM: make it an exception, so the result so
    # far is written (a process stuck inside a CUDA call gets SIGKILL a few seconds later)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    latest = {}

    def emit(res):
        latest.clear()
        latest.update(res)
        write_json_atomic(Path(args.result), res)

    try:
        SECTIONS[args.section](params, emit)
    except BaseException as e:  # the error goes into the result beside what was done
        write_json_atomic(Path(args.result), {**latest, "error": f"{type(e).__name__}: {e}"[:1000]})
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
