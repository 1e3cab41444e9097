"""The Triton step (kernels/triton_adamw.py) against the reference: under the interpreter
(TRITON_INTERPRET=1, in a subprocess, small shapes: the interpreter is slow) and, where a GPU
exists, on CUDA directly. Its compiled PTX: tests/kernels/test_triton_ptx.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import kernels
from tests.helpers import ROOT
from tests.helpers.kernel_steps import (TOL_TRITON, assert_close, make_inputs, multi_inputs, run_backend, run_multi,
                                        skip_errors)


def _triton_importable():
    try:
        import triton  # noqa: F401
        return True
    except Exception:
        return False


_TRITON_SCRIPT = textwrap.dedent(r"""
    import itertools, json, sys, torch
    sys.path.insert(0, sys.argv[1])
    import kernels
    from tests.helpers.kernel_steps import (make_inputs, run_backend, OPTION_GRID, combo_kwargs,
                                            run_multi, multi_inputs)
    errs = []
    def cmp(out, ref, pen, pen_ref, what):
        for k in ("p", "m", "v", "fisher"):
            try:
                torch.testing.assert_close(out[k], ref[k], rtol=2e-4, atol=1e-5)
            except AssertionError as e:
                errs.append(f"{what} {k}: {str(e)[:300]}")
        if pen_ref is not None:
            try:
                torch.testing.assert_close(pen, pen_ref, rtol=2e-5, atol=1e-5)
            except AssertionError as e:
                errs.append(f"{what} penalty: {str(e)[:300]}")
    assert kernels.backend_for("cpu") in ("native", "reference")
    for gd in (torch.float32, torch.bfloat16):
        for n in (0, 1, 7, 1023, 1024, 1025, 2 * 1024 + 1):
            inp = make_inputs(n, gd, gd)
            ref, pr = run_backend("reference", inp, step_tensor=(n % 2 == 1))
            out, po = run_backend("triton", inp, step_tensor=(n % 2 == 1))
            cmp(out, ref, po, pr, f"n={n} g={gd}")
    n = 1031
    for combo in OPTION_GRID:
        if not combo[0] and combo[1] == torch.bfloat16:
            continue
        inp = make_inputs(n, torch.bfloat16 if combo[1] == torch.bfloat16 else torch.float32, combo[1])
        kw = combo_kwargs(*combo)
        ref, pr = run_backend("reference", inp, steps=2, **kw)
        out, po = run_backend("triton", inp, steps=2, **kw)
        cmp(out, ref, po, pr, f"combo={combo}")
    groups = [g for g in multi_inputs() if g["p"].numel() < 5000]
    outs, pen = run_multi("triton", groups)
    refs, pen_ref = run_multi("reference", groups)
    for i, (o, r) in enumerate(zip(outs, refs)):
        cmp(o, r, None, None, f"multi {i}")
    try:
        torch.testing.assert_close(pen, pen_ref, rtol=2e-5, atol=1e-5)
    except AssertionError as e:
        errs.append(f"multi penalty: {e}")
    # several tensors of the same kind: exercises the multi-tensor (address table) kernel
    specs = [(n, torch.float32, torch.float32, True) for n in (5, 1024, 1025, 3000, 7, 2048)]
    specs += [(n, torch.bfloat16, torch.bfloat16, False) for n in (1, 1500, 4096)]
    specs += [(n, torch.float32, None, False) for n in (33, 1030)]  # no anchor
    def run_multi2(backend, step_tensor, sel=None):
        sel = range(len(specs)) if sel is None else sel  # a one-tensor selection: the single kernel
        ins = [make_inputs(specs[j][0], specs[j][1], specs[j][2] or torch.float32, seed=j) for j in sel]
        sp = [specs[j] for j in sel]
        pen = torch.zeros(1)
        for s in (1, 2, 3):
            kernels.fused_adamw_multi(
                [t["p"] for t in ins], [t["g"] for t in ins], [t["m"] for t in ins],
                [t["v"] for t in ins], lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8,
                weight_decay=0.1, step=torch.tensor(s) if step_tensor else s,
                anchors=[t["anchor"] if q[2] is not None else None for t, q in zip(ins, sp)],
                kappas=[t["kappa"] if q[2] is not None else None for t, q in zip(ins, sp)],
                extra_grads=[t["extra_grad"] if j % 3 == 0 else None for j, t in zip(sel, ins)],
                damping=torch.tensor(0.9), fishers=[t["fisher"] if q[3] else None for t, q in zip(ins, sp)],
                fisher_scale=0.5, penalty_out=pen, backend=backend)
        return ins, pen
    for st in (False, True):
        outs, pen = run_multi2("triton", st)
        refs, pen_ref = run_multi2("reference", st)
        for j, (o, r) in enumerate(zip(outs, refs)):
            cmp(o, r, None, None, f"multi2 step_tensor={st} tensor {j}")
        cmp({k: torch.zeros(1) for k in ("p", "m", "v", "fisher")},
            {k: torch.zeros(1) for k in ("p", "m", "v", "fisher")}, pen, pen_ref, f"multi2 {st}")
    # the multi-tensor kernel against the single-tensor kernel, tensor by tensor: the same body
    # over the same blocks (full blocks unmasked, the tail masked), so the state agrees bitwise
    outs, _ = run_multi2("triton", True)
    for j, o in enumerate(outs):
        (one,), _ = run_multi2("triton", True, sel=[j])
        for k in ("p", "m", "v", "fisher"):
            if not torch.equal(o[k], one[k]):
                errs.append(f"multi vs single kernel, tensor {j} {k}: not bitwise equal")
    from tests.helpers.kernel_steps import skip_errors
    errs += skip_errors("triton", gdtype=torch.bfloat16, step_tensor=True) + skip_errors("triton")
    from kernels import triton_adamw
    assert len(triton_adamw._TABLE_CACHE) > 0, "the multi-tensor kernel did not run"
    print("RESULT" + json.dumps(errs))
