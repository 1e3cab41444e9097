"""The fused optimizer step's test cases (kernels/): inputs, each backend run the same way, the
found_inf skip checked, and the tolerances between backends."""
from __future__ import annotations

import itertools

import pytest
import torch

import kernels
from kernels import native


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


CHUNK = 1 << 15  # native chunk size


OPTION_GRID = list(itertools.product(
    [False, True],            # anchor + kappa
    [torch.float32, torch.bfloat16],  # kappa dtype
    [False, True],            # extra_grad
    [False, True],            # fisher
    [1.0, 0.7, "tensor"],     # damping
    [False, True],            # step as tensor
    [False, True],            # penalty_out
))


def combo_kwargs(anchor, kdtype, extra, fisher, damping, step_tensor, penalty):
    return dict(anchor=anchor, extra=extra, fisher=fisher, step_tensor=step_tensor,
                damping=torch.tensor(0.6) if damping == "tensor" else damping,
                penalty=penalty)


def multi_inputs():
    sizes = [5, CHUNK + 3, 0, 1000, 70001]
    groups = []
    for i, n in enumerate(sizes):
        gd = torch.bfloat16 if i % 2 else torch.float32
        groups.append(make_inputs(n, gd, torch.bfloat16 if i == 3 else torch.float32, seed=i))
    return groups


def run_multi(backend, groups, steps=2):
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
