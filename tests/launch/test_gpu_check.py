"""launch/gpu_check.py's logic that needs no GPU: environment probing, the CPU-only exit, energy
windows, the report."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from launch import gpu_check as gc


class FakeNVML:
    def __init__(self, energy_mj=(1000, 4000), fail_energy=False):
        self.readings = list(energy_mj)
        self.fail_energy = fail_energy

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, i):
        return "h0"

    def nvmlSystemGetDriverVersion(self):
        return b"570.86"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if self.fail_energy:
            raise RuntimeError("not supported")
        return self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]


def test_missing_dependencies_name_the_install_command():
    missing = gc.missing_dependencies(find_spec=lambda m: None if m == "rustbpe" else object())
    assert [m for m, _ in missing] == ["rustbpe"]
    assert "-m pip install rustbpe" in missing[0][1] and "--no-index --find-links" in missing[0][1]
    assert gc.missing_dependencies(find_spec=lambda m: object()) == []


def test_cpu_only_machine_gets_one_sentence():
    fake_torch = SimpleNamespace(__version__="2.13.0+cpu", version=SimpleNamespace(cuda=None),
                                 cuda=SimpleNamespace(is_available=lambda: False))
    env = gc.probe_environment(torch=fake_torch)
    msg = gc.cpu_only_message(env)
    assert msg.count(".") >= 1 and "\n" not in msg and "CUDA GPU" in msg and "2.13.0+cpu" in msg
    assert gc.cpu_only_message({**env, "cuda_available": True}) is None


def test_main_exits_early_without_cuda(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(gc, "probe_environment", lambda: {"cuda_available": False, "torch": "x", "torch_cuda": None})
    assert gc.main(["--out-dir", str(tmp_path)]) == 1
    assert "needs a CUDA GPU" in capsys.readouterr().out and not list(tmp_path.iterdir())


def test_nvml_status_reports_driver_and_energy_counter():
    assert gc.nvml_status(FakeNVML()) == {"nvml": "ok", "driver": "570.86", "energy_counter": True}
    assert gc.nvml_status(FakeNVML(fail_energy=True))["energy_counter"] is False
    broken = SimpleNamespace(nvmlInit=lambda: (_ for _ in ()).throw(OSError("no libnvidia-ml")))
    st = gc.nvml_status(broken)
    assert st["energy_counter"] is False and "no libnvidia-ml" in st["nvml"]


def test_energy_window_is_the_counter_difference():
    meter = gc.EnergyMeter(FakeNVML(energy_mj=(1000, 1000, 4000)))  # one read at init, then the window
    synced = []
    with meter.window("w", sync=lambda: synced.append(1)):
        pass
    (w,) = meter.windows
    assert w["window"] == "w" and w["joules"] == pytest.approx(3.0) and len(synced) == 2
    none = gc.EnergyMeter(FakeNVML(fail_energy=True))
    with none.window("x"):
        pass
    assert none.windows[0]["joules"] is None and none.windows[0]["watts"] is None


def test_report_path_names_device_and_date(tmp_path):
    p = gc.report_path(tmp_path, "NVIDIA H100 80GB HBM3", "2026-12-01")
    assert p == tmp_path / "gpu-check-h100-80gb-hbm3-2026-12-01.md"


def _results():
    return {
        "environment": {"gpu": "NVIDIA H200", "torch": "2.13.0", "flash_attn": "FA3", "energy_counter": True},
        "date": "2026-12-01", "command": "make gpu-check", "wall_s": 301.0,
        "tests": {"returncode": 0, "summary": "4 passed in 30s"},
        "bandwidth": [{"case": "1 tensor, plain", "params": 67108864, "ms": 0.71, "GB/s": 2650.0, "vs copy": 0.88,
                       "vs torch fused AdamW": 1.4}],
        "training": [{"run": "eager", "depth": 12, "attention": "fa3", "kernel": "triton", "steps": 40,
                      "tokens/s": 512000.0, "MFU": 0.41, "peak GiB": 30.5, "val loss": 6.1,
                      "resumed from": 20, "resumed val loss": 6.1}],
        "energy": [{"window": "training", "seconds": 120.0, "joules": 60000.0, "watts": 500.0}],
        "errors": {"bandwidth": "RuntimeError: boom"},
    }


def test_report_has_every_section_and_the_numbers():
    text = gc.render_report(_results())
    for heading in ("# GPU check: NVIDIA H200, 2026-12-01", "## Environment", "## CUDA tests",
                    "## Fused optimizer step: bandwidth", "## Training (nanochat shape, bf16)",
                    "## Energy per window (NVML)", "## Errors"):
        assert heading in text, heading
    assert "passed (exit 0): 4 passed in 30s" in text
    assert "| 1 tensor, plain | 67108864 | 0.71 | 2.65e+03 | 0.88 | 1.4 |" in text
    assert "| eager | 12 | fa3 | triton | 40 | 5.12e+05 | 0.41 | 30.5 | 6.1 | 20 | 6.1 |" in text
    assert "RuntimeError: boom" in text


def test_report_marks_failed_tests_and_missing_sections():
    res = {**_results(), "tests": {"returncode": 1, "summary": "1 failed"}, "training": None, "errors": {}}
    text = gc.render_report(res)
    assert "FAILED (exit 1): 1 failed" in text and "(none)" in text and "## Errors" not in text


def test_tokens_per_s_is_the_median_after_warmup(tmp_path):
    m = tmp_path / "metrics.jsonl"
    rows = [{"step": 0, "val_loss": 9.0}] + [{"step": s, "dt": 10.0 if s <= 3 else 0.5 + 0.1 * (s % 2)} for s in range(1, 11)]
    m.write_text("\n".join(json.dumps(r) for r in rows))
    assert gc._tokens_per_s(m, 1000) == pytest.approx(1000 / 0.5)


def test_drop_final_step_leaves_the_middle_checkpoint(tmp_path):
    (tmp_path / "final.json").write_text("{}")
    for s in ("step_000000010", "step_000000020"):
        (tmp_path / "ckpt" / s).mkdir(parents=True)
    gc._drop_final_step(tmp_path)
    assert not (tmp_path / "final.json").exists()
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["step_000000010"]


def test_bad_flags_are_refused_by_name(capsys):
    assert gc.parse_args(["--skip", "tests,training"]).skip == {"tests", "training"}
    assert gc.parse_args([]).skip == set()
    for argv, message in ((["--skip", "tests,bench"], "unknown section(s) ['bench']"),
                          (["--depth", "0"], "expected a positive integer, got '0'")):
        with pytest.raises(SystemExit):
            gc.parse_args(argv)
        assert message in capsys.readouterr().err


def test_cuda_tests_name_existing_test_functions():
    """make gpu-check runs these by path: each must be a test function defined in that file."""
    root = Path(__file__).resolve().parents[2]
    for spec in gc.CUDA_TESTS:
        path, name = spec.split("::")
        assert f"def {name}(" in (root / path).read_text(), spec
