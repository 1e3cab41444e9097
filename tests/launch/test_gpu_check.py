"""launch/gpu_check.py and launch/gpu_sections.py without a GPU: the no-CUDA exit, the budget,
the report rewritten after every section (a section that raises or is cut still leaves the earlier
ones), --quick, and the CUDA-only parts' bookkeeping with CUDA mocked."""
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from launch import gpu_check as gc
from launch import gpu_sections as gs

ROOT = Path(__file__).resolve().parents[2]


class FakeNVML:
    def __init__(self, energy_mj=(1000, 4000), fail_energy=False):
        self.readings = list(energy_mj)
        self.fail_energy = fail_energy

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, i):
        return "h0"

    def nvmlSystemGetDriverVersion(self):
        return b"580.159.04"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if self.fail_energy:
            raise RuntimeError("not supported")
        return self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]


class FakeClock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


# ---- no CUDA: one sentence ---------------------------------------------------------------------
def test_cpu_only_machine_gets_one_sentence():
    fake_torch = SimpleNamespace(__version__="2.13.0+cpu", version=SimpleNamespace(cuda=None),
                                 cuda=SimpleNamespace(is_available=lambda: False))
    env = gc.probe_environment(torch=fake_torch)
    msg = gc.cpu_only_message(env)
    assert msg.count(". ") == 0 and msg.endswith(".") and "\n" not in msg
    assert "CUDA GPU" in msg and "2.13.0+cpu" in msg
    assert gc.cpu_only_message({**env, "cuda_available": True}) is None
    no_torch = gc.cpu_only_message({"torch": None, "torch_error": "ModuleNotFoundError: torch",
                                    "cuda_available": False})
    assert "cannot import torch" in no_torch and "\n" not in no_torch


