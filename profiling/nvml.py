"""Background samplers of what the hardware reports: NVML on GPU machines, the OS on CPU ones.

`NvmlSampler` polls every visible GPU through nvidia-ml-py (module `pynvml`) on a daemon thread:
power (mW, a ~1 s average on Ampere and newer), SM and memory utilisation, memory used, SM clock
and the clock-event (throttle) reasons. Energy per window is *not* integrated from those samples:
like Zeus, it is the difference of `nvmlDeviceGetTotalEnergyConsumption` (mJ since driver load,
Volta and newer) read at the window's two edges, right after the profiler's synchronisation. The
counter updates every 20-100 ms, so only windows of seconds (many steps) are meaningful.

`CpuSampler` records only what is real on a machine without NVML: process CPU time, resident
memory (VmRSS from /proc/self/status, else ru_maxrss) and, when readable, RAPL package energy
from /sys/class/powercap/intel-rapl:*/energy_uj (wraparound handled with max_energy_range_uj).
It never reports a GPU number.

Both survive their source failing mid-run: a metric that raises is left out of that sample;
after `max_failures` consecutive rounds in which every GPU query failed, polling stops and the
error is kept in `meta()["error"]` and in every later window summary. `start()` / `stop()` are
idempotent and `stop()` joins the thread.
"""
from __future__ import annotations

import collections
import glob
import os
import resource
import sys
import threading
import time
from typing import Any

_perf = time.perf_counter


class SamplerUnavailable(RuntimeError):
    """The requested sampler cannot run on this machine; the message says why."""


