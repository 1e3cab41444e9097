"""One-command device check for a lent GPU (`make gpu-check`): runs end to end in a few minutes on
one H100/H200 and writes docs/results/gpu-check-<device>-<date>.md.

Sections (each runs on its own: a failure is written into the report and the rest still runs):
  environment   GPU, driver, torch, triton, flash-attn, NVML energy counter
  tests         the CUDA tests: Triton kernels vs the reference, multi-tensor and skip paths, the
                host-sync count of a lagged step under torch.cuda.set_sync_debug_mode, and a grown
                rung distilling from its parent in bf16
  bandwidth     the fused step's GB/s against a device copy and torch's fused AdamW, single and
                multi-tensor
  training      a short nanochat-shape run (bf16, SDPA or flash-attn, the Triton step, online Fisher,
                ARS on the lagged guard, a checkpoint and a resume from it), eager and compiled:
                tokens/s, MFU, peak memory
  energy        NVML's total-energy counter read at the edges of each section (seconds-long windows)

Uses the installed torch and needs no network; a missing dependency is named with the command that
brings it. On a machine without a CUDA GPU it exits at once with one sentence.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from launch.argtypes import positive_int  # noqa: E402  (imports nothing of ours: safe before the dependency check)

# module -> distribution, for what the check imports beyond torch and triton
REQUIRED = {"numpy": "numpy", "tiktoken": "tiktoken", "rustbpe": "rustbpe", "pyarrow": "pyarrow",
            "pytest": "pytest", "pynvml": "nvidia-ml-py", "tqdm": "tqdm"}
SECTIONS = ("tests", "bandwidth", "training")  # what --skip may name (environment and energy always run)
CUDA_TESTS = ["tests/kernels/test_triton_adamw.py::test_triton_cuda_vs_reference",
              "tests/kernels/test_triton_adamw.py::test_triton_cuda_multi_and_skip_vs_reference",
              "tests/engine/train/test_guard.py::test_lagged_cuda_steps_make_no_host_sync",
              "tests/engine/train/test_distill.py::test_a_distilling_rung_counts_its_teacher_and_starts_at_1_minus_w_of_the_ce"]


# ------------------------------------------------------------------------------------------------
# Environment (no GPU needed: unit-tested on CPU)
# ------------------------------------------------------------------------------------------------
def missing_dependencies(find_spec=importlib.util.find_spec) -> list[tuple[str, str]]:
    """(module, command that installs it) for each required module that cannot be imported. The
    command works offline from a wheel directory fetched elsewhere (`pip download DIST -d wheels`)."""
    py = sys.executable
    return [(mod, f"{py} -m pip install {dist}   (offline: {py} -m pip install --no-index --find-links WHEEL_DIR {dist})")
            for mod, dist in REQUIRED.items() if find_spec(mod) is None]


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
        return getattr(mod, "__version__", "present")
    except Exception:
        return None


def flash_attn_status() -> str:
    found = [name for name, mod in (("FA3", "flash_attn_interface"), ("FA2", "flash_attn"))
             if importlib.util.find_spec(mod) is not None]
    return ", ".join(found) if found else "absent (SDPA is used)"


def nvml_status(pynvml=None) -> dict:
    """Driver version and whether the total-energy counter reads (Volta and newer)."""
    try:
        pynvml = pynvml or __import__("pynvml")
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
    except Exception as e:
        return {"nvml": f"unavailable ({type(e).__name__}: {e})", "driver": None, "energy_counter": False}
    try:
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        energy = True
    except Exception:
        energy = False
    return {"nvml": "ok", "driver": driver, "energy_counter": energy}


def probe_environment(torch=None) -> dict:
    torch = torch or __import__("torch")
    cuda = bool(torch.cuda.is_available())
    env = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "cuda_available": cuda, "triton": _version("triton"), "flash_attn": flash_attn_status(),
           "host": platform.node()}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", gpu_count=torch.cuda.device_count())
        env.update(nvml_status())
    return env


def cpu_only_message(env: dict) -> str | None:
    if env["cuda_available"]:
        return None
    return (f"gpu-check needs a CUDA GPU and torch sees none here (torch {env['torch']}, CUDA build "
            f"{env['torch_cuda'] or 'none'}); run `make gpu-check` on the GPU machine.")


def report_path(out_dir: Path, gpu: str, date: str) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower().replace("nvidia", "")).strip("-") or "gpu"
    return Path(out_dir) / f"gpu-check-{slug}-{date}.md"


# ------------------------------------------------------------------------------------------------
# Energy windows
# ------------------------------------------------------------------------------------------------
class EnergyMeter:
    """Joules over a window from NVML's total-energy counter (mJ since driver load). The counter
    updates every 20-100 ms, so only windows of seconds are reported (anchors.md)."""

    def __init__(self, pynvml=None):
        self.windows: list[dict] = []
        try:
            self.nvml = pynvml or __import__("pynvml")
            self.nvml.nvmlInit()
            self.handle = self.nvml.nvmlDeviceGetHandleByIndex(0)
            self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        except Exception:
            self.nvml = None

    def _read_mj(self):
        return None if self.nvml is None else self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)

    @contextmanager
    def window(self, name: str, sync=lambda: None):
        sync()
        e0, t0 = self._read_mj(), time.perf_counter()
        try:
            yield
        finally:
            sync()
            e1, dt = self._read_mj(), time.perf_counter() - t0
            joules = None if e0 is None or e1 is None else (e1 - e0) / 1000.0
            self.windows.append({"window": name, "seconds": dt, "joules": joules,
                                 "watts": joules / dt if joules is not None and dt > 0 else None})


# ------------------------------------------------------------------------------------------------
# Report (no GPU needed: unit-tested on CPU)
# ------------------------------------------------------------------------------------------------
def _fmt(v, spec="{:.3g}") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return spec.format(v)
    return str(v)


def _table(rows: list[dict], cols: list[str]) -> list[str]:
    if not rows:
        return ["(none)"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return out


def render_report(res: dict) -> str:
    env = res["environment"]
    lines = [f"# GPU check: {env.get('gpu', 'no GPU')}, {res['date']}", "",
             f"`{res['command']}`, {res['wall_s']:.0f} s end to end.", "", "## Environment", ""]
    lines += [f"- {k}: {_fmt(v)}" for k, v in env.items()]
    lines += ["", "## CUDA tests", ""]
    t = res.get("tests")
    if t:
        lines += [f"{'passed' if t['returncode'] == 0 else 'FAILED'} (exit {t['returncode']}): {t['summary']}", "",
                  "Tests: " + ", ".join(f"`{x}`" for x in CUDA_TESTS)]
    for name, title, cols in (
            ("bandwidth", "Fused optimizer step: bandwidth", ["case", "params", "ms", "GB/s", "vs copy", "vs torch fused AdamW"]),
            ("training", "Training (nanochat shape, bf16)", ["run", "depth", "attention", "kernel", "steps", "tokens/s", "MFU",
                                                              "peak GiB", "val loss", "resumed from", "resumed val loss"]),
            ("energy", "Energy per window (NVML)", ["window", "seconds", "joules", "watts"])):
        lines += ["", f"## {title}", ""] + _table(res.get(name) or [], cols)
    errors = res.get("errors") or {}
    if errors:
        lines += ["", "## Errors", ""] + [f"- {k}: `{v}`" for k, v in errors.items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# GPU sections
# ------------------------------------------------------------------------------------------------
def run_cuda_tests() -> dict:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CUDA_TESTS],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    tail = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    return {"returncode": proc.returncode, "summary": tail, "output": proc.stdout[-4000:] + proc.stderr[-2000:]}


def _time_ms(fn, reps: int = 20) -> float:
    import torch

    fn()  # warm-up (Triton compiles here)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def _step_operands(sizes, dev):
    """p, g, m, v, anchor, kappa, fisher lists (v, kappa and fisher non-negative)."""
    import torch

    lists = [[torch.randn(n, device=dev) for n in sizes] for _ in range(7)]
    for j in (3, 5, 6):
        lists[j] = [x.abs_() for x in lists[j]]
    return lists


def bench_bandwidth(n_params: int = 64 << 20) -> list[dict]:
    """Plain step (28 B/param) and the inherited step with anchor, kappa and online Fisher
    (44 B/param), one tensor and 96 tensors of mixed sizes, against a device copy's GB/s and the
    time of torch's fused AdamW on the same parameters."""
    import torch

    import kernels

    dev = torch.device("cuda")
    hp = dict(lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.0)
    step = torch.tensor(1.0, device=dev)
    skip = torch.zeros(1, device=dev)
    x, y = torch.empty(n_params, device=dev), torch.empty(n_params, device=dev)
    copy_gbs = 8 * n_params / _time_ms(lambda: y.copy_(x)) / 1e6
    rows = []
    for case, sizes in (("1 tensor", [n_params]), ("96 tensors", _mixed_sizes(n_params, 96))):
        p, g, m, v, a, k, f = _step_operands(sizes, dev)
        plain = lambda: kernels.fused_adamw_multi(p, g, m, v, **hp, step=step, found_inf=skip)  # noqa: E731
        inherited = lambda: kernels.fused_adamw_multi(p, g, m, v, **hp, step=step, anchors=a, kappas=k,  # noqa: E731
                                                      fishers=f, found_inf=skip)
        torch_opt = _torch_fused_adamw(p, g)
        t_torch = _time_ms(torch_opt.step)
        for label, fn, bytes_per in (("plain", plain, 28), ("inherited + Fisher", inherited, 44)):
            ms = _time_ms(fn)
            gbs = bytes_per * sum(sizes) / ms / 1e6
            rows.append({"case": f"{case}, {label}", "params": sum(sizes), "ms": ms, "GB/s": gbs,
                         "vs copy": gbs / copy_gbs, "vs torch fused AdamW": t_torch / ms})
        del p, g, m, v, a, k, f, torch_opt
    rows.append({"case": "device copy", "params": n_params, "GB/s": copy_gbs, "vs copy": 1.0})
    return rows