""")


@pytest.mark.skipif(not _triton_importable(), reason="triton is not importable here")
def test_triton_interpreter_vs_reference():
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("LADDER_KERNEL", None)
    proc = subprocess.run([sys.executable, "-c", _TRITON_SCRIPT, str(ROOT)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    if proc.returncode != 0 or not lines:
        # an environment that cannot run the interpreter at all (no driver stub, numpy mismatch)
        # skips; any other failure (a wrong result, a kernel error) fails
        # (an InterpreterError is a kernel bug, not a missing environment)
        cannot_run = "InterpreterError" not in proc.stderr and (
            "0 active drivers" in proc.stderr or
            ("interpret" in proc.stderr.lower() and "not supported" in proc.stderr))
        if cannot_run:
            pytest.skip(f"the Triton interpreter cannot run here: {proc.stderr[-500:]}")
        pytest.fail(f"triton subprocess failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
    errs = json.loads(lines[-1][len("RESULT"):])
    assert not errs, "\n".join(errs[:10])


_NO_TRITON_SCRIPT = textwrap.dedent(r"""
    import json, sys, warnings
    sys.modules["triton"] = None  # `import triton` now raises, as where it is not installed
    sys.path.insert(0, sys.argv[1])
    import torch, kernels
    from kernels import triton_adamw
    out = {"importable": triton_adamw.is_importable(), "error": triton_adamw.import_error()}
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out["cuda_backend"] = kernels.backend_for("cuda")
    out["warnings"] = [str(w.message) for w in rec]
    p = torch.zeros(4)
    try:
        triton_adamw.fused_adamw_step(p, p.clone(), p.clone(), p.clone(), lr=1e-3, beta1=0.9,
                                      beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)
        out["launch"] = "no error"
    except RuntimeError as e:
        out["launch"] = str(e)
    print("RESULT" + json.dumps(out))
""")


def test_module_imports_and_refuses_clearly_without_triton():
    """Triton is optional: without it kernels.triton_adamw imports, says why it cannot run, CUDA
    dispatch falls back to the reference with one warning, and a direct launch names the cause."""
    env = {k: v for k, v in os.environ.items() if k not in ("LADDER_KERNEL", "TRITON_INTERPRET")}
    proc = subprocess.run([sys.executable, "-c", _NO_TRITON_SCRIPT, str(ROOT)], env=env,
                          capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT"):])
    assert out["importable"] is False and out["error"].startswith("ModuleNotFoundError"), out
    assert out["cuda_backend"] == "reference", out
    assert len(out["warnings"]) == 1 and "Triton is not importable here" in out["warnings"][0], out
    assert out["launch"].startswith("triton backend: triton is not importable here (ModuleNotFoundError"), out


@pytest.mark.skipif(not torch.cuda.is_available() or not _triton_importable(),
                    reason="needs CUDA and triton")
@pytest.mark.parametrize("gdtype", [torch.float32, torch.bfloat16], ids=["g32", "gbf16"])
def test_triton_cuda_vs_reference(gdtype):
    for n in (1, 1023, 1025, 1 << 20):
        inp = {k: v.cuda() for k, v in make_inputs(n, gdtype, gdtype).items()}
        for st in (False, True):
            ref, pr = run_backend("reference", inp, step_tensor=st)
            out, po = run_backend("triton", inp, step_tensor=st)
            assert_close(out, ref, po, pr, TOL_TRITON, f"n={n} step_tensor={st}")
    assert kernels.backend_for("cuda") == "triton"


@pytest.mark.skipif(not torch.cuda.is_available() or not _triton_importable(),
                    reason="needs CUDA and triton")
def test_triton_cuda_multi_and_skip_vs_reference():
    groups = [{k: v.cuda() for k, v in g.items()} for g in multi_inputs()]
    outs, pen = run_multi("triton", groups)
    refs, pen_ref = run_multi("reference", groups)
    for i, (o, r) in enumerate(zip(outs, refs)):
        assert_close(o, r, None, None, TOL_TRITON, f"multi tensor {i}")
    torch.testing.assert_close(pen, pen_ref, **TOL_TRITON["penalty"])
    for gdtype in (torch.float32, torch.bfloat16):
        assert skip_errors("triton", gdtype=gdtype, step_tensor=True, device="cuda") == []
