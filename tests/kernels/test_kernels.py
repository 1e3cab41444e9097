"""The fused optimizer-step API (kernels/__init__.py): the plain path against torch.optim.AdamW,
the multi-tensor call against the per-tensor reference, the found_inf skip, bad inputs refused
before any compute, dispatch and its environment override, the PyPI name collision.

Native cases need kernels/_native/libladder_kernels.so: `make test` builds it first (the main
Makefile's `test` target depends on `native`); by hand run `make native` or
`python setup.py build_ext --inplace`. Without it they skip with that reason. The backends one by
one: tests/kernels/test_reference.py, test_native.py, test_triton_adamw.py.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import kernels
from kernels import native, reference
from tests.helpers.kernel_steps import (HP, TOL, assert_close, make_inputs, multi_inputs, needs_native, run_multi,
                                        skip_errors)


# The plain path against torch.optim.AdamW itself.
TOL_TORCH = dict(rtol=1e-5, atol=1e-6)


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


@pytest.mark.parametrize("backend", ["reference", pytest.param("native", marks=needs_native)])
def test_multi_matches_per_tensor_reference(backend):
    groups = multi_inputs()
    outs, pen = run_multi(backend, groups)
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


@pytest.mark.parametrize("backend", ["reference", pytest.param("native", marks=needs_native)])
@pytest.mark.parametrize("gdtype", [torch.float32, torch.bfloat16], ids=["g32", "gbf16"])
def test_found_inf_skips_the_step_and_zero_changes_nothing(backend, gdtype):
    assert skip_errors(backend, gdtype=gdtype) == []


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
    ("anchor without kappa", lambda t, k: k.update(anchor=torch.zeros(16)), ValueError,
     "anchor was given without kappa"),
    ("kappa without anchor", lambda t, k: k.update(kappa=torch.zeros(16)), ValueError,
     "kappa was given without anchor"),
    ("anchor shape", lambda t, k: k.update(anchor=torch.zeros(8), kappa=torch.zeros(16)), ValueError,
     "anchor: shape (8,)"),
    ("kappa dtype", lambda t, k: k.update(anchor=torch.zeros(16), kappa=torch.zeros(16, dtype=torch.float16)),
     TypeError, "kappa: dtype torch.float16"),
    ("anchor bf16", lambda t, k: k.update(anchor=torch.zeros(16, dtype=torch.bfloat16), kappa=torch.zeros(16)),
     TypeError, "anchor: dtype"),
    ("extra_grad shape", lambda t, k: k.update(extra_grad=torch.zeros(17)), ValueError, "extra_grad: shape (17,)"),
    ("fisher dtype", lambda t, k: k.update(fisher=torch.zeros(16, dtype=torch.bfloat16)), TypeError, "fisher: dtype"),
    ("step 0", lambda t, k: k.update(step=0), ValueError, "step: expected step >= 1"),
    ("step tensor 0", lambda t, k: k.update(step=torch.tensor(0)), ValueError, "step: expected step >= 1"),
    ("step 1-dim tensor", lambda t, k: k.update(step=torch.tensor([1])), ValueError,
     "step: a tensor step must be 0-dim"),
    ("step str", lambda t, k: k.update(step="1"), TypeError, "step: expected an int"),
    ("step bool", lambda t, k: k.update(step=True), TypeError, "step: expected an int"),
    ("damping 1-dim", lambda t, k: k.update(damping=torch.ones(1)), ValueError,
     "damping: a tensor damping must be a 0-dim"),
    ("damping fp64", lambda t, k: k.update(damping=torch.tensor(1.0, dtype=torch.float64)), ValueError, "damping"),
    ("damping None", lambda t, k: k.update(damping=None), TypeError, "damping: expected a float"),
    ("lr tensor", lambda t, k: k.update(lr=torch.tensor(0.1)), TypeError, "lr: expected a python float"),
    ("beta1 1.0", lambda t, k: k.update(beta1=1.0), ValueError, "beta1"),
    ("beta2 neg", lambda t, k: k.update(beta2=-0.1), ValueError, "beta2"),
    ("eps neg", lambda t, k: k.update(eps=-1.0), ValueError, "eps"),
    ("penalty_out 2 elements", lambda t, k: k.update(penalty_out=torch.zeros(2)), ValueError,
     "penalty_out: expected a 1-element float32"),
    ("penalty_out fp64", lambda t, k: k.update(penalty_out=torch.zeros(1, dtype=torch.float64)), ValueError,
     "penalty_out"),
    ("m aliases p", None, ValueError, "must be distinct"),
    ("found_inf bool", lambda t, k: k.update(found_inf=torch.tensor(True)), ValueError,
     "found_inf: expected a 1-element float32"),
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


def test_cuda_without_triton_warns_once_and_uses_the_reference(monkeypatch):
    """CUDA without Triton falls back like the CPU without the native library: to the reference,
    with one warning naming why (no GPU needed: dispatch only looks at the device type)."""
    from kernels import triton_adamw
    monkeypatch.delenv("LADDER_KERNEL", raising=False)
    monkeypatch.setattr(triton_adamw, "triton", None)
    monkeypatch.setattr(triton_adamw, "_import_error", "ModuleNotFoundError: fake: no triton")
    monkeypatch.setattr(kernels, "_warned_triton_missing", False)
    monkeypatch.setattr(kernels, "_warned_native_missing", True)  # only Triton's warning is looked for
    with pytest.warns(RuntimeWarning, match=r"Triton is not importable here \(ModuleNotFoundError: "
                      r"fake: no triton\); the CUDA optimizer step uses the slower PyTorch reference"):
        assert kernels.backend_for("cuda") == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernels.backend_for("cuda") == "reference"  # no second warning
        assert kernels.backend_for("cpu") in ("native", "reference")  # the CPU path is not affected
    monkeypatch.setenv("LADDER_KERNEL", "triton")
    with pytest.raises(RuntimeError, match="LADDER_KERNEL=triton"):
        kernels.backend_for("cuda")
    # with Triton there, CUDA takes it and nothing is said
    monkeypatch.delenv("LADDER_KERNEL")
    monkeypatch.setattr(triton_adamw, "triton", object())
    monkeypatch.setattr(kernels, "_warned_triton_missing", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernels.backend_for("cuda") == "triton"


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
