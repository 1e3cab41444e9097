"""The penalty's decoupled form in the fused step (kernels/reference.py, method.md section 4): the
anchor pull applied after the AdamW update, p -= min(lr*kappa, 1) * (p - A), equals its formula in
the reference, native and Triton kernels (Triton under TRITON_INTERPRET=1, small shapes), and never
overshoots the anchor."""
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
from tests.helpers.kernel_steps import HP, TOL, make_inputs, needs_native

pytestmark = pytest.mark.usefixtures("one_thread")


def step(backend, inp, *, decoupled, anchor=True, steps=2, damping=0.7, hp=HP, multi=False):
    """`steps` fused steps on clones of `inp`; returns (state, penalty value)."""
    t = {k: v.clone() for k, v in inp.items()}
    pen = torch.zeros(1)
    for s in range(1, steps + 1):
        kw = dict(**hp, step=s, damping=damping, fisher_scale=0.5, penalty_out=pen, decoupled=decoupled,
                  backend=backend)
        if multi:
            kernels.fused_adamw_multi([t["p"]], [t["g"]], [t["m"]], [t["v"]], anchors=[t["anchor"] if anchor else None],
                                      kappas=[t["kappa"] if anchor else None], extra_grads=[t["extra_grad"]],
                                      fishers=[t["fisher"]], **kw)
        else:
            kernels.fused_adamw_step(t["p"], t["g"], t["m"], t["v"], anchor=t["anchor"] if anchor else None,
                                     kappa=t["kappa"] if anchor else None, extra_grad=t["extra_grad"],
                                     fisher=t["fisher"], **kw)
    return t, pen


def formula(inp, hp=HP, damping=0.7):
    """One decoupled step written out: AdamW on damping*(g + extra) (no kappa*d in the gradient),
    then p -= min(lr*kappa, 1) * (p - A); the penalty value 1/2 sum kappa (p - A)^2 before it."""
    p, g, m, v = (inp[k].double() for k in ("p", "g", "m", "v"))
    a, k = inp["anchor"].double(), inp["kappa"].double()
    lr, b1, b2, eps, wd = hp["lr"], hp["beta1"], hp["beta2"], hp["eps"], hp["weight_decay"]
    pen = 0.5 * (k * (p - a) ** 2).sum()
    gp = damping * (g + inp["extra_grad"].double())
    m = b1 * m + (1 - b1) * gp
    v = b2 * v + (1 - b2) * gp * gp
    p = p * (1 - lr * wd) - lr / (1 - b1) * m / (v.sqrt() / (1 - b2) ** 0.5 + eps)
    return p - (lr * k).clamp(max=1.0) * (p - a), m, v, pen


