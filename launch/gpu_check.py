"""Device check for one CUDA GPU, sized for a short lent call (`make gpu-check`).

Every section has a time budget, the whole run has one (--budget-s, default 420 s), one progress
line is printed per section, and the report so far (markdown and JSON) is rewritten into
--out-dir after every section, so a run cut short still leaves what it measured. docs/GPU.md says
how to run it on the device tool and how to read the result.

Sections, in order (budget = where the section is cut; it starts only if its minimum fits in
what is left of the whole budget, else it is skipped and says so):
  environment     GPU, driver, python/torch/triton/CUDA versions, optional packages, NVML energy
                  (then the token caches start building in a background subprocess: CPU work that
                  overlaps the GPU sections below)
  imports         every project module imported in a fresh interpreter
  tests           the CUDA tests (Triton kernels vs the reference, multi-tensor and skip paths, the
                  lagged step's host syncs at 256 tokens, a distilling rung in bf16)
  bandwidth       the fused optimizer step's GB/s against a device copy and torch's fused AdamW,
                  on one 64M-element tensor and on nanochat d12's parameter list
  data            the background build collected: cpu-tiny's and nanochat's vocab, and which
                  tokenizer trainer built them (the manifest's "tokenizer_trainer", else unknown)
  train-eager     nanochat d12 on the lagged host sync, eager: tokens/s, MFU, peak memory, NVML
                  J/token, and the host syncs of every step (torch.cuda.set_sync_debug_mode)
  train-compiled  the same with torch.compile per block
NVML's total-energy counter is also read at the edges of every section.

Each heavy section runs in its own subprocess (launch/gpu_sections.py) with a timeout: a hung
kernel or a slow torch.compile cannot be interrupted from inside the process, but a child's
process group can be killed, and the GPU memory it held comes back with it. The child writes
its result after each piece of work, so a section cut at its budget keeps what it finished.

Uses the python it is started with (no venv, no install, no network). On a machine without a
CUDA GPU it exits at once with one sentence.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from launch.argtypes import positive_int  # noqa: E402  (imports nothing of ours)
from launch.gpu_sections import write_json_atomic  # noqa: E402  (stdlib only at import)

SECTIONS = ("imports", "tests", "bandwidth", "data", "train-eager", "train-compiled")  # what --skip may name
CUDA_TESTS = ["tests/kernels/test_triton_adamw.py::test_triton_cuda_vs_reference",
              "tests/kernels/test_triton_adamw.py::test_triton_cuda_multi_and_skip_vs_reference",
              "tests/engine/train/test_guard.py::test_lagged_cuda_steps_make_no_host_sync",
              "tests/engine/train/test_distill.py::test_a_distilling_rung_counts_its_teacher_and_starts_at_1_minus_w_of_the_ce[cuda]"]
QUICK_TESTS = CUDA_TESTS[1:2]  # needs no token cache
RESERVE_S = 5.0  # kept back from the whole budget for the last report and stopping the background build
# distributions whose versions the report names (module found by importlib.metadata, not imported)
PACKAGES = ("torch", "triton", "numpy", "tiktoken", "tokenizers", "rustbpe", "pyarrow", "tqdm", "pytest",
            "nvidia-ml-py", "flash-attn", "flash_attn_3")


# ------------------------------------------------------------------------------------------------
# Settings: the full run and --quick
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainRun:
    label: str
    compile: bool
    steps: int
    batch: int  # sequences of 2048 tokens per step
    warmup: int  # steps left out of tokens/s and the host-sync verdict (compile, lazy init)


@dataclass(frozen=True)
class Settings:
    budget_s: float
    limits: dict  # section -> (budget_s: cut there, min_s: skipped unless this much is left)
    tests: tuple[str, ...]
    vocabs: tuple[int, ...]  # token caches built: cpu-tiny's (the CUDA tests) and nanochat's
    n_params: int  # bandwidth: elements of the one-tensor case
    reps: int
    runs: tuple[TrainRun, ...]
    depth: int = 12
    eval_tokens: int = 65536
    data: str = "builtin"
    skip: frozenset = field(default_factory=frozenset)


FULL = Settings(
    budget_s=420,
    limits={"imports": (60, 15), "tests": (150, 45), "bandwidth": (60, 15), "data": (240, 0),
            "train-eager": (120, 45), "train-compiled": (180, 90)},
    tests=tuple(CUDA_TESTS), vocabs=(2048, 32768), n_params=64 << 20, reps=20,
    runs=(TrainRun("eager", False, 25, 16, 3), TrainRun("compiled", True, 30, 16, 6)))

QUICK = Settings(  # ~2 minutes: one kernel test, small bandwidth case, a 10-step eager d12 run
    budget_s=120,
    limits={"imports": (40, 10), "tests": (60, 20), "bandwidth": (30, 10), "data": (90, 0),
            "train-eager": (60, 30)},
    tests=tuple(QUICK_TESTS), vocabs=(32768,), n_params=16 << 20, reps=10, eval_tokens=32768,
    runs=(TrainRun("eager", False, 10, 8, 3),))


def settings_for(args) -> Settings:
    s = QUICK if args.quick else FULL
    runs = []
    for r in s.runs:
        steps = args.steps or r.steps
        runs.append(replace(r, steps=steps, batch=args.batch or r.batch, warmup=min(r.warmup, max(1, steps // 3))))
    return replace(s, budget_s=args.budget_s if args.budget_s is not None else s.budget_s, runs=tuple(runs),
                   depth=args.depth, eval_tokens=args.eval_tokens or s.eval_tokens, data=args.data,
                   skip=frozenset(args.skip))


# ------------------------------------------------------------------------------------------------
# Environment (no GPU needed: unit-tested on CPU)
# ------------------------------------------------------------------------------------------------
def package_versions(version=importlib.metadata.version) -> dict:
    out = {}
    for dist in PACKAGES:
        try:
            out[dist] = version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def nvml_status(pynvml=None) -> dict:
    """Driver version and whether the total-energy counter reads (Volta and newer)."""
    try:
        pynvml = pynvml or __import__("pynvml")
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
    except Exception as e:  # noqa: BLE001
        return {"nvml": f"unavailable ({type(e).__name__}: {e})", "driver": None, "energy_counter": False}
    try:
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        energy = True
    except Exception:  # noqa: BLE001
        energy = False
    return {"nvml": "ok", "driver": driver, "energy_counter": energy}


def probe_environment(torch=None) -> dict:
    """Versions and the GPU; {"torch": None} when torch itself cannot be imported."""
    if torch is None:
        try:
            import torch
        except Exception as e:  # noqa: BLE001
            return {"torch": None, "torch_error": f"{type(e).__name__}: {e}", "cuda_available": False,
                    "python": platform.python_version()}
    cuda = bool(torch.cuda.is_available())
    env = {"python": platform.python_version(), "python_executable": sys.executable, "torch": torch.__version__,
           "torch_cuda": torch.version.cuda, "cuda_available": cuda, "host": platform.node()}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                   gpu_count=torch.cuda.device_count(), cudnn=torch.backends.cudnn.version())
        env.update(nvml_status())
        env["packages"] = package_versions()
    return env


def cpu_only_message(env: dict) -> str | None:
    if env["cuda_available"]:
        return None
    if env.get("torch") is None:
        return (f"gpu-check needs torch with CUDA and this python ({sys.executable}) cannot import torch "
                f"({env.get('torch_error')}), so nothing was run.")
    return (f"gpu-check needs a CUDA GPU and torch sees none here (torch {env['torch']}, CUDA build "
            f"{env['torch_cuda'] or 'none'}), so nothing was run.")


def report_path(out_dir: Path, gpu: str, date: str) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower().replace("nvidia", "")).strip("-") or "gpu"
    return Path(out_dir) / f"gpu-check-{slug}-{date}.md"


def default_cache_dir() -> Path:
    """engine/data/prepare.py's default (LADDER_CACHE, else .cache/data), without importing it."""
    env = os.environ.get("LADDER_CACHE")
    return Path(env).expanduser() if env else ROOT / ".cache" / "data"