def test_the_script_exits_with_one_sentence_on_this_cpu_machine(tmp_path):
    """The real thing, as the device tool would start it: no CUDA here, so one line, exit 1,
    nothing written."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "launch/gpu_check.py", "--out-dir", str(out), "--work-dir",
                           str(tmp_path / "w")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "needs a CUDA GPU" in lines[0] and proc.stderr.strip() == ""
    assert not out.exists() and not (tmp_path / "w").exists()


# ---- budget and settings -----------------------------------------------------------------------
def test_budget_gives_each_section_the_smaller_of_its_budget_and_what_is_left():
    clock = FakeClock()
    b = gc.Budget(100, reserve_s=5, clock=clock)
    assert b.timeout_for(60, 10) == 60                      # 95 usable
    clock.t += 50                                           # 45 usable
    assert b.timeout_for(60, 10) == pytest.approx(45)       # cut to what is left
    assert b.timeout_for(60, 46) is None                    # its minimum does not fit: skipped
    clock.t += 44                                           # 1 usable
    assert b.timeout_for(60, 0) == pytest.approx(1)
    clock.t += 10                                           # past the end
    assert b.left() == pytest.approx(-4) and b.timeout_for(60, 0) is None


@pytest.mark.parametrize("quick", [False, True])
def test_the_minimums_fit_the_default_budget(quick):
    s = gc.settings_for(gc.parse_args(["--quick"] if quick else []))
    gpu_sections = [n for n in s.limits if n != "data"]  # data overlaps the others
    assert sum(s.limits[n][1] for n in gpu_sections) <= s.budget_s - gc.RESERVE_S
    for name, (budget_s, min_s) in s.limits.items():
        assert 0 <= min_s <= budget_s, name
    assert all(r.warmup + 2 <= r.steps for r in s.runs)  # steps left to time and count


def test_quick_is_a_two_minute_smoke_run():
    full, quick = gc.settings_for(gc.parse_args([])), gc.settings_for(gc.parse_args(["--quick"]))
    assert full.budget_s == 420 and quick.budget_s == 120
    assert [r.label for r in full.runs] == ["eager", "compiled"] and [r.label for r in quick.runs] == ["eager"]
    assert quick.runs[0].steps < full.runs[0].steps and quick.runs[0].batch < full.runs[0].batch
    assert set(quick.tests) < set(full.tests) and quick.tests == ("tests/kernels/test_triton_adamw.py::"
                                                                  "test_triton_cuda_multi_and_skip_vs_reference",)
    assert quick.vocabs == (32768,) and 2048 in full.vocabs  # the CUDA tests' tiny runs use vocab 2048
    assert quick.n_params < full.n_params and quick.depth == full.depth == 12
    assert quick.eval_tokens == 32768 and full.eval_tokens == 65536
    over = gc.settings_for(gc.parse_args(["--quick", "--budget-s", "200", "--steps", "7", "--batch", "4"]))
    assert over.budget_s == 200 and over.runs[0].steps == 7 and over.runs[0].batch == 4
    assert over.runs[0].warmup == 2  # a third of the steps at most: steps are left to time and count


def test_bad_flags_are_refused_by_name(capsys):
    assert gc.parse_args(["--skip", "tests,train-compiled"]).skip == {"tests", "train-compiled"}
    assert gc.parse_args([]).skip == set()
    for argv, message in ((["--skip", "tests,bench"], "unknown section(s) ['bench']"),
                          (["--depth", "0"], "expected a positive integer, got '0'")):
        with pytest.raises(SystemExit):
            gc.parse_args(argv)
        assert message in capsys.readouterr().err


# ---- the report, rewritten after every section -------------------------------------------------
def _check(tmp_path, total=100.0, clock=None):
    lines = []
    rep = {"date": "2026-12-04", "command": "python launch/gpu_check.py", "quick": False,
           "environment": {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11.0+cu130", "python": "3.12.3"}}
    check = gc.Check(tmp_path / "gpu-check-h100-2026-12-04.md", gc.Budget(total, clock=clock or time.monotonic), rep,
                     echo=lambda *a, **k: lines.append(a[0]))
    return check, lines


def _on_disk(check):
    return check.out_path.read_text(), json.loads(check.out_path.with_suffix(".json").read_text())


def test_a_section_that_raises_leaves_the_earlier_ones_and_the_run_goes_on(tmp_path):
    check, lines = _check(tmp_path)
    seen = []

    def first(timeout):
        seen.append(_on_disk(check)[1]["sections"][-1]["status"])  # written as running before it runs
        return {"status": "ok", "result": {"modules": 66, "failed": {}, "kernel_backend": "triton",
                                           "attention_backend": "sdpa"}}

    check.section("imports", first, (60, 10))
    check.section("tests", lambda t: 1 / 0, (60, 10))
    md, js = _on_disk(check)
    assert seen == ["running"]
    assert [(s["name"], s["status"]) for s in js["sections"]] == [("imports", "ok"), ("tests", "failed")]
    assert "ZeroDivisionError" in js["sections"][1]["note"] and "66 modules, 0 failed" in md
    assert "| tests | failed |" in md and "IN PROGRESS or cut short" in md
    check.section("bandwidth", lambda t: {"status": "ok", "result": {"copy_GBs": 3000.0, "rows": []}}, (60, 10))
    check.finish()
    md, js = _on_disk(check)
    assert js["finished"] and [s["status"] for s in js["sections"]] == ["ok", "failed", "ok"]
    assert ": complete;" in md
    assert len(lines) == 3 and all(ln.startswith("gpu-check ") for ln in lines)  # one progress line per section
    assert "imports" in lines[0] and "ok" in lines[0] and "failed" in lines[1] and "ZeroDivisionError" in lines[1]


def test_a_section_past_its_timeout_is_cut_and_keeps_what_it_wrote(tmp_path):
    """A child that writes a partial result, then hangs: stopped at its timeout, with the process it
    started; the result it wrote is in the report, and the section before it too."""
    check, _ = _check(tmp_path)
    check.section("imports", lambda t: {"status": "ok", "result": {"modules": 3, "failed": {}}}, (60, 1))
    result, grandchild_pid = tmp_path / "r.json", tmp_path / "pid"
    script = ("import json, subprocess, sys, time\n"
              f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              f"open({str(grandchild_pid)!r}, 'w').write(str(p.pid))\n"
              f"json.dump({{'copy_GBs': 2900.0, 'rows': [{{'case': 'device copy', 'GB/s': 2900.0}}]}}, "
              f"open({str(result)!r}, 'w'))\ntime.sleep(60)\n")
    t0 = time.monotonic()
    entry = check.section("bandwidth", lambda t: gc.Child([sys.executable, "-c", script], tmp_path / "b.log", result)
                          .finish(t), (2, 1))
    assert time.monotonic() - t0 < 20
    assert entry["status"] == "cut" and entry["result"]["copy_GBs"] == 2900.0 and "overran its 2 s" in entry["note"]
    md, js = _on_disk(check)
    assert [s["status"] for s in js["sections"]] == ["ok", "cut"] and "| device copy |" in md
    assert _gone(int(grandchild_pid.read_text()))  # the whole process group was stopped
    assert not gc._LIVE


def _gone(pid: int) -> bool:
    """Ended: no such process, or a zombie left for a reaper that does not reap."""
    for _ in range(50):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def test_a_failing_child_reports_its_error(tmp_path):
    result = tmp_path / "r.json"
    script = (f"import json; json.dump({{'error': 'RuntimeError: no rustbpe'}}, open({str(result)!r}, 'w')); "
              "raise SystemExit(1)")
    out = gc.Child([sys.executable, "-c", script], tmp_path / "x.log", result).finish(30)
    assert out["status"] == "failed" and out["rc"] == 1 and out["note"] == "RuntimeError: no rustbpe"


def test_a_section_whose_minimum_does_not_fit_is_skipped_and_says_so(tmp_path):
    clock = FakeClock()
    check, lines = _check(tmp_path, total=100, clock=clock)
    clock.t += 70  # 25 s usable after the reserve
    ran = []
    entry = check.section("train-compiled", lambda t: ran.append(t), (180, 90))
    assert not ran and entry["status"] == "skipped" and "needs at least 90 s and 25 s" in entry["note"]
    entry = check.section("train-eager", lambda t: ran.append(t) or {"status": "ok"}, (120, 20))
    assert ran == [pytest.approx(25)] and entry["timeout_s"] == pytest.approx(25)
    assert "skipped" in lines[0] and "needs at least 90 s" in lines[0]
    assert [s["status"] for s in _on_disk(check)[1]["sections"]] == ["skipped", "ok"]


def test_run_sections_on_cpu_with_only_the_import_section(tmp_path):
    """The driver end to end with the real import child (no GPU needed), every other section
    skipped by flag: the report names each, and the import smoke test finds every module."""
    check, lines = _check(tmp_path, total=300)
    s = gc.settings_for(gc.parse_args(["--skip", "tests,bandwidth,data,train-eager,train-compiled"]))
    gc.run_sections(check, s, tmp_path / "work", tmp_path / "cache")
    md, js = _on_disk(check)
    by = {x["name"]: x for x in js["sections"]}
    imp = by["imports"]
    assert imp["result"]["modules"] == len(gs.project_modules()), imp
    failed = imp["result"]["failed"]  # a module that cannot be imported fails the section, by name
    assert imp["status"] == ("failed" if failed else "ok") and all(m in imp["headline"] for m in failed)
    assert set(failed) <= set(gs.project_modules()) and all(": " in e for e in failed.values())
    assert [by[n]["status"] for n in ("tests", "bandwidth", "data", "train-eager", "train-compiled")] == ["skipped"] * 5
    assert len(lines) == 6 and not (tmp_path / "cache").exists()


def test_training_is_skipped_when_the_token_cache_failed(tmp_path, monkeypatch):
    check, lines = _check(tmp_path, total=300)
    s = gc.settings_for(gc.parse_args(["--quick", "--skip", "imports,tests,bandwidth"]))
    monkeypatch.setattr(gc, "section_argv", lambda section, pf, rf: [sys.executable, "-c",
                        f"import json; json.dump({{'error': 'ModuleNotFoundError: rustbpe'}}, open({str(rf)!r}, 'w')); "
                        "exit(1)"])
    gc.run_sections(check, s, tmp_path / "work", tmp_path / "cache")
    by = {x["name"]: x for x in _on_disk(check)[1]["sections"]}
    assert by["data"]["status"] == "failed" and by["data"]["note"] == "ModuleNotFoundError: rustbpe"
    assert by["train-eager"]["status"] == "skipped" and "needs the token cache" in by["train-eager"]["note"]
    assert by["train-compiled"]["note"] == "skipped: not part of --quick"


def _report():
    return {
        "date": "2026-12-04", "command": "python launch/gpu_check.py --out-dir $OUT", "quick": False, "finished": True,
        "budget_s": 420, "elapsed_s": 301.0,
        "environment": {"gpu": "NVIDIA H200", "torch": "2.11.0+cu130", "torch_cuda": "13.0", "python": "3.12.3",
                        "driver": "580.159.04", "energy_counter": True,
                        "packages": {"triton": "3.6.0", "rustbpe": None}},
        "sections": [
            {"name": "imports", "status": "ok", "seconds": 9.0, "result": {"modules": 66, "failed": {},
                                                                           "kernel_backend": "triton",
                                                                           "attention_backend": "sdpa"}},
            {"name": "tests", "status": "ok", "seconds": 60.0,
             "result": {"outcomes": {"t.py::a": "passed"}, "counts": {"passed": 1}, "summary": "1 passed in 50.1s"}},
            {"name": "bandwidth", "status": "failed", "note": "RuntimeError: boom", "log_tail": "Traceback\nboom",
             "result": {"kernel_backend": "triton", "copy_GBs": 3000.0, "rows": [
                 {"case": "nanochat d12 params, plain", "params": 135266304, "ms": 1.43, "GB/s": 2650.0,
                  "vs copy": 0.88,
                  "vs torch fused AdamW": 1.4}]}},
            {"name": "data", "status": "ok", "result": {"tokenizer_trainer": "tokenizers", "caches": [
                {"vocab": 32768, "tokenizer_trainer": "tokenizers", "train_tokens": 9000000, "val_tokens": 150000}]}},
            {"name": "train-eager", "status": "ok", "result": {
                "run": "eager", "depth": 12, "batch": 16, "steps": 25, "attention": "sdpa", "kernel": "triton",
                "tokens_per_s": 512000.0, "mfu": 0.41, "peak_gib": 30.5, "val_loss": 6.1, "j_per_token": 0.0012,
                "sync_zero": True, "host_syncs": {"zero": True, "lagged_steps_counted": 21, "steps_with_syncs": {},
                                                  "warmup_steps": {"1": 3, "2": 0, "3": 0}, "last_step": 40}}},
            {"name": "train-compiled", "status": "cut", "note": "overran its 180 s", "result": {"run": "compiled"}},
        ],
        "energy": [{"window": "train-eager", "seconds": 40.0, "joules": 20000.0, "watts": 500.0}],
    }


def test_report_has_every_section_and_the_numbers():
    rep = _report()
    for s in rep["sections"]:
        s["headline"] = gc.headline(s["name"], s["result"])
    text = gc.render_report(rep)
    for heading in ("# GPU check: NVIDIA H200, 2026-12-04", "## Sections", "## Environment", "## Imports",
                    "## CUDA tests",
                    "## Token caches", "## Fused optimizer step: bandwidth (kernel backend triton)",
                    "## Training (nanochat shape", "## Energy per section (NVML)", "## Failures",
                    "### bandwidth: failed"):
        assert heading in text, heading
    assert ("What ran: tokenizer trainer tokenizers, attention backend sdpa, kernel backend triton, gpu NVIDIA H200, "
            "driver 580.159.04, python 3.12.3, torch 2.11.0+cu130, cuda 13.0, triton 3.6.0.") in text
    assert "| nanochat d12 params, plain | 135266304 | 1.43 | 2,650 | 0.88 | 1.4 |" in text
    assert "| eager | 12 | 16 | 25 | sdpa | triton | 512,000 | 0.41 | 30.5 | 6.1 | 0.0012 | yes |" in text
    assert "host syncs per lagged step: 0 (21 steps)" in text
    assert "| 32768 | tokenizers | 9000000 | 150000 |" in text and "1 passed in 50.1s" in text
    assert "| train-compiled | cut |" in text and ": complete;" in text
    assert "stopped in setup, 0 steps started" in text


def test_what_ran_falls_back_to_what_would_run():
    rep = {"environment": {}, "sections": [{"name": "imports", "result": {"attention_backend": "sdpa",
                                                                          "kernel_backend": "triton"}}]}
    ran = gc.what_ran(rep)
    assert ran["attention_backend"] == "sdpa (would run)" and ran["kernel_backend"] == "triton (would run)"
    assert ran["tokenizer_trainer"] is None


# ---- environment and energy --------------------------------------------------------------------
def test_nvml_status_reports_driver_and_energy_counter():
    assert gc.nvml_status(FakeNVML()) == {"nvml": "ok", "driver": "580.159.04", "energy_counter": True}
    assert gc.nvml_status(FakeNVML(fail_energy=True))["energy_counter"] is False
    broken = SimpleNamespace(nvmlInit=lambda: (_ for _ in ()).throw(OSError("no libnvidia-ml")))
    st = gc.nvml_status(broken)
    assert st["energy_counter"] is False and "no libnvidia-ml" in st["nvml"]


def test_package_versions_name_missing_ones_none():
    def version(dist):
        if dist == "rustbpe":
            raise gc.importlib.metadata.PackageNotFoundError(dist)
        return "1.0"

    v = gc.package_versions(version)
    assert v["rustbpe"] is None and v["torch"] == "1.0" and set(v) == set(gc.PACKAGES)


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


# ---- pytest output -----------------------------------------------------------------------------
def test_pytest_log_is_read_also_when_cut_short():
    done = ("tests/k.py::test_a[gdtype0] PASSED                                  [ 25%]\n"
            "tests/k.py::test_b FAILED                                          [ 50%]\n"
            "tests/g.py::test_c[kernel-off] SKIPPED (needs CUDA)                [ 75%]\n"
            "=========================== short test summary info ============================\n"
            "==================== 1 failed, 1 passed, 1 skipped in 31.20s ====================\n")
    p = gc.parse_pytest_log(done)
    assert p["outcomes"] == {"tests/k.py::test_a[gdtype0]": "passed", "tests/k.py::test_b": "failed",
                             "tests/g.py::test_c[kernel-off]": "skipped"}
    assert p["summary"] == "1 failed, 1 passed, 1 skipped in 31.20s" and p["counts"]["passed"] == 1
    cut = gc.parse_pytest_log(done.split("tests/g.py")[0])
    assert cut["summary"] is None and len(cut["outcomes"]) == 2


def test_cuda_tests_name_existing_test_functions():
    """The tests section runs these by node id: each must be a test function defined in that file."""
    for spec in gc.CUDA_TESTS:
        path, name = spec.split("::")
        assert f"def {name.split('[')[0]}(" in (ROOT / path).read_text(), spec


# ---- the sections' helpers ---------------------------------------------------------------------
def test_import_section_lists_the_modules_test_imports_checks():
    from tests import test_imports

    assert gs.project_modules() == list(test_imports.module_files())
    assert "launch.gpu_sections" in gs.project_modules() and "engine.train.guard" in gs.project_modules()


def test_tokenizer_trainer_is_read_from_the_manifest_else_unknown():
    assert gs.tokenizer_trainer({"tokenizer_trainer": "tokenizers"}) == "tokenizers"
    assert gs.tokenizer_trainer({}, SimpleNamespace(tokenizer_trainer="rustbpe")) == "rustbpe"
    assert gs.tokenizer_trainer({"vocab_size": 2048}) == "unknown" and gs.tokenizer_trainer(None) == "unknown"
    row = gs.cache_row(32768, {"tokens": {"train": 10, "val": 2}, "source_info": {"python": "3.12.3"},
                               "build_seconds": {"total": 41.5}, "cache_key": "builtin-ab-v32768"}, 42.0)
    assert row == {"vocab": 32768, "tokenizer_trainer": "unknown", "train_tokens": 10, "val_tokens": 2,
                   "python": "3.12.3", "built_s": 41.5, "seconds": 42.0, "directory": "builtin-ab-v32768"}


def test_data_section_reports_the_trainer_of_each_cache(monkeypatch, tmp_path):
    import engine.data

    def prepare(source, vocab, cache_dir, progress):
        return SimpleNamespace(manifest={"tokens": {"train": vocab, "val": 1},
                                         **({"tokenizer_trainer": "tokenizers"} if vocab > 4096 else {})})

    monkeypatch.setattr(engine.data, "prepare_data", prepare)
    emitted = []
    res = gs.section_data({"source": "builtin", "vocabs": [2048, 32768], "cache_dir": str(tmp_path)},
                          lambda r: emitted.append(json.loads(json.dumps(r))))
    assert [c["tokenizer_trainer"] for c in res["caches"]] == ["unknown", "tokenizers"]
    assert res["tokenizer_trainer"] == "tokenizers, unknown" and len(emitted[0]["caches"]) == 1  # written per cache


class _FakeCuda:
    """torch.cuda's sync debug mode: `sync()` warns as torch does while the mode is 1."""

    def __init__(self):
        self.mode = 0

    def set_mode(self, m):
        self.mode = m

    def get_mode(self):
        return self.mode

    def sync(self):
        if self.mode:
            warnings.warn("called a synchronizing CUDA operation", UserWarning)


