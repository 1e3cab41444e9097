"""The ladder's optimizer: parameter groups -> one fused kernel call per group.

Everything the inheritance method adds to a step rides inside that call (method.md 3-5,
kernels/__init__.py): online Fisher accumulation `F += g^2/K`, the elastic + subspace gradient
`kappa * (p - A)` (+ the SVD term as an extra gradient), the ARS damping `d`, then AdamW. No
autograd graph is ever built for the penalty.

Parameters may be FSDP2 DTensors: the kernels see only this rank's shard (`local`), and the
optimizer state (moments) is kept as DTensors of the same layout so torch.distributed.checkpoint
can save it and reload it at another world size.

Muon (Keller Jordan's orthogonalised momentum, as nanochat uses for block matrices) is an option:
`kind="muon"` groups take the penalty and damping the same way but update through Newton-Schulz
in torch ops (it needs the full matrix, gathered under FSDP).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

import kernels
from engine.runtime.distributed import local, shard_like


@dataclass
class ParamGroup:
    name: str
    names: list[str]
    params: list[torch.Tensor]
    lr: float
    weight_decay: float = 0.0
    kind: str = "adamw"  # or "muon"


@dataclass
class InheritTerms:
    """What the penalty contributes to one step, as rank-local tensors keyed by parameter name.
    Built by engine.inherit.penalty for the rung being trained; absent keys mean "no penalty here"."""

    anchors: dict[str, torch.Tensor] = field(default_factory=dict)
    kappas: dict[str, torch.Tensor] = field(default_factory=dict)
    extra_grads: dict[str, torch.Tensor] = field(default_factory=dict)
    # the decoupled form: kappas are pulls per unit of learning rate applied after the update,
    # p -= min(lr*kappa, 1) * (p - A), not kappa*(p - A) added to the gradient (kernels/reference.py)
    decoupled: bool = False


def model_param_groups(model, *, matrix_lr: float, embedding_lr: float, unembedding_lr: float,
                       weight_decay: float, muon: bool) -> list[ParamGroup]:
    """nanochat's grouping: embeddings, lm_head and block matrices, AdamW learning rates scaled by
    (model_dim/768)^-0.5 so one setting transfers across the ladder's widths. Muon's lr is not
    scaled (its update is already shape-normalised)."""
    scale = (model.config.model_dim / 768) ** -0.5
    named = dict(model.named_parameters())
    blocks = [n for n in named if n.startswith("blocks.")]
    groups = [
        ParamGroup("wte", ["wte.weight"], [named["wte.weight"]], embedding_lr * scale),
        ParamGroup("lm_head", ["lm_head.weight"], [named["lm_head.weight"]], unembedding_lr * scale),
        ParamGroup("matrices", blocks, [named[n] for n in blocks],
                   matrix_lr if muon else matrix_lr * scale, weight_decay, "muon" if muon else "adamw"),
    ]
    seen = sum(len(g.params) for g in groups)
    if seen != len(named):
        raise AssertionError(f"param groups cover {seen} of {len(named)} parameters")
    return groups


def _newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximate orthogonalisation U V^T of g (Muon's quintic iteration, coefficients from
    Keller Jordan's Muon write-up)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.float()
    transposed = x.size(0) > x.size(1)
    if transposed:
        x = x.T
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if transposed else x


OPTIMIZERS = ("adamw", "muon")  # of block matrices (TrainConfig.optimizer); every other group is AdamW
ADAMW_IMPLS = ("kernel", "torch", "apex")


_STEP_TENSORS: dict[torch.device, torch.Tensor] = {}


def _torch_fused_adamw(P, G, M, V, *, lr, beta1, beta2, eps, weight_decay, step, found_inf=None):
    """torch's own fused AdamW kernel on our state tensors (what torch.optim.AdamW(fused=True) runs);
    it takes the same device-side found_inf skip flag as ours. Its step count must be a device
    tensor: one cached tensor per device, refilled by a kernel (`torch.tensor(step, device=cuda)`
    would be a blocking host->device copy every step)."""
    dev = P[0].device
    if dev not in _STEP_TENSORS:
        _STEP_TENSORS[dev] = torch.zeros((), dtype=torch.float32, device=dev)
    steps = [_STEP_TENSORS[dev].fill_(float(step))] * len(P)  # read-only in the kernel
    torch._fused_adamw_(P, G, M, V, [], steps, lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, eps=eps,
                        amsgrad=False, maximize=False, found_inf=found_inf)


def _apex_fused_adamw(P, G, M, V, *, lr, beta1, beta2, eps, weight_decay, step, found_inf=None):
    """NVIDIA apex's multi-tensor Adam in AdamW mode (what apex.optimizers.FusedAdam(adam_w_mode=True) runs).
    Its kernel takes no skip flag we could verify, so steps under the lagged guard are refused
    (the trainer keeps the per-step guard with --adamw-impl apex)."""
    if found_inf is not None:
        raise ValueError("--adamw-impl apex cannot skip a step on the device (no found_inf in its Adam "
                         "kernel): run it with the per-step non-finite guard (--host-sync step)")
    import amp_C
    from apex.multi_tensor_apply import multi_tensor_applier

    overflow = torch.zeros(1, dtype=torch.int, device=P[0].device)
    multi_tensor_applier(amp_C.multi_tensor_adam, overflow, [G, P, M, V], lr, beta1, beta2, eps, step,
                         1, 1, weight_decay)  # mode 1 = decoupled weight decay (AdamW); bias correction on


def check_adamw_impl(impl: str, device: torch.device) -> None:
    if impl not in ADAMW_IMPLS:
        raise ValueError(f"--adamw-impl must be one of {ADAMW_IMPLS}, got {impl!r}")
    if impl == "apex":
        if device.type != "cuda":
            raise ValueError("--adamw-impl apex needs CUDA")
        try:
            import amp_C  # noqa: F401  (built with apex's --cuda_ext; PyPI's "apex" is unrelated)
        except ImportError as e:
            raise ValueError("--adamw-impl apex: NVIDIA apex with its CUDA extensions is not installed "
                             f"({e})") from None


class LadderOptimizer:
    """`adamw_impl` picks the kernel of plain AdamW steps (no penalty, no Fisher, no damping):
    `kernel` (ours, the default and the only one that carries the inheritance terms), `torch`
    (torch's fused AdamW) or `apex` (NVIDIA apex FusedAdam's kernel). A step that carries
    inheritance terms always runs our fused kernel."""

    def __init__(self, groups: list[ParamGroup], *, betas=(0.8, 0.95), eps=1e-10, muon_momentum=0.95,
                 adamw_impl: str = "kernel"):
        self.adamw_impl = adamw_impl
        self.groups = groups
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.muon_momentum = muon_momentum
        self.step_count = 0
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        for g in groups:
            for n, p in zip(g.names, g.params):
                # zeros_like keeps the DTensor layout under FSDP2 (so DCP can reshard the state).
                if g.kind == "adamw":
                    self.state[n] = {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
                else:
                    self.state[n] = {"momentum": torch.zeros_like(p)}

    @property
    def kernel_backend(self) -> str:
        dev = local(self.groups[0].params[0]).device
        base = kernels.backend_for(dev)
        return base if self.adamw_impl == "kernel" else f"{base} (plain AdamW steps: {self.adamw_impl})"

    def zero_grad(self):
        for g in self.groups:
            for p in g.params:
                p.grad = None

    @torch.no_grad()
    def step(self, lr_mult: float, *, damping: float | torch.Tensor = 1.0, terms: InheritTerms | None = None,
             fishers: dict[str, torch.Tensor] | None = None, fisher_scale: float = 1.0,
             found_inf: torch.Tensor | None = None) -> torch.Tensor | None:
        """One update of every group. Returns the penalty value 1/2 sum kappa (p - A)^2 (before
        the update, as a 1-element fp32 tensor on the device, no host sync) when `terms` is given.

        `found_inf` (0-dim fp32 device tensor): nonzero makes the whole step a no-op, decided on
        the device (parameters, moments, Fisher untouched). The host step count still advances:
        the caller undoes it with `unstep()` once it has read the flag (engine/train/trainer.py)."""
        self.step_count += 1
        penalty_out = None
        if terms is not None and terms.kappas:
            dev = local(self.groups[0].params[0]).device
            penalty_out = torch.zeros(1, dtype=torch.float32, device=dev)
        for g in self.groups:
            names = [n for n, p in zip(g.names, g.params) if p.grad is not None]
            if not names:
                continue
            params = [p for p in g.params if p.grad is not None]
            P = [local(p) for p in params]
            G = [local(p.grad) for p in params]
            A = [terms.anchors.get(n) if terms else None for n in names]
            K = [terms.kappas.get(n) if terms else None for n in names]
            X = [terms.extra_grads.get(n) if terms else None for n in names]
            F = [fishers.get(n) if fishers is not None else None for n in names]
            lr = g.lr * lr_mult
            plain = all(x is None for x in A + X + F) and not isinstance(damping, torch.Tensor) and damping == 1.0
            if g.kind == "adamw" and plain and self.adamw_impl != "kernel":
                impl = _torch_fused_adamw if self.adamw_impl == "torch" else _apex_fused_adamw
                impl(P, G, [local(self.state[n]["exp_avg"]) for n in names],
                     [local(self.state[n]["exp_avg_sq"]) for n in names],
                     lr=lr, beta1=self.beta1, beta2=self.beta2, eps=self.eps, weight_decay=g.weight_decay,
                     step=self.step_count,
                     found_inf=found_inf)
            elif g.kind == "adamw":
                kernels.fused_adamw_multi(
                    P, G, [local(self.state[n]["exp_avg"]) for n in names],
                    [local(self.state[n]["exp_avg_sq"]) for n in names],
                    lr=lr, beta1=self.beta1, beta2=self.beta2, eps=self.eps, weight_decay=g.weight_decay,
                    step=self.step_count, anchors=A if any(a is not None for a in A) else None,
                    kappas=K if any(k is not None for k in K) else None,
                    extra_grads=X if any(x is not None for x in X) else None, damping=damping,
                    fishers=F if any(f is not None for f in F) else None, fisher_scale=fisher_scale,
                    penalty_out=penalty_out, found_inf=found_inf, decoupled=bool(terms and terms.decoupled))
            else:
                bufs = [local(self.state[n]["momentum"]) for n in names]
                if found_inf is None:
                    self._muon_group(g, params, P=P, G=G, A=A, K=K, X=X, F=F, bufs=bufs, lr=lr, damping=damping,
                                     fisher_scale=fisher_scale, penalty_out=penalty_out,
                                     decoupled=bool(terms and terms.decoupled))
                    continue
                # torch ops take no skip flag: update copies, keep the originals where it is set
                outs = P + bufs + [f for f in F if f is not None] + ([penalty_out] if penalty_out is not None else [])

                def run(work):
                    it = iter(work)
                    Pw, Bw = [next(it) for _ in P], [next(it) for _ in bufs]
                    Fw = [None if f is None else next(it) for f in F]
                    self._muon_group(g, params, P=Pw, G=G, A=A, K=K, X=X, F=Fw, bufs=Bw, lr=lr, damping=damping,
                                     fisher_scale=fisher_scale, penalty_out=next(it, None),
                                     decoupled=bool(terms and terms.decoupled))

                kernels.reference.gated(found_inf, outs, run)
        return penalty_out

    def unstep(self):
        """Undo the host step count of a step the device skipped (its found_inf was set)."""
        self.step_count -= 1

    def _muon_group(self, g, params, *, P, G, A, K, X, F, bufs, lr, damping, fisher_scale, penalty_out,
                    decoupled=False):
        # The same pre-update algebra the fused AdamW kernel applies, in torch ops, then Muon (and
        # the decoupled form's pull after it, as the kernel applies it).
        for p, pl, gl, a, k, x, f, buf in zip(params, P, G, A, K, X, F, bufs):
            if f is not None:
                f.add_(gl.float().square(), alpha=fisher_scale)
            gp = gl.float()
            if k is not None:
                d = pl - a
                if penalty_out is not None:
                    penalty_out += 0.5 * (k.float() * d * d).sum()
                if not decoupled:
                    gp = gp + k.float() * d
            if x is not None:
                gp = gp + x
            gp = gp * damping
            buf.mul_(self.muon_momentum).add_(gp)
            update = gp + self.muon_momentum * buf  # Nesterov
            if hasattr(p, "device_mesh"):  # orthogonalisation needs the whole matrix
                from torch.distributed.tensor import DTensor

                full = DTensor.from_local(update, p.device_mesh, p.placements, shape=p.shape,
                                          stride=p.stride()).full_tensor()
                ortho = shard_like(_newton_schulz(full), p)
            else:
                ortho = _newton_schulz(update)
            rows, cols = p.shape
            if g.weight_decay:
                pl.mul_(1 - lr * g.weight_decay)
            pl.add_(ortho.to(pl.dtype), alpha=-lr * max(1.0, rows / cols) ** 0.5)
            if k is not None and decoupled:
                pl.sub_((k.float() * lr).clamp_(max=1.0) * (pl - a))

    def state_dict(self) -> dict:
        return {"step": self.step_count, "state": self.state}

    def load_state_dict(self, sd: dict):
        self.step_count = int(sd["step"])
        for n, st in sd["state"].items():
            if n not in self.state:
                raise KeyError(f"optimizer state for unknown parameter {n!r}")
            for k, v in st.items():
                self.state[n][k].copy_(v)