# ------------------------------------------------------------------------------------------------
# Budget
# ------------------------------------------------------------------------------------------------
class Budget:
    """The whole run's time: a section gets min(its budget, what is left less RESERVE_S) as its
    timeout, and is skipped when that is under its minimum."""

    def __init__(self, total_s: float, reserve_s: float = RESERVE_S, clock=time.monotonic):
        self.total_s, self.reserve_s, self.clock = float(total_s), reserve_s, clock
        self.t0 = clock()

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def left(self) -> float:
        return self.total_s - self.elapsed()

    def usable(self) -> float:
        return self.left() - self.reserve_s

    def timeout_for(self, budget_s: float, min_s: float) -> float | None:
        usable = self.usable()
        if usable <= 0 or usable < min_s:
            return None
        return min(float(budget_s), usable)


# ------------------------------------------------------------------------------------------------
# Energy windows
# ------------------------------------------------------------------------------------------------
class EnergyMeter:
    """Joules over a window from NVML's total-energy counter (mJ since driver load). The counter
    updates every 20-100 ms, so only windows of seconds mean much."""

    def __init__(self, pynvml=None):
        self.windows: list[dict] = []
        try:
            self.nvml = pynvml or __import__("pynvml")
            self.nvml.nvmlInit()
            self.handle = self.nvml.nvmlDeviceGetHandleByIndex(0)
            self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        except Exception:  # noqa: BLE001
            self.nvml = None

    def _read_mj(self):
        if self.nvml is None:
            return None
        try:
            return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        except Exception:  # noqa: BLE001
            return None

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
# Child processes
# ------------------------------------------------------------------------------------------------
def _tail(path: Path, chars: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - chars))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _read_result(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def _kill_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM to the child's process group (it and anything it started: pytest's tests, the
    compile workers), then SIGKILL after `grace_s`."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class Child:
    """One section's subprocess: its own process group, output to a log file, result to a JSON
    file it rewrites as it goes (gpu_sections.py), killed at its deadline."""

    def __init__(self, argv: list[str], log: Path, result: Path | None = None, env: dict | None = None):
        self.log, self.result, self.t0 = Path(log), result, time.monotonic()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        if result is not None:
            Path(result).unlink(missing_ok=True)
        # its own process group (killpg reaches what it starts) but not its own session: whatever
        # ends this run's session (the device tool's timeout) still ends the children too
        with open(self.log, "wb") as f:
            self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, process_group=0,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        _LIVE.add(self)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def finish(self, timeout: float) -> dict:
        """Wait up to `timeout` s; {"status": ok|failed|cut, "result", "rc", "note", "log_tail"}."""
        try:
            rc = self.proc.wait(timeout=max(0.0, timeout))
            cut = False
        except subprocess.TimeoutExpired:
            _kill_group(self.proc)
            rc, cut = self.proc.returncode, True
        _LIVE.discard(self)
        result, tail = _read_result(self.result), _tail(self.log)
        if cut:
            status, note = "cut", f"overran its {timeout:.0f} s and was stopped; kept what it had written"
        elif rc == 0:
            status, note = "ok", ""
        else:
            status = "failed"
            note = result.get("error") or (tail.strip().splitlines() or [f"exit {rc}"])[-1]
        return {"status": status, "result": result, "rc": rc, "note": note, "log_tail": tail,
                "child_s": time.monotonic() - self.t0}

    def stop(self) -> None:
        if self.alive():
            _kill_group(self.proc, grace_s=2.0)
        _LIVE.discard(self)