def _mixed_sizes(total: int, count: int) -> list[int]:
    """count sizes summing to ~total, not multiples of the kernel block (real shapes are not)."""
    base = total // count
    return [base + (i % 7) * 13 - 39 for i in range(count)]


def _torch_fused_adamw(params, grads):
    import torch

    ps = [torch.nn.Parameter(p.clone()) for p in params]
    for p, g in zip(ps, grads):
        p.grad = g
    return torch.optim.AdamW(ps, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, fused=True)


def _train_once(out: Path, compile_: bool, args, resume: bool = False) -> dict:
    import torch

    from engine.runtime.distributed import init_distributed
    from engine.train.config import TrainConfig
    from engine.train.trainer import train_rung

    cfg = TrainConfig(depth=args.depth, preset="nanochat", data=args.data, out=str(out), steps=args.steps,
                      global_batch=args.batch, device_batch=args.batch, eval_tokens=args.eval_tokens,
                      eval_every=args.steps // 2, ckpt_every=args.steps // 2, compile=compile_, resume=resume,
                      ars="seed", fisher_online_steps=max(1, args.steps // 4), progress=False,
                      cache_dir=args.cache_dir)
    torch.cuda.reset_peak_memory_stats()
    final = train_rung(cfg, init_distributed("cuda"))
    final["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return final


def run_training(args, out_root: Path) -> list[dict]:
    """Eager then compiled; each trains, then loses its final step (final.json and the newest
    checkpoint removed) and resumes from the middle checkpoint to the end."""
    from models.config import model_config
    from profiling.cost import mfu, peak_from_name

    import torch

    mcfg = model_config("nanochat", args.depth)
    peak, _ = peak_from_name(torch.cuda.get_device_name(0))
    rows = []
    for label, compile_ in (("eager", False), ("compiled", True)):
        out = out_root / label
        shutil.rmtree(out, ignore_errors=True)
        final = _train_once(out, compile_, args)
        tok_s = _tokens_per_s(out / "metrics.jsonl", args.batch * mcfg.seq_len)
        _drop_final_step(out)
        resumed = _train_once(out, compile_, args, resume=True)
        rows.append({"run": label, "depth": args.depth, "attention": final["attention_backend"],
                     "kernel": final["kernel_backend"], "steps": final["steps"], "tokens/s": tok_s,
                     "MFU": mfu(mcfg.flops_per_token * tok_s, 1.0, peak) if tok_s else None,
                     "peak GiB": final["peak_gib"], "val loss": final["val_loss"],
                     "resumed from": args.steps // 2, "resumed val loss": resumed["val_loss"]})
    return rows


def _tokens_per_s(metrics: Path, tokens_per_step: int) -> float | None:
    rows = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
    dts = sorted(r["dt"] for r in rows if r.get("step", 0) > 3 and r.get("dt"))  # after compile/warm-up
    return tokens_per_step / dts[len(dts) // 2] if dts else None


def _drop_final_step(out: Path) -> None:
    (out / "final.json").unlink()
    newest = sorted((out / "ckpt").glob("step_*"))[-1]
    shutil.rmtree(newest)


# ------------------------------------------------------------------------------------------------
def _sections(s: str) -> set[str]:
    names = set(filter(None, (x.strip() for x in s.split(","))))
    if names - set(SECTIONS):
        raise argparse.ArgumentTypeError(f"unknown section(s) {sorted(names - set(SECTIONS))}; expected some of {list(SECTIONS)}")
    return names


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", default=str(ROOT / "docs" / "results"))
    p.add_argument("--work-dir", default=str(ROOT / "runs" / "gpu-check"))
    p.add_argument("--depth", type=positive_int, default=12)
    p.add_argument("--steps", type=positive_int, default=40)
    p.add_argument("--batch", type=positive_int, default=16, help="sequences of 2048 tokens per step")
    p.add_argument("--eval-tokens", dest="eval_tokens", type=positive_int, default=65536)
    p.add_argument("--data", default="builtin")
    p.add_argument("--cache-dir", dest="cache_dir")
    p.add_argument("--skip", type=_sections, default="", help=f"comma-separated sections to skip: {','.join(SECTIONS)}")
    return p.parse_args(argv)


def _section(res: dict, meter: EnergyMeter, name: str, fn, sync):
    try:
        with meter.window(name, sync):
            res[name] = fn()
    except Exception as e:  # written into the report; the other sections still run
        res.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}"[:500]


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    env = probe_environment()
    msg = cpu_only_message(env)
    if msg:
        print(msg)
        return 1
    missing = missing_dependencies()
    if missing:
        print("gpu-check: missing dependencies; install them and rerun:\n" + "\n".join(f"  {m}: {c}" for m, c in missing))
        return 1
    import torch

    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    res = {"environment": env, "date": datetime.date.today().isoformat(), "command": "make gpu-check " + " ".join(argv or sys.argv[1:])}
    meter, sync = EnergyMeter(), torch.cuda.synchronize
    skip = args.skip
    sections = (("tests", run_cuda_tests), ("bandwidth", bench_bandwidth),
                ("training", lambda: run_training(args, Path(args.work_dir))))
    for name, fn in sections:
        if name not in skip:
            _section(res, meter, name, fn, sync)
    res["energy"], res["wall_s"] = meter.windows, time.time() - t0
    path = report_path(Path(args.out_dir), env["gpu"], res["date"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(res))
    path.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str))
    print(f"gpu-check: wrote {path}")
    return 0 if not res.get("errors") and res.get("tests", {}).get("returncode", 0) == 0 else 2


if __name__ == "__main__":
    sys.exit(main())
