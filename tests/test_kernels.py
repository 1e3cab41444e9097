"""Fused optimizer-step kernels (kernels/): every backend against the PyTorch reference.

Native tests need kernels/_native/libladder_kernels.so: `make test` builds it first (the main
Makefile's `test` target depends on `native`); by hand run `make native` or
`python setup.py build_ext --inplace`. Without it they skip with that reason.
Triton tests run in a subprocess with TRITON_INTERPRET=1 (small shapes: the interpreter is slow)
and, where a GPU exists, on CUDA directly.
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import kernels
from kernels import native, reference

ROOT = Path(__file__).resolve().parents[1]

# Tolerances per gradient dtype (bf16 inputs are widened exactly to fp32, so the arithmetic is
# the same; differences come from FMA contraction, lerp form and summation order).
#   state = p, m, v, fisher;  penalty = the accumulated 1/2 sum kappa d^2 (relative).
TOL = {
    torch.float32: {"state": dict(rtol=1e-5, atol=2e-6), "penalty": dict(rtol=2e-5, atol=1e-5)},
    torch.bfloat16: {"state": dict(rtol=1e-5, atol=2e-6), "penalty": dict(rtol=2e-5, atol=1e-5)},
}
# Triton with a tensor `step` computes the bias corrections in fp32 on the device (like torch's
# capturable AdamW): up to ~1e-4 relative on the first steps with beta2=0.999.
TOL_TRITON = {"state": dict(rtol=2e-4, atol=1e-5), "penalty": dict(rtol=2e-5, atol=1e-5)}
# The plain path against torch.optim.AdamW itself.
TOL_TORCH = dict(rtol=1e-5, atol=1e-6)

HP = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1)

needs_native = pytest.mark.skipif(
    not native.is_available(),
    reason=f"native kernels not built ({native.load_error()}): run `make native`")


def make_inputs(n, gdtype=torch.float32, kdtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed + n)
    r = lambda: torch.randn(n, generator=gen)  # noqa: E731
    return dict(
        p=r(), g=r().to(gdtype), m=r() * 0.1, v=torch.rand(n, generator=gen) * 0.01,
        anchor=r(), kappa=torch.rand(n, generator=gen).to(kdtype), extra_grad=r() * 0.5,
        fisher=torch.rand(n, generator=gen),
    )


def run_backend(backend, inp, *, steps=3, anchor=True, extra=True, fisher=True, damping=0.7,
                step_tensor=False, penalty=True, hp=HP):
    t = {k: v.clone() for k, v in inp.items()}
    dev = t["p"].device  # penalty_out and a tensor step must live with the parameters (CUDA too)
    pen = torch.zeros(1, device=dev) if penalty else None
    for s in range(1, steps + 1):
        kernels.fused_adamw_step(
            t["p"], t["g"], t["m"], t["v"], **hp,
            step=torch.tensor(s, device=dev) if step_tensor else s,
            anchor=t["anchor"] if anchor else None, kappa=t["kappa"] if anchor else None,
            extra_grad=t["extra_grad"] if extra else None,
            damping=damping,
            fisher=t["fisher"] if fisher else None, fisher_scale=0.5, penalty_out=pen,
            backend=backend)
    return t, pen


def assert_close(out, ref, pen, pen_ref, tol, what=""):
    for k in ("p", "m", "v", "fisher"):
        torch.testing.assert_close(out[k], ref[k], **tol["state"], msg=lambda m: f"{what} {k}: {m}")
    if pen_ref is not None:
        torch.testing.assert_close(pen, pen_ref, **tol["penalty"], msg=lambda m: f"{what} penalty: {m}")


# ----------------------------------------------------------------------------------------------
# Reference vs torch.optim.AdamW (the plain path, several steps)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["reference", pytest.param("native", marks=needs_native)])
@pytest.mark.parametrize("step_tensor", [False, True])
def test_plain_path_matches_torch_adamw(backend, step_tensor):
    n = 4099
    gen = torch.Generator().manual_seed(1)
    p0 = torch.randn(n, generator=gen)
    grads = [torch.randn(n, generator=gen) for _ in range(6)]
    tp = torch.nn.Parameter(p0.clone())
    opt = torch.optim.AdamW([tp], lr=HP["lr"], betas=(HP["beta1"], HP["beta2"]), eps=HP["eps"],
                            weight_decay=HP["weight_decay"])
    p, m, v = p0.clone(), torch.zeros(n), torch.zeros(n)
    for s, g in enumerate(grads, start=1):
        tp.grad = g.clone()
        opt.step()
        kernels.fused_adamw_step(p, g, m, v, **HP, step=torch.tensor(s) if step_tensor else s,
                                 backend=backend)
        torch.testing.assert_close(p, tp.detach(), **TOL_TORCH, msg=lambda x: f"step {s}: {x}")
    st = opt.state[tp]
    torch.testing.assert_close(m, st["exp_avg"], **TOL_TORCH)
    torch.testing.assert_close(v, st["exp_avg_sq"], **TOL_TORCH)


def test_reference_semantics_by_hand():
    """One step written out with the formulas of the brief, in float64."""
    inp = make_inputs(257)
    out, pen = run_backend("reference", inp, steps=1, damping=0.7)
    d = {k: v.double() for k, v in inp.items()}
    lr, b1, b2, eps, wd = (HP[k] for k in ("lr", "beta1", "beta2", "eps", "weight_decay"))
    fisher = d["fisher"] + 0.5 * d["g"] ** 2
    dd = d["p"] - d["anchor"]
    penalty = 0.5 * (d["kappa"] * dd * dd).sum()
    gp = 0.7 * (d["g"] + d["kappa"] * dd + d["extra_grad"])
    p = d["p"] * (1 - lr * wd)
    m = b1 * d["m"] + (1 - b1) * gp
    v = b2 * d["v"] + (1 - b2) * gp ** 2
    p = p - (lr / (1 - b1)) * m / (v.sqrt() / (1 - b2) ** 0.5 + eps)
    for k, want in (("p", p), ("m", m), ("v", v), ("fisher", fisher)):
        torch.testing.assert_close(out[k].double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pen.double(), penalty.reshape(1), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Native vs reference
# ----------------------------------------------------------------------------------------------
CHUNK = 1 << 15  # native chunk size
SIZES = [0, 1, 7, 1023, 1025, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 3]


@needs_native
@pytest.mark.parametrize("gdtype", [torch.float32, torch.bfloat16], ids=["g32", "gbf16"])
@pytest.mark.parametrize("n", SIZES)
def test_native_sizes(n, gdtype):
    inp = make_inputs(n, gdtype, kdtype=gdtype)
    ref, pen_ref = run_backend("reference", inp)
    out, pen = run_backend("native", inp)
    assert_close(out, ref, pen, pen_ref, TOL[gdtype], f"n={n}")


OPTION_GRID = list(itertools.product(
    [False, True],            # anchor + kappa
    [torch.float32, torch.bfloat16],  # kappa dtype
    [False, True],            # extra_grad
    [False, True],            # fisher
    [1.0, 0.7, "tensor"],     # damping
    [False, True],            # step as tensor
    [False, True],            # penalty_out
))


def _combo_kwargs(anchor, kdtype, extra, fisher, damping, step_tensor, penalty):
    return dict(anchor=anchor, extra=extra, fisher=fisher, step_tensor=step_tensor,
                damping=torch.tensor(0.6) if damping == "tensor" else damping,
                penalty=penalty)


@needs_native
@pytest.mark.parametrize("gdtype", [torch.float32, torch.bfloat16], ids=["g32", "gbf16"])
def test_native_every_option_combination(gdtype):
    # odd; small so the reference's torch ops stay single-threaded (waking OpenMP threads on a
    # shared 2-core machine costs ~10 ms per op). Chunk boundaries: test_native_sizes.
    n = 4099
    for combo in OPTION_GRID:
        anchor, kdtype = combo[0], combo[1]
        if not anchor and kdtype == torch.bfloat16:
            continue
        inp = make_inputs(n, gdtype, kdtype)
        kw = _combo_kwargs(*combo)
        ref, pen_ref = run_backend("reference", inp, steps=2, **kw)
        out, pen = run_backend("native", inp, steps=2, **kw)
        assert_close(out, ref, pen, pen_ref, TOL[gdtype], f"combo={combo}")


@needs_native
def test_native_large():
    n = 1 << 20
    inp = make_inputs(n, torch.bfloat16, torch.bfloat16)
    ref, pen_ref = run_backend("reference", inp, steps=2)
    out, pen = run_backend("native", inp, steps=2)
    assert_close(out, ref, pen, pen_ref, TOL[torch.bfloat16], "1M")


def _multi_inputs():
    sizes = [5, CHUNK + 3, 0, 1000, 70001]
    groups = []
    for i, n in enumerate(sizes):
        gd = torch.bfloat16 if i % 2 else torch.float32
        groups.append(make_inputs(n, gd, torch.bfloat16 if i == 3 else torch.float32, seed=i))
    return groups


def _run_multi(backend, groups, steps=2):
    ts = [{k: v.clone() for k, v in g.items()} for g in groups]
    dev = ts[0]["p"].device
    pen = torch.zeros(1, device=dev)
    for s in range(1, steps + 1):
        kernels.fused_adamw_multi(
            [t["p"] for t in ts], [t["g"] for t in ts], [t["m"] for t in ts], [t["v"] for t in ts],
            **HP, step=s,
            anchors=[t["anchor"] if i != 1 else None for i, t in enumerate(ts)],
            kappas=[t["kappa"] if i != 1 else None for i, t in enumerate(ts)],
            extra_grads=[t["extra_grad"] if i in (0, 3) else None for i, t in enumerate(ts)],
            damping=torch.tensor(0.8, device=dev),
            fishers=[t["fisher"] if i != 4 else None for i, t in enumerate(ts)],
            fisher_scale=0.25, penalty_out=pen, backend=backend)
    return ts, pen


@pytest.mark.parametrize("backend", ["reference", pytest.param("native", marks=needs_native)])
def test_multi_matches_per_tensor_reference(backend):
    groups = _multi_inputs()
    outs, pen = _run_multi(backend, groups)
    # the per-tensor reference, tensor by tensor
    pen_ref = torch.zeros(1)
    for i, g in enumerate(groups):
        t = {k: v.clone() for k, v in g.items()}
        for s in (1, 2):
            reference.fused_adamw_step(
                t["p"], t["g"], t["m"], t["v"], **HP, step=s,
                anchor=t["anchor"] if i != 1 else None, kappa=t["kappa"] if i != 1 else None,
                extra_grad=t["extra_grad"] if i in (0, 3) else None, damping=torch.tensor(0.8),
                fisher=t["fisher"] if i != 4 else None, fisher_scale=0.25, penalty_out=pen_ref)
        assert_close(outs[i], t, None, None, TOL[torch.bfloat16], f"tensor {i}")
    torch.testing.assert_close(pen, pen_ref, **TOL[torch.float32]["penalty"])


def test_multi_empty_and_all_none_lists():
    kernels.fused_adamw_multi([], [], [], [], **HP, step=1)
    inp = make_inputs(10)
    kernels.fused_adamw_multi([inp["p"]], [inp["g"]], [inp["m"]], [inp["v"]], **HP, step=1,
                              anchors=[None], kappas=[None], extra_grads=[None], fishers=[None])


def test_requires_grad_params_are_updated_in_place():
    p = torch.nn.Parameter(torch.randn(100))
    before = p.detach().clone()
    version = p._version
    kernels.fused_adamw_step(p, torch.randn(100), torch.zeros(100), torch.zeros(100), **HP, step=1)
    assert not torch.equal(p.detach(), before) and p._version > version


# ----------------------------------------------------------------------------------------------
# found_inf: a device-side skip flag (the trainer's non-finite guard without a host sync)
# ----------------------------------------------------------------------------------------------
def run_with_flags(backend, inp, flags, *, multi=False, step_tensor=False):
    """Steps with found_inf = flags[i]; a skipped step does not advance the step count (the
    trainer's bookkeeping). Returns the final state and penalty."""
    t = {k: v.clone() for k, v in inp.items()}
    dev = t["p"].device
    pen = torch.zeros(1, device=dev)
    count = 0
    for flag in flags:
        count += 1
        kw = dict(**HP, step=torch.tensor(count, device=dev) if step_tensor else count, damping=0.7,
                  fisher_scale=0.5, penalty_out=pen, backend=backend,
                  found_inf=None if flag is None else torch.tensor(float(flag), device=dev))
        if multi:
            kernels.fused_adamw_multi([t["p"]], [t["g"]], [t["m"]], [t["v"]], anchors=[t["anchor"]],
                                      kappas=[t["kappa"]], extra_grads=[t["extra_grad"]],
                                      fishers=[t["fisher"]], **kw)
        else:
            kernels.fused_adamw_step(t["p"], t["g"], t["m"], t["v"], anchor=t["anchor"], kappa=t["kappa"],
                                     extra_grad=t["extra_grad"], fisher=t["fisher"], **kw)
        if flag:
            count -= 1
    return t, pen


def skip_errors(backend, n=1031, gdtype=torch.float32, step_tensor=False, device="cpu"):
    """[] when: found_inf=0 equals no flag bitwise, and found_inf=1 steps change nothing."""
    inp = {k: v.to(device) for k, v in make_inputs(n, gdtype, gdtype).items()}
    errs = []
    for multi in (False, True):
        plain, pen_plain = run_with_flags(backend, inp, [None, None], multi=multi, step_tensor=step_tensor)
        zero, pen_zero = run_with_flags(backend, inp, [0, 0], multi=multi, step_tensor=step_tensor)
        skipped, pen_skip = run_with_flags(backend, inp, [1, 0, 1, 1, 0], multi=multi, step_tensor=step_tensor)
        for k in ("p", "m", "v", "fisher"):
            if not torch.equal(zero[k], plain[k]):
                errs.append(f"{backend} multi={multi}: found_inf=0 changed {k}")
            if not torch.equal(skipped[k], plain[k]):
                errs.append(f"{backend} multi={multi}: skipped steps changed {k}")
        if not (torch.equal(pen_zero, pen_plain) and torch.equal(pen_skip, pen_plain)):
            errs.append(f"{backend} multi={multi}: penalty {pen_zero} / {pen_skip} vs {pen_plain}")
    return errs


@pytest.mark.parametrize("backend", ["reference", pytest.param("native", marks=needs_native)])
@pytest.mark.parametrize("gdtype", [torch.float32, torch.bfloat16], ids=["g32", "gbf16"])
def test_found_inf_skips_the_step_and_zero_changes_nothing(backend, gdtype):
    assert skip_errors(backend, gdtype=gdtype) == []


def test_reference_gated_path_without_host_read():
    """The reference's accelerator path (step on copies, torch.where, no host read), on CPU."""
    inp = make_inputs(257)
    stepped = {k: v.clone() for k, v in inp.items()}
    pen_stepped = torch.zeros(1)
    reference.fused_adamw_step(stepped["p"], stepped["g"], stepped["m"], stepped["v"], **HP, step=1,
                               anchor=stepped["anchor"], kappa=stepped["kappa"], damping=0.5,
                               fisher=stepped["fisher"], fisher_scale=1.0, penalty_out=pen_stepped)
    for flag, want, pen_want in ((0.0, stepped, pen_stepped), (1.0, inp, torch.zeros(1))):
        t = {k: v.clone() for k, v in inp.items()}
        pen = torch.zeros(1)
        reference._gated_step(t["p"], t["g"], t["m"], t["v"], torch.tensor(flag), **HP, step=1,
                              anchor=t["anchor"], kappa=t["kappa"], extra_grad=None, damping=0.5,
                              fisher=t["fisher"], fisher_scale=1.0, penalty_out=pen)
        for k in ("p", "m", "v", "fisher"):
            assert torch.equal(t[k], want[k]), (flag, k)
        assert torch.equal(pen, pen_want), flag


# ----------------------------------------------------------------------------------------------
# Triton (interpreter on CPU in a subprocess; CUDA directly when present)
# ----------------------------------------------------------------------------------------------
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
    from tests.test_kernels import (make_inputs, run_backend, OPTION_GRID, _combo_kwargs,
                                    _run_multi, _multi_inputs)
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
        kw = _combo_kwargs(*combo)
        ref, pr = run_backend("reference", inp, steps=2, **kw)
        out, po = run_backend("triton", inp, steps=2, **kw)
        cmp(out, ref, po, pr, f"combo={combo}")
    groups = [g for g in _multi_inputs() if g["p"].numel() < 5000]
    outs, pen = _run_multi("triton", groups)
    refs, pen_ref = _run_multi("reference", groups)
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
    from tests.test_kernels import skip_errors
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
    groups = [{k: v.cuda() for k, v in g.items()} for g in _multi_inputs()]
    outs, pen = _run_multi("triton", groups)
    refs, pen_ref = _run_multi("reference", groups)
    for i, (o, r) in enumerate(zip(outs, refs)):
        assert_close(o, r, None, None, TOL_TRITON, f"multi tensor {i}")
    torch.testing.assert_close(pen, pen_ref, **TOL_TRITON["penalty"])
    for gdtype in (torch.float32, torch.bfloat16):
        assert skip_errors("triton", gdtype=gdtype, step_tensor=True, device="cuda") == []


# ----------------------------------------------------------------------------------------------
# Bad inputs: a clear error naming the argument, before any compute
# ----------------------------------------------------------------------------------------------
def _good():
    n = 16
    return dict(p=torch.randn(n), g=torch.randn(n), m=torch.zeros(n), v=torch.zeros(n))


BAD_CASES = [
    # (name, mutate(kwargs, tensors), exception, message fragment)
    ("g shape", lambda t, k: t.update(g=torch.randn(15)), ValueError, "g: shape (15,)"),
    ("m dtype", lambda t, k: t.update(m=torch.zeros(16, dtype=torch.float64)), TypeError, "m: dtype torch.float64"),
    ("v bf16", lambda t, k: t.update(v=torch.zeros(16, dtype=torch.bfloat16)), TypeError, "v: dtype torch.bfloat16"),
    ("p bf16", lambda t, k: t.update(p=torch.zeros(16, dtype=torch.bfloat16)), TypeError, "p: dtype"),
    ("g fp16", lambda t, k: t.update(g=torch.zeros(16, dtype=torch.float16)), TypeError, "g: dtype torch.float16"),
    ("p not contiguous", lambda t, k: t.update(p=torch.randn(16, 2)[:, 0], ), ValueError, "p: must be contiguous"),
    ("g not contiguous", lambda t, k: t.update(g=torch.randn(4, 4).t()), ValueError, "g: shape"),
    ("g transposed 2d", None, ValueError, "g: must be contiguous"),
    ("p not a tensor", lambda t, k: t.update(p=[0.0] * 16), TypeError, "p: expected a torch.Tensor"),
    ("anchor without kappa", lambda t, k: k.update(anchor=torch.zeros(16)), ValueError, "anchor was given without kappa"),
    ("kappa without anchor", lambda t, k: k.update(kappa=torch.zeros(16)), ValueError, "kappa was given without anchor"),
    ("anchor shape", lambda t, k: k.update(anchor=torch.zeros(8), kappa=torch.zeros(16)), ValueError, "anchor: shape (8,)"),
    ("kappa dtype", lambda t, k: k.update(anchor=torch.zeros(16), kappa=torch.zeros(16, dtype=torch.float16)), TypeError, "kappa: dtype torch.float16"),
    ("anchor bf16", lambda t, k: k.update(anchor=torch.zeros(16, dtype=torch.bfloat16), kappa=torch.zeros(16)), TypeError, "anchor: dtype"),
    ("extra_grad shape", lambda t, k: k.update(extra_grad=torch.zeros(17)), ValueError, "extra_grad: shape (17,)"),
    ("fisher dtype", lambda t, k: k.update(fisher=torch.zeros(16, dtype=torch.bfloat16)), TypeError, "fisher: dtype"),
    ("step 0", lambda t, k: k.update(step=0), ValueError, "step: expected step >= 1"),
    ("step tensor 0", lambda t, k: k.update(step=torch.tensor(0)), ValueError, "step: expected step >= 1"),
    ("step 1-dim tensor", lambda t, k: k.update(step=torch.tensor([1])), ValueError, "step: a tensor step must be 0-dim"),
    ("step str", lambda t, k: k.update(step="1"), TypeError, "step: expected an int"),
    ("step bool", lambda t, k: k.update(step=True), TypeError, "step: expected an int"),
    ("damping 1-dim", lambda t, k: k.update(damping=torch.ones(1)), ValueError, "damping: a tensor damping must be a 0-dim"),
    ("damping fp64", lambda t, k: k.update(damping=torch.tensor(1.0, dtype=torch.float64)), ValueError, "damping"),
    ("damping None", lambda t, k: k.update(damping=None), TypeError, "damping: expected a float"),
    ("lr tensor", lambda t, k: k.update(lr=torch.tensor(0.1)), TypeError, "lr: expected a python float"),
    ("beta1 1.0", lambda t, k: k.update(beta1=1.0), ValueError, "beta1"),
    ("beta2 neg", lambda t, k: k.update(beta2=-0.1), ValueError, "beta2"),
    ("eps neg", lambda t, k: k.update(eps=-1.0), ValueError, "eps"),
    ("penalty_out 2 elements", lambda t, k: k.update(penalty_out=torch.zeros(2)), ValueError, "penalty_out: expected a 1-element float32"),
    ("penalty_out fp64", lambda t, k: k.update(penalty_out=torch.zeros(1, dtype=torch.float64)), ValueError, "penalty_out"),
    ("m aliases p", None, ValueError, "must be distinct"),
    ("found_inf bool", lambda t, k: k.update(found_inf=torch.tensor(True)), ValueError, "found_inf: expected a 1-element float32"),
    ("found_inf float", lambda t, k: k.update(found_inf=1.0), TypeError, "found_inf: expected a torch.Tensor"),
]


@pytest.mark.parametrize("case", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_inputs_raise_before_compute(case):
    name, mutate, exc, fragment = case
    t = _good()
    kw = dict(HP, step=1)
    if name == "g transposed 2d":
        t = dict(p=torch.randn(4, 4), g=torch.randn(4, 4).t(), m=torch.zeros(4, 4), v=torch.zeros(4, 4))
    elif name == "m aliases p":
        t["m"] = t["p"]
    else:
        mutate(t, kw)
    snapshot = {k: v.clone() for k, v in t.items() if isinstance(v, torch.Tensor)}
    with pytest.raises(exc, match=None) as info:
        kernels.fused_adamw_step(t["p"], t["g"], t["m"], t["v"], **kw)
    assert fragment in str(info.value), str(info.value)
    for k, v in snapshot.items():  # nothing was computed
        assert torch.equal(t[k], v), k


def test_multi_bad_inputs_name_the_index():
    t = [_good() for _ in range(3)]
    t[2]["g"] = torch.randn(5)
    with pytest.raises(ValueError, match=r"g\[2\]: shape \(5,\)"):
        kernels.fused_adamw_multi([x["p"] for x in t], [x["g"] for x in t], [x["m"] for x in t],
                                  [x["v"] for x in t], **HP, step=1)
    with pytest.raises(ValueError, match="anchors: has 2 entries, expected 3"):
        kernels.fused_adamw_multi([x["p"] for x in t], [x["p"] for x in t], [x["m"] for x in t],
                                  [x["v"] for x in t], **HP, step=1, anchors=[None, None])
    with pytest.raises(ValueError, match="grads: has 2 entries"):
        kernels.fused_adamw_multi([x["p"] for x in t], [x["g"] for x in t][:2],
                                  [x["m"] for x in t], [x["v"] for x in t], **HP, step=1)


# ----------------------------------------------------------------------------------------------
# Dispatch, environment override, metadata
# ----------------------------------------------------------------------------------------------
def test_dispatch_default_and_last_backend(monkeypatch):
    monkeypatch.delenv("LADDER_KERNEL", raising=False)
    want = "native" if native.is_available() else "reference"
    assert kernels.backend_for("cpu") == want
    assert "reference" in kernels.available_backends()
    t = _good()
    kernels.fused_adamw_step(t["p"], t["g"], t["m"], t["v"], **HP, step=1)
    assert kernels.last_backend() == want


def test_env_override(monkeypatch):
    monkeypatch.setenv("LADDER_KERNEL", "reference")
    assert kernels.backend_for("cpu") == "reference"
    t = _good()
    kernels.fused_adamw_step(t["p"], t["g"], t["m"], t["v"], **HP, step=1)
    assert kernels.last_backend() == "reference"
    monkeypatch.setenv("LADDER_KERNEL", "bogus")
    with pytest.raises(ValueError, match="LADDER_KERNEL='bogus'"):
        kernels.backend_for("cpu")
    monkeypatch.setenv("LADDER_KERNEL", "native")
    with pytest.raises(RuntimeError, match="CPU only"):
        kernels.backend_for("cuda")
    monkeypatch.setenv("LADDER_KERNEL", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="LADDER_KERNEL=triton"):
        kernels.backend_for("cpu")


def test_forcing_missing_native_is_an_error_and_default_warns_once(monkeypatch):
    monkeypatch.setattr(native, "_loaded", False)
    monkeypatch.setattr(native, "_error", "fake: not built")
    monkeypatch.setattr(kernels, "_warned_native_missing", False)
    monkeypatch.setenv("LADDER_KERNEL", "native")
    with pytest.raises(RuntimeError, match="make native"):
        kernels.backend_for("cpu")
    monkeypatch.delenv("LADDER_KERNEL")
    with pytest.warns(RuntimeWarning, match="make native"):
        assert kernels.backend_for("cpu") == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernels.backend_for("cpu") == "reference"  # no second warning


# ----------------------------------------------------------------------------------------------
# Name collision with the PyPI distribution `kernels`
# ----------------------------------------------------------------------------------------------
class _FakeDist:
    def __init__(self, where, version="0.4.2"):
        self.where, self.version = where, version

    def locate_file(self, name):
        return Path(self.where) / name


class _FakeMetadata:
    def __init__(self, dist=None):
        self.dist = dist

    def distribution(self, name):
        import importlib.metadata as md
        assert name == "kernels"
        if self.dist is None:
            raise md.PackageNotFoundError(name)
        return self.dist


def test_collision_warning_names_both_locations(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "_collision_warned", False)
    with pytest.warns(RuntimeWarning) as rec:
        msg = kernels._check_name_collision(_FakeMetadata(_FakeDist(tmp_path / "site-packages")))
    text = str(rec[0].message)
    assert msg == text
    assert str(tmp_path / "site-packages" / "kernels") in text
    assert str(Path(kernels.__file__).resolve().parent) in text
    assert "`import kernels` means the project's own package" in text
    with warnings.catch_warnings():  # once only
        warnings.simplefilter("error")
        kernels._check_name_collision(_FakeMetadata(_FakeDist(tmp_path / "site-packages")))


def test_no_collision_warning_when_absent_or_ours(monkeypatch):
    monkeypatch.setattr(kernels, "_collision_warned", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernels._check_name_collision(_FakeMetadata(None)) is None
        ours = Path(kernels.__file__).resolve().parent.parent
        assert kernels._check_name_collision(_FakeMetadata(_FakeDist(ours))) is None