_LIVE: set[Child] = set()  # children not yet waited for: stopped when the run ends, however it ends


def stop_children() -> None:
    for c in list(_LIVE):
        c.stop()


def section_argv(section: str, params_file: Path, result_file: Path) -> list[str]:
    return [sys.executable, "-m", "launch.gpu_sections", section, "--params", str(params_file),
            "--result", str(result_file)]


# ------------------------------------------------------------------------------------------------
# pytest output
# ------------------------------------------------------------------------------------------------
_OUTCOME = re.compile(r"^(\S+::\S+)\s+(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", re.M)
_SUMMARY = re.compile(r"^=+ (.+? in [\d.]+s.*?) =+$", re.M)


def parse_pytest_log(text: str) -> dict:
    """Outcome per test from `pytest -v` output (also from a run cut short), and its summary."""
    outcomes = {m.group(1): m.group(2).lower() for m in _OUTCOME.finditer(text)}
    summaries = _SUMMARY.findall(text)
    counts = {}
    for o in outcomes.values():
        counts[o] = counts.get(o, 0) + 1
    return {"outcomes": outcomes, "counts": counts, "summary": summaries[-1] if summaries else None}


# ------------------------------------------------------------------------------------------------
# Report (no GPU needed: unit-tested on CPU)
# ------------------------------------------------------------------------------------------------
def _fmt(v, spec="{:.3g}") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 and spec == "{:.3g}" else spec.format(v)
    return str(v)