def test_step_sync_counter_attributes_syncs_to_steps_and_excludes_the_lagged_read():
    cuda = _FakeCuda()

    class Values:
        def read(self):
            cuda.sync()  # the intended wait: not counted
            return [1.0]

    class Trainer:
        def train_step(self, step):
            Values().read()
            if step in (4, 9):
                cuda.sync()
            if step == 10:
                cuda.sync()
                cuda.sync()

    orig_step, orig_read = Trainer.train_step, Values.read
    ticks = iter(range(100))
    seen = []
    counter = gs.StepSyncCounter(cuda.set_mode, cuda.get_mode, clock=lambda: float(next(ticks)),
                                 on_step=lambda tr, s: seen.append(s))
    with counter.install(Trainer, Values):
        cuda.sync()  # setup: outside any step, not counted
        for s in range(1, 11):
            Trainer().train_step(s)
    assert Trainer.train_step is orig_step and Values.read is orig_read and cuda.mode == 0
    assert counter.syncs == {s: (1 if s in (4, 9) else 2 if s == 10 else 0) for s in range(1, 11)}
    assert seen == list(range(1, 11)) and counter.times[1] < counter.times[10]
    v = gs.summarize_syncs(counter.syncs, total_steps=10, warmup=3)
    assert v["zero"] is False and v["steps_with_syncs"] == {4: 1, 9: 1} and v["lagged_steps_counted"] == 6
    assert v["last_step"] == 2 and v["max_per_lagged_step"] == 1 and set(v["warmup_steps"]) == {1, 2, 3}
    clean = gs.summarize_syncs({s: (5 if s == 1 else 0) for s in range(1, 11)}, total_steps=10, warmup=1)
    assert clean["zero"] is True and clean["warmup_steps"] == {1: 5}
    assert gs.summarize_syncs({1: 0}, total_steps=10, warmup=3)["zero"] is None
    as_read = json.loads(json.dumps({"host_syncs": v, "tokens_per_s": 1000.0, "phase": "done"}))  # the parent's view
    assert "host syncs per lagged step: NOT zero at steps [4, 9] (6 steps)" in gc.headline("train-eager", as_read)