class _Thread:
    """A polling daemon thread with a clean start/stop."""

    name = "profiling-sampler"

    def __init__(self, interval_s: float) -> None:
        self.interval_s = float(interval_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._poll()  # one sample at t0 so short windows are never empty
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if self._poll() is False:
                    return
            except Exception:  # a sampler must never take the training run down
                return

    def stop(self) -> None:
        t = self._thread
        if t is None:
            return
        self._stop.set()
        t.join(timeout=max(5.0, 4 * self.interval_s))
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _poll(self):  # pragma: no cover - overridden
        raise NotImplementedError


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


# ------------------------------------------------------------------------------------------
# NVML
# ------------------------------------------------------------------------------------------


def _import_pynvml():
    try:
        import pynvml  # nvidia-ml-py
    except Exception as e:  # ImportError, or a broken install
        raise SamplerUnavailable(f"nvidia-ml-py (pynvml) not importable: {e}") from e
    return pynvml


def visible_nvml_targets(env: dict[str, str] | None = None) -> list[int | str] | None:
    """The GPUs CUDA can see, as NVML indices (int) or UUID strings; None means all of them.

    NVML ignores CUDA_VISIBLE_DEVICES, so the sampler maps it itself: integers are taken as NVML
    indices (true when CUDA_DEVICE_ORDER=PCI_BUS_ID, and on homogeneous nodes), "GPU-..." as UUIDs.
    MIG entries ("MIG-...") are skipped (NVML power/energy is per physical GPU).
    """
    env = os.environ if env is None else env
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    out: list[int | str] = []
    for tok in raw.split(","):
        tok = tok.strip()
        if not tok:
            continue
        if tok.lstrip("-").isdigit():
            if int(tok) < 0:
                break  # CUDA stops enumerating at the first invalid index
            out.append(int(tok))
        elif tok.startswith("GPU-"):
            out.append(tok)
    return out


def _clock_reason_names(pynvml) -> dict[int, str]:
    names: dict[int, str] = {}
    for prefix in ("nvmlClocksEventReason", "nvmlClocksThrottleReason"):
        for attr in dir(pynvml):
            if attr.startswith(prefix) and attr[len(prefix):] not in ("All", "None", "Unknown"):
                val = getattr(pynvml, attr)
                if isinstance(val, int) and val and (val & (val - 1)) == 0:
                    names.setdefault(val, attr[len(prefix):])
    return names


def _decode_reasons(mask: int, names: dict[int, str]) -> list[str]:
    out, rest = [], mask
    for bit, name in sorted(names.items()):
        if mask & bit:
            out.append(name)
            rest &= ~bit
    if rest:
        out.append(hex(rest))
    return out


class NvmlSampler(_Thread):
    """Samples every visible GPU; see the module docstring."""

    kind = "nvml"

    def __init__(self, interval_s: float = 0.25, targets: list[int | str] | None = None,
                 pynvml_module=None, max_failures: int = 5) -> None:
        super().__init__(interval_s)
        self._nv = pynvml_module if pynvml_module is not None else _import_pynvml()
        nv = self._nv
        try:
            nv.nvmlInit()
        except Exception as e:
            raise SamplerUnavailable(f"nvmlInit failed: {e}") from e
        self._initialised = True
        try:
            if targets is None:
                targets = visible_nvml_targets()
            if targets is None:
                targets = list(range(nv.nvmlDeviceGetCount()))
            self.handles, self.gpus = [], []
            for t in targets:
                h = nv.nvmlDeviceGetHandleByUUID(t) if isinstance(t, str) else nv.nvmlDeviceGetHandleByIndex(t)
                name = nv.nvmlDeviceGetName(h)
                name = name.decode() if isinstance(name, bytes) else str(name)
                self.handles.append(h)
                self.gpus.append({"target": t, "name": name})
            if not self.handles:
                raise SamplerUnavailable("NVML sees no GPU visible to this process")
        except SamplerUnavailable:
            self._shutdown()
            raise
        except Exception as e:
            self._shutdown()
            raise SamplerUnavailable(f"NVML device enumeration failed: {e}") from e
        self.reason: str | None = None
        self.error: str | None = None
        self.max_failures = int(max_failures)
        self._fail_rounds = 0
        self._lock = threading.Lock()
        self._samples: collections.deque = collections.deque(maxlen=200_000)
        self._reason_names = _clock_reason_names(nv)
        self._sm_clock = getattr(nv, "NVML_CLOCK_SM", 1)
        self._reasons_fn = (getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
                            or getattr(nv, "nvmlDeviceGetCurrentClocksThrottleReasons", None))
        self._energy_prev: list[float | None] = [None] * len(self.handles)
        self._energy_ok = [self._read_energy(i) is not None for i in range(len(self.handles))]

    # -- reading -----------------------------------------------------------------------------
    def _read_energy(self, i: int) -> float | None:
        """Total-energy counter of GPU i in joules, or None when it cannot be read."""
        try:
            return float(self._nv.nvmlDeviceGetTotalEnergyConsumption(self.handles[i])) / 1000.0
        except Exception:
            return None

    def _sample_gpu(self, h) -> dict[str, Any]:
        nv, s = self._nv, {}
        err = None
        for key, fn in (
            ("power_w", lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0),
            ("util", lambda: nv.nvmlDeviceGetUtilizationRates(h)),
            ("mem_used", lambda: nv.nvmlDeviceGetMemoryInfo(h).used),
            ("sm_clock_mhz", lambda: nv.nvmlDeviceGetClockInfo(h, self._sm_clock)),
            ("reasons", (lambda: self._reasons_fn(h)) if self._reasons_fn else None),
        ):
            if fn is None:
                continue
            try:
                v = fn()
            except Exception as e:
                err = e
                continue
            if key == "util":
                s["sm_util"], s["mem_util"] = float(v.gpu), float(v.memory)
            else:
                s[key] = v
        if not s and err is not None:
            raise err
        return s

    def _poll(self):
        if self.error is not None:
            return False
        t = _perf()
        row, last_err = [], None
        for h in self.handles:
            try:
                row.append(self._sample_gpu(h))
            except Exception as e:
                row.append({})
                last_err = e
        if all(not s for s in row):
            self._fail_rounds += 1
            if self._fail_rounds >= self.max_failures:
                self.error = f"NVML stopped answering after {self.max_failures} failed rounds: {last_err!r}"
                return False
            return True
        self._fail_rounds = 0
        with self._lock:
            self._samples.append((t, row))
        return True

    # -- windows -----------------------------------------------------------------------------
    def begin(self) -> None:
        """Read the energy counters at a window's first edge (after the device sync)."""
        for i in range(len(self.handles)):
            self._energy_prev[i] = self._read_energy(i) if self._energy_ok[i] else None

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        """Summary of [t0, t1]; reads the energy counters at t1 (call right after the sync)."""
        with self._lock:
            rows = [r for r in self._samples if r[0] <= t1]
            while self._samples and self._samples[0][0] <= t1:
                self._samples.popleft()
        gpus, total_e, total_p = [], 0.0, 0.0
        e_known, p_known = True, True
        for i, g in enumerate(self.gpus):
            ss = [r[1][i] for r in rows if r[1][i]]
            power = [s["power_w"] for s in ss if "power_w" in s]
            energy, source = None, None
            if self._energy_ok[i] and self.error is None:
                now = self._read_energy(i)
                prev = self._energy_prev[i]
                if now is not None and prev is not None and now >= prev:
                    energy, source = now - prev, "nvml_total_energy_counter"
                self._energy_prev[i] = now
            if energy is None and len(power) >= 1 and t1 > t0:
                # fallback: mean sampled power x window length (coarse; marked as such)
                energy, source = _mean(power) * (t1 - t0), "mean_sampled_power_x_wall"
            reasons = 0
            for s in ss:
                r = s.get("reasons")
                if isinstance(r, int):
                    reasons |= r
            gsum = {
                "index": g["target"], "name": g["name"], "samples": len(ss),
                "energy_j": energy, "energy_source": source,
                "power_w_mean": _mean(power), "power_w_max": max(power) if power else None,
                "sm_util_mean": _mean([s["sm_util"] for s in ss if "sm_util" in s]),
                "mem_util_mean": _mean([s["mem_util"] for s in ss if "mem_util" in s]),
                "mem_used_max_bytes": max((s["mem_used"] for s in ss if "mem_used" in s), default=None),
                "sm_clock_mhz_mean": _mean([s["sm_clock_mhz"] for s in ss if "sm_clock_mhz" in s]),
                "sm_clock_mhz_min": min((s["sm_clock_mhz"] for s in ss if "sm_clock_mhz" in s), default=None),
                "clock_event_reasons": _decode_reasons(reasons, self._reason_names),
            }
            gpus.append(gsum)
            if energy is None:
                e_known = False
            else:
                total_e += energy
            if gsum["power_w_mean"] is None:
                p_known = False
            else:
                total_p += gsum["power_w_mean"]
        out = {"kind": self.kind, "gpus": gpus,
               "energy_j": total_e if e_known else None,
               "power_w_mean": total_p if p_known else None}
        if self.error is not None:
            out["error"] = self.error
        return out

    def meta(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "reason": self.reason, "error": self.error,
            "interval_s": self.interval_s, "gpus": [dict(g) for g in self.gpus],
            "energy_counter": [bool(x) for x in self._energy_ok],
            "real": {"gpu_energy": any(self._energy_ok), "gpu_power": True, "gpu_util": True,
                     "cpu_time": False, "rss": False, "rapl": False},
        }

    def _shutdown(self) -> None:
        if getattr(self, "_initialised", False):
            self._initialised = False
            try:
                self._nv.nvmlShutdown()
            except Exception:
                pass

    def stop(self) -> None:
        super().stop()
        self._shutdown()


# ------------------------------------------------------------------------------------------
# CPU / OS
# ------------------------------------------------------------------------------------------


def read_rss_bytes() -> int | None:
    """Resident set size of this process (VmRSS), or None where /proc is absent."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """Peak RSS of the process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024


class RaplCounter:
    """Cumulative package energy from the Linux powercap RAPL zones, wraparound-corrected.

    Only top-level zones (`intel-rapl:N`, one per package; AMD exposes the same interface) are
    summed: their sub-zones (core, uncore, dram) are parts of, or outside, the package and would
    double count. `read()` must be called more often than the counter wraps (the sampler thread
    does, every interval); each call adds the wrapped difference since the previous one.
    """

    def __init__(self, root: str = "/sys/class/powercap") -> None:
        self.zones: list[tuple[str, int]] = []
        self.reason: str | None = None
        paths = sorted(p for p in glob.glob(os.path.join(root, "intel-rapl:*"))
                       if os.path.basename(p).count(":") == 1)
        if not paths:
            self.reason = f"no RAPL zones under {root}"
        for p in paths:
            try:
                with open(os.path.join(p, "energy_uj")) as f:
                    int(f.read())
                try:
                    with open(os.path.join(p, "max_energy_range_uj")) as f:
                        rng = int(f.read())
                except (OSError, ValueError):
                    rng = 2 ** 32
                self.zones.append((p, rng))
            except (OSError, ValueError) as e:
                self.reason = f"RAPL not readable ({p}/energy_uj: {e.__class__.__name__})"
        if self.zones:
            self.reason = None
        self._last: list[int | None] = [None] * len(self.zones)
        self.total_j = 0.0
        self._lock = threading.Lock()
        if self.zones:
            self.read()

    @property
    def available(self) -> bool:
        return bool(self.zones)

    def read(self) -> float | None:
        """Joules accumulated since construction (None when no zone is readable)."""
        if not self.zones:
            return None
        with self._lock:
            for i, (p, rng) in enumerate(self.zones):
                try:
                    with open(os.path.join(p, "energy_uj")) as f:
                        v = int(f.read())
                except (OSError, ValueError):
                    continue
                last = self._last[i]
                if last is not None:
                    d = v - last
                    if d < 0:  # the counter wrapped at max_energy_range_uj
                        d += rng
                    self.total_j += d / 1e6
                self._last[i] = v
            return self.total_j


class CpuSampler(_Thread):
    """What is real without NVML: CPU time, RSS and RAPL energy when readable."""

    kind = "cpu"

    def __init__(self, interval_s: float = 0.25, reason: str = "no NVML",
                 rapl_root: str = "/sys/class/powercap") -> None:
        super().__init__(interval_s)
        self.reason = reason
        self.error: str | None = None
        self.rapl = RaplCounter(rapl_root)
        self._lock = threading.Lock()
        self._rss_max = 0
        self._cpu_prev = time.process_time()
        self._e_prev: float | None = None

    def _poll(self):
        rss = read_rss_bytes()
        if self.rapl.available:
            self.rapl.read()
        if rss is not None:
            with self._lock:
                self._rss_max = max(self._rss_max, rss)
        return True

    def begin(self) -> None:
        self._cpu_prev = time.process_time()
        self._e_prev = self.rapl.read()
        with self._lock:
            self._rss_max = read_rss_bytes() or 0

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        cpu_now = time.process_time()
        cpu = cpu_now - self._cpu_prev
        self._cpu_prev = cpu_now
        rss = read_rss_bytes()
        with self._lock:
            rss_max = max(self._rss_max, rss or 0) or None
            self._rss_max = rss or 0
        e_now = self.rapl.read()
        energy = None
        if e_now is not None and self._e_prev is not None:
            energy = e_now - self._e_prev
        self._e_prev = e_now
        wall = t1 - t0
        return {
            "kind": self.kind,
            "cpu_time_s": cpu,
            "cpu_cores_busy": cpu / wall if wall > 0 else None,
            "rss_bytes": rss, "rss_max_bytes": rss_max,
            "rapl_energy_j": energy,
            "energy_j": energy,  # RAPL package energy (whole socket, not only this process) or None
            "power_w_mean": energy / wall if energy is not None and wall > 0 else None,
        }

    def meta(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "reason": self.reason, "error": self.error, "interval_s": self.interval_s,
            "rapl": {"available": self.rapl.available, "zones": [z for z, _ in self.rapl.zones],
                     "reason": self.rapl.reason,
                     "note": "package energy of the whole socket(s), shared with other processes"},
            "peak_rss_bytes": peak_rss_bytes(),
            "real": {"gpu_energy": False, "gpu_power": False, "gpu_util": False,
                     "cpu_time": True, "rss": read_rss_bytes() is not None, "rapl": self.rapl.available},
        }


def make_sampler(device, nvml: bool = True, interval_s: float = 0.25, pynvml_module=None):
    """NvmlSampler for a CUDA device when NVML works, else CpuSampler with the reason why."""
    dev_type = getattr(device, "type", str(device))
    if not nvml:
        reason = "NVML sampling disabled (nvml=False)"
    elif dev_type != "cuda":
        reason = f"device is {dev_type}, not cuda"
    else:
        try:
            return NvmlSampler(interval_s=interval_s, pynvml_module=pynvml_module)
        except SamplerUnavailable as e:
            reason = str(e)
    return CpuSampler(interval_s=interval_s, reason=reason)