def _table(rows: list[dict], cols: list[str], keys: list[str] | None = None) -> list[str]:
    if not rows:
        return ["(none)"]
    keys = keys or cols
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return out


def headline(name: str, res: dict) -> str:
    """One line of what a section found, for its progress line and the summary table."""
    if not res:
        return ""
    if name == "environment":
        return (f"{res.get('gpu', 'no GPU')}, torch {res.get('torch')} (CUDA {res.get('torch_cuda')}), "
                f"triton {(res.get('packages') or {}).get('triton')}, python {res.get('python')}, "
                f"NVML energy {_fmt(res.get('energy_counter'))}")
    if name == "imports":
        failed = res.get("failed") or {}
        return (f"{res.get('modules', 0)} modules, {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}; "
                f"kernel {res.get('kernel_backend')}, attention {res.get('attention_backend')}")
    if name == "tests":
        return res.get("summary") or ", ".join(f"{n} {o}" for o, n in sorted(res.get("counts", {}).items()))
    if name == "bandwidth":
        rows = [r for r in res.get("rows", []) if r.get("case", "").endswith(", plain")]
        if not rows:
            return f"device copy {_fmt(res.get('copy_GBs'))} GB/s"
        r = rows[-1]
        return (f"{r['case']}: {_fmt(r.get('GB/s'))} GB/s = {_fmt(r.get('vs copy'))} of a device copy, "
                f"{_fmt(r.get('vs torch fused AdamW'))}x torch's fused AdamW")
    if name == "data":
        caches = res.get("caches", [])
        return ("tokenizer trainer "
                f"{res.get('tokenizer_trainer') or ', '.join(c['tokenizer_trainer'] for c in caches) or 'n/a'}; "
                + ", ".join(f"vocab {c['vocab']}: {_fmt(c.get('train_tokens'))} train tokens" for c in caches))
    if name.startswith("train"):
        hs = res.get("host_syncs") or {}
        zero = hs.get("zero")
        at = sorted(int(k) for k in hs.get("steps_with_syncs") or {})  # JSON keys: strings
        syncs = "n/a" if zero is None else "0" if zero else f"NOT zero at steps {at}"
        if res.get("tokens_per_s") is None and res.get("phase") != "done":
            return f"stopped in {res.get('phase', 'setup')}, {res.get('steps_started', 0)} steps started"
        return (f"{_fmt(res.get('tokens_per_s'))} tokens/s, MFU {_fmt(res.get('mfu'))}, "
                f"host syncs per lagged step: {syncs} ({hs.get('lagged_steps_counted', 0)} steps); "
                f"attention {res.get('attention')}, kernel {res.get('kernel')}")
    return ""