def test_tokens_per_s_is_steady_state_from_step_entry_times():
    times = {1: 0.0, 2: 30.0, 3: 30.5, 4: 31.0, 5: 31.5, 6: 32.0}  # step 1 compiles
    tok_s, n = gs.tokens_per_s(times, 1000, warmup=2)
    assert n == 3 and tok_s == pytest.approx(3 * 1000 / 1.5)
    assert gs.tokens_per_s({1: 0.0, 2: 1.0}, 1000, warmup=2) == (None, 0)


def test_child_entry_point_writes_the_error_beside_the_result(tmp_path):
    params, result = tmp_path / "p.json", tmp_path / "r.json"
    params.write_text(json.dumps({"n_params": 16, "reps": 1, "depth": 1}))
    proc = subprocess.run([sys.executable, "-m", "launch.gpu_sections", "bandwidth", "--params", str(params),
                           "--result", str(result)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 1
    assert "error" in json.loads(result.read_text())  # no CUDA here: the error, not a silent pass


def test_make_gpu_check_installs_and_builds_nothing():
    """`make -n` prints the one command it would run; run standalone, not as a sub-make of `make test`
    (whose MAKEFLAGS would add "Entering directory" lines)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}

    def dry_run(*args):
        out = subprocess.run(["make", "--no-print-directory", "-n", *args, "PY=/nonexistent/python"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 0, out.stderr
        return " ".join(out.stdout.split())

    assert dry_run("gpu-check", "OUT=/tmp/device-out") == "python3 launch/gpu_check.py --out-dir /tmp/device-out"
    assert dry_run("gpu-check-quick") == "python3 launch/gpu_check.py --quick --out-dir docs/results"


def test_train_section_counts_per_step_on_the_real_trainer_on_cpu(tmp_path, monkeypatch):
    """section_train's hooks on the real RungTrainer (a tiny CPU run on the lagged host sync, which
    runs on CPU too): run.json read at step 1, a sync warning made inside step 5 charged to step 5,
    the entry clock of every step kept, the result written as it goes."""
    import random

    import engine.train.trainer as trainer

    rng = random.Random(0)
    words = ["def", "return", "self", "value", "import", "class", "for", "in", "range", "print", "x", "y"]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(60)) for _ in range(400)))
    orig = trainer.lr_multiplier

    def lr_multiplier(steps_done, *a, **k):  # inside train_step: stands in for a synchronising call
        if steps_done == 4:
            warnings.warn("called a synchronizing CUDA operation", UserWarning)
        return orig(steps_done, *a, **k)

    monkeypatch.setattr(trainer, "lr_multiplier", lr_multiplier)
    emitted = []
    res = gs.section_train({"label": "eager", "compile": False, "steps": 8, "batch": 4, "warmup": 2, "depth": 1,
                            "eval_tokens": 256, "data": f"text:{corpus}", "cache_dir": str(tmp_path / "cache"),
                            "out": str(tmp_path / "run"), "device": "cpu", "preset": "cpu-tiny", "seq_len": 64},
                           lambda r: emitted.append(json.loads(json.dumps(r))))
    assert res["phase"] == "done" and res["attention"] == "sdpa" and res["kernel"] in ("native", "reference")
    assert res["host_sync"] == "lagged" and res["tokens_per_step"] == 4 * 64
    assert res["syncs_per_step"] == {str(s): (1 if s == 5 else 0) for s in range(1, 9)}
    assert res["host_syncs"]["zero"] is False and res["host_syncs"]["steps_with_syncs"] == {5: 1}
    assert res["host_syncs"]["lagged_steps_counted"] == 5  # steps 3..7: after warm-up, before the last
    assert res["tokens_per_s"] > 0 and res["steps_timed"] == 5 and res["mfu"] is None  # no peak for a CPU
    assert emitted[0]["phase"] == "setup" and any(e.get("steps_started") == 5 for e in emitted)
    assert (tmp_path / "run" / "final.json").exists()