@pytest.mark.parametrize("backend", ["reference", pytest.param("native", marks=needs_native)])
@pytest.mark.parametrize("kdtype", [torch.float32, torch.bfloat16], ids=["k32", "kbf16"])
def test_decoupled_step_equals_its_formula(backend, kdtype):
    inp = make_inputs(1031, torch.float32, kdtype)
    inp["kappa"] = inp["kappa"] * 50.0  # lr*kappa up to 0.5: a pull that shows
    out, pen = step(backend, inp, decoupled=True, steps=1)
    p, m, v, pen_ref = formula(inp)
    torch.testing.assert_close(out["p"], p.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["m"], m.float(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out["v"], v.float(), rtol=1e-5, atol=1e-8)
    assert float(pen) == pytest.approx(float(pen_ref), rel=1e-5)
    coupled, _ = step(backend, inp, decoupled=False, steps=1)
    assert not torch.equal(coupled["p"], out["p"])  # the flag changes the update


@needs_native
@pytest.mark.parametrize("multi", [False, True])
def test_native_decoupled_matches_reference(multi):
    for kd in (torch.float32, torch.bfloat16):
        inp = make_inputs(70001, torch.bfloat16, kd, seed=3)
        inp["kappa"] = inp["kappa"] * 80.0
        ref, pr = step("reference", inp, decoupled=True, multi=multi)
        out, po = step("native", inp, decoupled=True, multi=multi)
        for k in ("p", "m", "v", "fisher"):
            torch.testing.assert_close(out[k], ref[k], **TOL[kd]["state"])
        torch.testing.assert_close(po, pr, **TOL[kd]["penalty"])


@pytest.mark.parametrize("backend", ["reference", pytest.param("native", marks=needs_native)])
def test_the_pull_never_overshoots_the_anchor(backend):
    """lr*kappa <= 1: p moves toward A by exactly that fraction of the way; above 1 the pull is
    clamped, so p lands on A and never past it."""
    inp = make_inputs(4096, torch.float32, torch.float32, seed=5)
    inp["kappa"] = torch.rand(4096, generator=torch.Generator().manual_seed(1)) * 300.0  # lr*kappa in [0, 3]
    out, _ = step(backend, inp, decoupled=True, steps=1)
    adam, _ = step(backend, inp, decoupled=True, steps=1, anchor=False)  # the same step without the pull
    before, after = adam["p"] - inp["anchor"], out["p"] - inp["anchor"]
    assert torch.all(after.abs() <= before.abs() * (1 + 1e-6) + 1e-7)
    assert torch.all(after * before >= -1e-6)  # same side of the anchor (or on it, to rounding)
    over = HP["lr"] * inp["kappa"] >= 1.0
    assert over.any() and (~over).any()
    torch.testing.assert_close(out["p"][over], inp["anchor"][over], rtol=0, atol=1e-6)
    frac = (HP["lr"] * inp["kappa"])[~over]
    torch.testing.assert_close(after[~over], (1 - frac) * before[~over], rtol=1e-5, atol=1e-6)


def test_decoupled_must_be_a_bool():
    inp = make_inputs(8)
    with pytest.raises(TypeError, match=r"decoupled: expected a bool, got str \('yes'\)"):
        kernels.fused_adamw_step(inp["p"], inp["g"], inp["m"], inp["v"], **HP, step=1, decoupled="yes")


_TRITON_SCRIPT = textwrap.dedent(r"""
    import json, sys, torch
    sys.path.insert(0, sys.argv[1])
    from tests.kernels.test_decoupled import step
    from tests.helpers.kernel_steps import make_inputs
    errs = []
    for n, gd, kd, multi in ((7, torch.float32, torch.float32, False), (1031, torch.bfloat16, torch.bfloat16, False),
                             (2049, torch.float32, torch.float32, True)):
        inp = make_inputs(n, gd, kd, seed=n)
        inp["kappa"] = inp["kappa"] * 300.0  # lr*kappa in [0, 3]: the clamp is exercised too
        ref, pr = step("reference", inp, decoupled=True, multi=multi)
        out, po = step("triton", inp, decoupled=True, multi=multi)
        for k in ("p", "m", "v", "fisher"):
            try:
                torch.testing.assert_close(out[k], ref[k], rtol=2e-4, atol=1e-5)
            except AssertionError as e:
                errs.append(f"n={n} {k}: {str(e)[:300]}")
        try:
            torch.testing.assert_close(po, pr, rtol=2e-5, atol=1e-5)
        except AssertionError as e:
            errs.append(f"n={n} penalty: {str(e)[:300]}")
    print("RESULT" + json.dumps(errs))
""")


# Several tensors of two kinds (fp32 g and kappa; bf16 g and kappa) in one call: each kind is one
# launch of the multi-tensor kernel (address table), which the one-tensor `multi=True` case above
# never reaches (a kind with one tensor goes to the single-tensor kernel). Sizes: below a block, one
# full block, full blocks plus a tail.
_TRITON_MULTI_SCRIPT = textwrap.dedent(r"""
    import json, sys, torch
    sys.path.insert(0, sys.argv[1])
    import kernels
    from kernels import triton_adamw
    from tests.helpers.kernel_steps import HP, make_inputs
    SPECS = [(5, torch.float32), (1024, torch.float32), (1500, torch.float32), (2049, torch.float32),
             (7, torch.bfloat16), (1031, torch.bfloat16), (3000, torch.bfloat16)]
    tables, singles = [], []
    group_tables, single_step = triton_adamw._group_tables, triton_adamw.fused_adamw_step
    def counting_tables(dev, addrs, numels):
        tables.append(list(numels))
        return group_tables(dev, addrs, numels)
    def counting_single(p, *a, **k):
        singles.append(p.numel())
        return single_step(p, *a, **k)
    triton_adamw._group_tables, triton_adamw.fused_adamw_step = counting_tables, counting_single
    def run(backend, step_tensor):
        ts = []
        for j, (n, dt) in enumerate(SPECS):
            t = make_inputs(n, dt, dt, seed=j)
            t["kappa"] = t["kappa"] * 300.0  # lr*kappa in [0, 3]: the clamp is exercised too
            ts.append(t)
        pen = torch.zeros(1)
        col = lambda k: [t[k] for t in ts]
        for s in (1, 2):
            kernels.fused_adamw_multi(col("p"), col("g"), col("m"), col("v"), **HP,
                                      step=torch.tensor(s) if step_tensor else s,
                                      anchors=col("anchor"), kappas=col("kappa"),
                                      extra_grads=col("extra_grad"), damping=0.7,
                                      fishers=col("fisher"), fisher_scale=0.5, penalty_out=pen,
                                      decoupled=True, backend=backend)
        return ts, pen
    errs = []
    for step_tensor in (False, True):
        ref, pr = run("reference", step_tensor)
        del tables[:], singles[:]
        out, po = run("triton", step_tensor)
        want = [[n for n, dt in SPECS if dt == d] for d in (torch.float32, torch.bfloat16)] * 2
        if sorted(tables) != sorted(want) or singles:
            errs.append(f"step_tensor={step_tensor}: tables {tables}, single-kernel calls {singles}; "
                        f"expected tables {want} and no single-kernel call")
        for j, (o, r) in enumerate(zip(out, ref)):
            for k in ("p", "m", "v", "fisher"):
                try:
                    torch.testing.assert_close(o[k], r[k], rtol=2e-4, atol=1e-5)
                except AssertionError as e:
                    errs.append(f"step_tensor={step_tensor} tensor {j} (n={SPECS[j][0]}) {k}: {str(e)[:300]}")
        try:
            torch.testing.assert_close(po, pr, rtol=2e-5, atol=1e-5)
        except AssertionError as e:
            errs.append(f"step_tensor={step_tensor} penalty: {str(e)[:300]}")
    print("RESULT" + json.dumps(errs))
""")


def _interpreted_errors(script):
    """Run a test script under TRITON_INTERPRET=1 in a fresh interpreter (the mode is chosen when
    kernels.triton_adamw is imported); returns the mismatches it reports."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("LADDER_KERNEL", None)
    proc = subprocess.run([sys.executable, "-c", script, str(ROOT)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=str(ROOT))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT"):])


def test_triton_decoupled_under_the_interpreter_matches_reference():
    errs = _interpreted_errors(_TRITON_SCRIPT)
    assert not errs, "\n".join(errs[:10])


def test_triton_multi_tensor_decoupled_under_the_interpreter_matches_reference():
    errs = _interpreted_errors(_TRITON_MULTI_SCRIPT)
    assert not errs, "\n".join(errs[:10])