def what_ran(rep: dict) -> dict:
    """Which tokenizer trainer, attention backend and kernel backend ran, and the versions: the
    training runs' own record first, else what the import section says would run."""
    env = rep.get("environment") or {}
    res = {s["name"]: s.get("result") or {} for s in rep.get("sections", [])}
    trains = [r for n, r in res.items() if n.startswith("train") and r]

    def first(*vals):
        return next((v for v in vals if v), None)

    imp = res.get("imports", {})
    return {
        "tokenizer_trainer": res.get("data", {}).get("tokenizer_trainer"),
        "attention_backend": first(*(r.get("attention") for r in trains),
                                   imp.get("attention_backend") and f"{imp['attention_backend']} (would run)"),
        "kernel_backend": first(*(r.get("kernel") for r in trains), res.get("bandwidth", {}).get("kernel_backend"),
                                imp.get("kernel_backend") and f"{imp['kernel_backend']} (would run)"),
        "gpu": env.get("gpu"), "driver": env.get("driver"), "python": env.get("python"), "torch": env.get("torch"),
        "cuda": env.get("torch_cuda"), "triton": (env.get("packages") or {}).get("triton"),
    }


def render_report(rep: dict) -> str:
    env = rep.get("environment") or {}
    secs = rep.get("sections", [])
    by = {s["name"]: s for s in secs}
    state = ("complete" if rep.get("finished") else
             f"IN PROGRESS or cut short (last section started: {secs[-1]['name'] if secs else 'none'})")
    lines = [f"# GPU check: {env.get('gpu', 'no GPU')}, {rep.get('date')}", "",
             f"`{rep.get('command')}`: {state}; {_fmt(rep.get('elapsed_s'), '{:.0f}')} s of a "
             f"{_fmt(rep.get('budget_s'), '{:.0f}')} s budget{' (--quick)' if rep.get('quick') else ''}.", "",
             "What ran: " + ", ".join(f"{k.replace('_', ' ')} {_fmt(v)}" for k, v in what_ran(rep).items()) + ".",
             "", "## Sections", ""]
    rows = [{**x, "found": "; ".join(filter(None, (x.get("note"), x.get("headline")))) or None} for x in secs]
    lines += _table(rows, ["section", "status", "seconds", "timeout s", "budget s", "min s", "what it found"],
                    ["name", "status", "seconds", "timeout_s", "budget_s", "min_s", "found"])
    lines += ["", "## Environment", ""]
    lines += [f"- {k}: {_fmt(v)}" for k, v in env.items() if k != "packages"]
    lines += [f"- package {k}: {_fmt(v)}" for k, v in (env.get("packages") or {}).items()]
    imp = (by.get("imports") or {}).get("result") or {}
    if imp:
        lines += ["", "## Imports", "", headline("imports", imp)]
        lines += [f"- `{m}`: {e}" for m, e in (imp.get("failed") or {}).items()]
    t = (by.get("tests") or {}).get("result") or {}
    if t:
        lines += ["", "## CUDA tests", "", t.get("summary") or "(no summary: cut short?)", ""]
        lines += _table([{"test": k, "outcome": v} for k, v in t.get("outcomes", {}).items()], ["test", "outcome"])
    d = (by.get("data") or {}).get("result") or {}
    if d:
        lines += ["", "## Token caches", ""]
        lines += _table(d.get("caches", []), ["vocab", "tokenizer trainer", "train tokens", "val tokens", "python",
                                              "build s", "s here"],
                        ["vocab", "tokenizer_trainer", "train_tokens", "val_tokens", "python", "built_s", "seconds"])
    b = (by.get("bandwidth") or {}).get("result") or {}
    if b:
        lines += ["", f"## Fused optimizer step: bandwidth (kernel backend {b.get('kernel_backend')})", "",
                  "GB/s counts 28 B/param for a plain step (read p, g, m, v; write p, m, v; fp32) and 44 for the "
                  "inherited step with anchor, kappa and online Fisher; torch's fused AdamW is counted at 28.", ""]
        lines += _table(b.get("rows", []), ["case", "params", "ms", "GB/s", "vs copy", "vs torch fused AdamW"])
    runs = [s["result"] for s in secs if s["name"].startswith("train") and s.get("result")]
    if runs:
        lines += ["", "## Training (nanochat shape, bf16, lagged host sync, profiler off)", ""]
        lines += _table(runs, ["run", "depth", "batch", "steps", "attention", "kernel", "tokens/s", "MFU", "peak GiB",
                               "val loss", "J/token", "host syncs zero"],
                        ["run", "depth", "batch", "steps", "attention", "kernel", "tokens_per_s", "mfu", "peak_gib",
                         "val_loss", "j_per_token", "sync_zero"])
        lines += ["", "Host syncs per step (sync debug mode on inside each step; the lagged read of the previous "
                      "step's verdict excluded; the last step evaluates and checkpoints, so syncs by design):", ""]
        for r in runs:
            hs = r.get("host_syncs") or {}
            lines.append(f"- {r.get('run')}: {hs.get('lagged_steps_counted', 0)} lagged steps counted after "
                         f"{len(hs.get('warmup_steps', {}))} warm-up steps; steps with syncs "
                         f"{hs.get('steps_with_syncs') or 'none'}; warm-up {hs.get('warmup_steps')}; "
                         f"last step {hs.get('last_step')}")
    lines += ["", "## Energy per section (NVML)", ""] + _table(rep.get("energy") or [],
                                                               ["window", "seconds", "joules", "watts"])
    bad = [s for s in secs if s.get("status") in ("failed", "cut") and (s.get("note") or s.get("log_tail"))]
    if bad:
        lines += ["", "## Failures", ""]
        for s in bad:
            lines += [f"### {s['name']}: {s['status']}", "", f"{s.get('note')}", ""]
            if s.get("log_tail"):
                lines += ["```", s["log_tail"][-1500:], "```", ""]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------
