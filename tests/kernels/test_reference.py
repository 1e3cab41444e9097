"""The PyTorch reference step (kernels/reference.py), the ground truth of every backend: one step
by hand in float64, and its accelerator path (found_inf gating without a host read)."""
from __future__ import annotations

import torch

from kernels import reference
from tests.helpers.kernel_steps import HP, make_inputs, run_backend


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