class Check:
    """The report and the budget: runs sections, prints a progress line per section and writes the
    report (md + json) after each."""

    def __init__(self, out_path: Path, budget: Budget, report: dict, meter: EnergyMeter | None = None, echo=print):
        self.out_path, self.budget, self.rep, self.echo = Path(out_path), budget, report, echo
        self.meter = meter or EnergyMeter(pynvml=_NoNVML())
        self.rep.setdefault("sections", [])
        self.rep["energy"] = self.meter.windows
        self.rep["budget_s"] = budget.total_s

    def write(self) -> None:
        self.rep["elapsed_s"] = self.budget.elapsed()
        self.rep["ran"] = what_ran(self.rep)
        self.out_path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.out_path.with_suffix(".json"), self.rep)
        tmp = self.out_path.with_name(f".{self.out_path.name}.tmp")
        tmp.write_text(render_report(self.rep))
        os.replace(tmp, self.out_path)

    def progress(self, entry: dict) -> None:
        secs = f"{entry['seconds']:6.1f} s" if entry.get("seconds") is not None else " " * 8
        text = entry.get("headline") or entry.get("note") or ""
        if entry.get("headline") and entry.get("note"):
            text = f"{entry['note']}; {entry['headline']}"
        self.echo(f"gpu-check {self.budget.elapsed():4.0f}/{self.budget.total_s:.0f} s  {entry['name']:<15} "
                  f"{entry['status']:<8}{secs}  {text}"[:400], flush=True)

    def skip(self, name: str, note: str, limits=(None, None)) -> dict:
        entry = {"name": name, "status": "skipped", "note": note, "budget_s": limits[0], "min_s": limits[1]}
        self.rep["sections"].append(entry)
        self.progress(entry)
        self.write()
        return entry

    def section(self, name: str, fn, limits: tuple[float, float]) -> dict:
        """Run fn(timeout) -> {"status", "result", "note", "log_tail"} if its minimum fits."""
        budget_s, min_s = limits
        timeout = self.budget.timeout_for(budget_s, min_s)
        if timeout is None:
            return self.skip(name, f"skipped: needs at least {min_s:.0f} s and {max(0.0, self.budget.usable()):.0f} s "
                                   f"of the budget are left", limits)
        entry = {"name": name, "status": "running", "budget_s": budget_s, "min_s": min_s,
                 "timeout_s": round(timeout, 1)}
        self.rep["sections"].append(entry)
        self.write()  # a run killed now still says which section it was in
        t0 = time.monotonic()
        try:
            with self.meter.window(name):
                out = fn(timeout)
        except Exception as e:  # noqa: BLE001  (written into the report; the other sections still run)
            out = {"status": "failed", "note": f"{type(e).__name__}: {e}"[:500]}
        entry.update(status=out.get("status", "ok"), seconds=round(time.monotonic() - t0, 1),
                     result=out.get("result") or {}, note=out.get("note") or "")
        if out.get("log_tail") and entry["status"] != "ok":
            entry["log_tail"] = out["log_tail"]
        entry["headline"] = headline(name, entry["result"])
        if name.startswith("train") and entry["result"]:
            entry["result"]["sync_zero"] = (entry["result"].get("host_syncs") or {}).get("zero")
        self.progress(entry)
        self.write()
        return entry

    def finish(self) -> None:
        self.rep["finished"] = True
        self.write()


class _NoNVML:
    def nvmlInit(self):
        raise RuntimeError("energy not read")


# ------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", default=str(ROOT / "docs" / "results"),
                   help="where the report (md + json) is written after every section; on the device tool: $OUT")
    p.add_argument("--work-dir", default=str(ROOT / "runs" / "gpu-check"), help="scratch: runs, logs (not reported)")
    p.add_argument("--budget-s", dest="budget_s", type=float, default=None,
                   help="the whole run's time budget in seconds (default 420; 120 with --quick)")
    p.add_argument("--quick", action="store_true", help="a ~2-minute smoke run")
    p.add_argument("--depth", type=positive_int, default=12)
    p.add_argument("--steps", type=positive_int, default=None, help="steps of each training run (default 25 eager, "
                   "30 compiled; 10 with --quick)")
    p.add_argument("--batch", type=positive_int, default=None, help="sequences of 2048 tokens per step (default 16; 8 "
                   "with --quick)")
    p.add_argument("--eval-tokens", dest="eval_tokens", type=positive_int, default=None,
                   help="validation tokens of each evaluation (default 65536; 32768 with --quick)")
    p.add_argument("--data", default="builtin")
    p.add_argument("--cache-dir", dest="cache_dir", default=None,
                   help="token caches (default: LADDER_CACHE, else .cache/data)")
    p.add_argument("--skip", type=_sections, default=frozenset(), help=f"comma-separated: {','.join(SECTIONS)}")
    return p.parse_args(argv)


def _sections(s: str) -> frozenset:
    names = frozenset(filter(None, (x.strip() for x in s.split(","))))
    if names - set(SECTIONS):
        raise argparse.ArgumentTypeError(f"unknown section(s) {sorted(names - set(SECTIONS))}; expected some of "
                                         f"{list(SECTIONS)}")
    return names


def run_sections(check: Check, s: Settings, work: Path, cache_dir: Path) -> None:
    """Every section after the environment, in order, the data build in the background."""
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    def params(name: str, obj: dict) -> tuple[Path, Path]:
        pf, rf = work / f"{name}.params.json", work / f"{name}.result.json"
        pf.write_text(json.dumps(obj))
        return pf, rf

    def child(section: str, name: str, obj: dict, env: dict | None = None):
        pf, rf = params(name, obj)
        return lambda timeout: Child(section_argv(section, pf, rf), logs / f"{name}.log", rf, env).finish(timeout)

    # the token caches, in the background from the start (CPU work, while the GPU sections run)
    data = None
    data_deadline = None
    if "data" not in s.skip:
        pf, rf = params("data", {"source": s.data, "vocabs": list(s.vocabs), "cache_dir": str(cache_dir)})
        data = Child(section_argv("data", pf, rf), logs / "data.log", rf)
        data_deadline = time.monotonic() + s.limits["data"][0]
    def imports(timeout):
        out = child("imports", "imports", {})(timeout)
        failed = (out.get("result") or {}).get("failed")
        if out["status"] == "ok" and failed:
            out.update(status="failed", note=f"{len(failed)} module(s) failed to import")
        return out

    try:
        for name, fn in (
                ("imports", imports),
                ("tests", lambda timeout: _run_tests(s.tests, logs / "tests.log", cache_dir, timeout)),
                ("bandwidth",
                 child("bandwidth", "bandwidth", {"n_params": s.n_params, "reps": s.reps, "depth": s.depth}))):
            if name in s.skip:
                check.skip(name, "skipped: --skip")
            else:
                check.section(name, fn, s.limits[name])
        data_entry = None
        if data is None:
            check.skip("data", "skipped: --skip (training opens or builds the caches itself)")
        else:
            data_limits = (max(0.0, data_deadline - time.monotonic()), 0)
            data_entry = check.section("data", data.finish, data_limits)
        for run in FULL.runs:  # --quick names the compiled run as skipped
            name = f"train-{run.label}"
            planned = next((r for r in s.runs if r.label == run.label), None)
            if name in s.skip:
                check.skip(name, "skipped: --skip")
            elif planned is None:
                check.skip(name, "skipped: not part of --quick")
            elif data_entry is not None and data_entry["status"] != "ok":
                check.skip(name, f"skipped: needs the token cache, and the data section was {data_entry['status']}"
                                 f" ({data_entry.get('note') or 'see its log'})"[:400],
                           s.limits.get(name, (None, None)))
            else:
                out = work / name
                shutil.rmtree(out, ignore_errors=True)
                check.section(name, child("train", name, {
                    "label": planned.label, "compile": planned.compile, "steps": planned.steps, "batch": planned.batch,
                    "warmup": planned.warmup, "depth": s.depth, "eval_tokens": s.eval_tokens, "data": s.data,
                    "cache_dir": str(cache_dir), "out": str(out)}), s.limits[name])
    finally:
        if data is not None:
            data.stop()


def _run_tests(tests, log: Path, cache_dir: Path, timeout: float) -> dict:
    argv = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", *tests]
    out = Child(argv, log, env={"LADDER_CACHE": str(cache_dir)}).finish(timeout)
    parsed = parse_pytest_log(_tail(log, 200_000))
    out["result"] = parsed
    if out["status"] == "ok" and parsed["counts"].get("skipped"):
        out.update(status="failed", note=f"{parsed['counts']['skipped']} CUDA test(s) skipped on a CUDA machine")
    elif out["status"] == "failed":
        out["note"] = parsed["summary"] or out["note"]
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    settings = settings_for(args)
    budget = Budget(settings.budget_s)
    env = probe_environment()
    msg = cpu_only_message(env)
    if msg:
        print(msg, flush=True)
        return 1
    date = datetime.date.today().isoformat()
    out_path = report_path(Path(args.out_dir), env["gpu"], date)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    rep = {"date": date,
           "command": "python launch/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "quick": args.quick, "environment": env, "cache_dir": str(cache_dir), "sections": []}
    check = Check(out_path, budget, rep, meter=EnergyMeter())
    print(f"gpu-check: report -> {out_path} (+ .json), rewritten after every section", flush=True)
    check.rep["sections"].append({"name": "environment", "status": "ok", "seconds": round(budget.elapsed(), 1),
                                  "headline": headline("environment", env), "result": {}})
    check.progress(check.rep["sections"][-1])
    check.write()
    # a SIGTERM (a timeout around this command) ends the run through `finally`: children stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        run_sections(check, settings, work, cache_dir)
    finally:
        stop_children()
    check.finish()
    statuses = [s["status"] for s in rep["sections"]]
    bad = [s["name"] for s in rep["sections"] if s["status"] in ("failed", "cut")
           or (s["status"] == "skipped" and s.get("note", "").startswith("skipped: needs"))]
    print(f"gpu-check: {statuses.count('ok')} of {len(statuses)} sections ok"
          f"{'; not ok: ' + ', '.join(bad) if bad else ''}; wrote {out_path} and {out_path.with_suffix('.json').name}",
          flush=True)
    return 2 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
