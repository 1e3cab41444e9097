"""The inheritance penalty Phi (method.md section 4).

    Phi(W) = (lambda/2) * sum_i Omega_i * M_i * (W_i - A_i)^2
           + gamma * sum_matrices || (I - P_S)(W - A) ||_F^2
    grad Phi = lambda * Omega * M * (W - A) + 2 * gamma * (I - P_S)(W - A)

with A the anchor, M the inherited mask and Omega the carried Fisher from growth
(engine/inherit/growth.py), all aligned with the parameters given at construction.

P_S has two forms (`subspace`):
- "coords": (I - P_S) dW = (1 - M) * dW. Both terms are elementwise, folded into ONE coefficient
  tensor per parameter, kappa = lambda*Omega on inherited coordinates (M=1) and 2*gamma on new
  ones (M=0): Phi = 1/2 sum kappa (W - A)^2, grad = kappa * (W - A). `extra_grads` is all None.
- "svd": per 2-D weight, P_S = U_k U_k^T with U_k the top-k left singular vectors of the ANCHOR
  matrix (k = svd_rank, or the smallest k keeping a fraction svd_energy of sum s^2). The
  elementwise part kappa = lambda*Omega*M goes through the same path; `extra_grads` returns
  2*gamma*(dW - U_k (U_k^T dW)) (two skinny matmuls) for the optimizer to add. Parameters that are
  not 2-D (none in the GPT today) fall back to the coords form.

Form (`form`, method.md section 4): "coupled" adds grad Phi to the loss gradient before Adam
normalises it (all of the above). "decoupled" applies the pull in the update instead, as AdamW
applies weight decay: after the Adam update W -= lr_t * kappa * (W - A) (clamped at the anchor,
kernels/reference.py), with kappa = lambda * Omega / mean_M(Omega) on inherited coordinates and
gamma on new ones, so lambda and gamma are dimensionless pulls per unit of learning rate. mean_M
is the mean of Omega over the inherited coordinates of the WHOLE model (`omega_mean`; computed
from the full tensors by the caller when the parameters are shards): the pull keeps the Fisher's
ranking across tensors, as the coupled form does, instead of giving a tensor that mattered little
the same average pull as the one that mattered most. Decoupled needs subspace "coords".

Schedule (method.md section 4, optional): lambda and gamma both multiplied by
f(step) = max(0, 1 - step/total_steps) ("linear", reaching 0 at step == total_steps) or 1
("constant"), `step` counting the optimizer steps done before the one being taken. A decay over
the first part of the rung (`decay_frac` F > 0) multiplies f by max(0, 1 - step/(F*total_steps)),
so the penalty is gone after the first F of the rung (F = 0: no such decay). The optimizer kernel
takes `kappa_for(step)`.

No autograd graph anywhere: the gradient is added inside the optimizer step, which also returns
the elementwise part of Phi; `subspace_terms` gives the svd part beside its gradient, so the
logged value is the whole Phi in both forms.

`PenaltyConfig` is the penalty a grown rung is given (engine/inherit/inheritance.py): the
settings of `Penalty` that do not depend on the rung's tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor

SUBSPACES = ("coords", "svd")
SCHEDULES = ("constant", "linear")
FORMS = ("coupled", "decoupled")  # kappa*(W - A) in the gradient Adam normalises, or a pull after the update


@dataclass(frozen=True)
class PenaltyConfig:
    """The penalty's settings for one grown rung (keyword arguments of `Penalty`). The default,
    lam = gamma = 0, is no penalty (an arm without it)."""

    lam: float = 0.0
    gamma: float = 0.0
    subspace: str = "coords"
    svd_rank: int | None = None
    svd_energy: float | None = None
    schedule: str = "constant"
    decay_frac: float = 0.0  # > 0: lambda and gamma decay linearly to 0 over this fraction of the rung
    form: str = "coupled"  # FORMS

    @property
    def active(self) -> bool:
        """Whether the penalty adds anything: a zero lambda and gamma need no Penalty at all."""
        return self.lam != 0.0 or self.gamma != 0.0


def energy_rank(s: Tensor, energy: float) -> int:
    """Smallest k with sum_{i<k} s_i^2 >= energy * sum s^2 (s sorted descending). 0 for a zero
    matrix (no subspace to keep, so the whole dW is penalised) or energy <= 0."""
    sq = s.double().square()
    total = sq.sum().item()
    if total <= 0.0 or energy <= 0.0:
        return 0
    cum = torch.cumsum(sq, 0) / total
    # small tolerance so an exact boundary (e.g. energy 0.9 with 0.9 captured) is not missed by
    # rounding; it also makes energy 1.0 ignore rounding-level singular values
    return min(s.numel(), int(torch.searchsorted(cum, torch.tensor(energy - 1e-12, dtype=cum.dtype)).item()) + 1)


def inherited_fisher_mean(fisher: list[Tensor], mask: list[Tensor]) -> float:
    """mean_M(Omega): the mean of Omega over every inherited coordinate (M = 1) of the given
    tensors (0.0 when there are none, or no Fisher)."""
    if not fisher:
        return 0.0
    total = sum(float((om.double() * (m > 0.5)).sum()) for om, m in zip(fisher, mask, strict=True))
    count = sum(int((m > 0.5).sum()) for m in mask)
    return total / count if count else 0.0


class Penalty:
    """Phi of method.md section 4 over an ordered list of parameters (see module docstring).

    Args: named_params: iterable of (name, param), fixes the order of every returned list;
    anchor, mask, fisher: dicts by name (fisher None -> Omega = 0); lam, gamma: the weights;
    subspace: "coords" | "svd"; svd_rank or svd_energy (exactly one, for "svd"); schedule:
    "constant" | "linear" (then total_steps is required); decay_frac: F in [0, 1], > 0 decays
    lambda and gamma to 0 over the first F*total_steps steps (then total_steps is required); form:
    "coupled" | "decoupled" (omega_mean: mean_M(Omega) over the whole model, else computed from
    the given tensors)."""

    def __init__(
        self,
        named_params: Iterable[tuple[str, Tensor]],
        anchor: dict[str, Tensor],
        mask: dict[str, Tensor],
        fisher: dict[str, Tensor] | None,
        *,
        lam: float,
        gamma: float,
        subspace: str = "coords",
        svd_rank: int | None = None,
        svd_energy: float | None = None,
        schedule: str = "constant",
        decay_frac: float = 0.0,
        form: str = "coupled",
        omega_mean: float | None = None,
        total_steps: int | None = None,
    ):
        if subspace not in SUBSPACES:
            raise ValueError(f"subspace must be one of {SUBSPACES}, got {subspace!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if schedule == "linear" and (total_steps is None or total_steps < 1):
            raise ValueError("schedule='linear' needs total_steps >= 1")
        if not 0.0 <= decay_frac <= 1.0:
            raise ValueError(f"decay_frac must be in [0, 1], got {decay_frac!r}")
        if decay_frac > 0 and (total_steps is None or total_steps < 1):
            raise ValueError("decay_frac > 0 needs total_steps >= 1")
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        if form == "decoupled" and subspace != "coords":
            raise ValueError(f"form='decoupled' needs subspace='coords', got {subspace!r}")
        if subspace == "svd" and (svd_rank is None) == (svd_energy is None):
            raise ValueError("subspace='svd' needs exactly one of svd_rank, svd_energy")
        self.lam, self.gamma = float(lam), float(gamma)
        self.subspace, self.schedule, self.total_steps = subspace, schedule, total_steps
        self.decay_frac = float(decay_frac)
        self.form = form
        named_params = list(named_params)
        if form == "decoupled" and omega_mean is None:
            omega_mean = inherited_fisher_mean([fisher[n] for n, _ in named_params] if fisher else [],
                                               [mask[n] for n, _ in named_params])
        self.names: list[str] = []
        self._anchors: list[Tensor] = []
        self._kappa: list[Tensor] = []  # base (unscheduled) elementwise coefficients, fp32
        self._inherited: list[Tensor] = []  # M as bool (1 byte/param), only for value()
        self._U: list[Tensor | None] = []  # svd: U_k per parameter (None -> coords fallback)
        self.ranks: list[int | None] = []
        self._numel = 0
        self._svd_flops = 0

        with torch.no_grad():
            for name, p in named_params:
                a = anchor[name].detach().to(device=p.device, dtype=torch.float32)
                m = mask[name].detach().to(device=p.device, dtype=torch.float32)
                om = (
                    fisher[name].detach().to(device=p.device, dtype=torch.float32)
                    if fisher is not None
                    else torch.zeros_like(a)
                )
                if not (a.shape == m.shape == om.shape == p.shape):
                    raise ValueError(f"{name}: anchor/mask/fisher shapes do not match the parameter {tuple(p.shape)}")
                om_m = om * m
                use_svd = subspace == "svd" and p.dim() == 2
                if use_svd:
                    U, s, _ = torch.linalg.svd(a.double(), full_matrices=False)
                    k = min(svd_rank, s.numel()) if svd_rank is not None else energy_rank(s, svd_energy)
                    self._U.append(U[:, :k].to(torch.float32).contiguous())
                    self.ranks.append(k)
                    kappa = self.lam * om_m
                    self._svd_flops += 4 * k * p.shape[0] * p.shape[1] + 3 * p.numel()
                elif form == "decoupled":  # a pull per unit of learning rate (module docstring)
                    self._U.append(None)
                    self.ranks.append(None)
                    scale = self.lam / omega_mean if omega_mean > 0 else 0.0
                    kappa = torch.where(m > 0.5, scale * om, torch.full_like(om, self.gamma))
                else:
                    self._U.append(None)
                    self.ranks.append(None)
                    kappa = torch.where(m > 0.5, self.lam * om, torch.full_like(om, 2.0 * self.gamma))
                self.names.append(name)
                self._anchors.append(a)
                self._kappa.append(kappa)
                self._inherited.append(m > 0.5)
                self._numel += p.numel()
        self._scaled: list[Tensor] | None = None  # cache of kappa * factor for the last factor
        self._scaled_factor: float | None = None

    # --- schedule -----------------------------------------------------------------------------
    def factor(self, step: int) -> float:
        """Multiplier of lambda and gamma for the step taken after `step` steps (0 for the first):
        the schedule's factor times the early decay's (each 1 when off)."""
        f = 1.0 if self.schedule == "constant" else max(0.0, 1.0 - step / self.total_steps)
        if self.decay_frac > 0:
            f *= max(0.0, 1.0 - step / (self.decay_frac * self.total_steps))
        return f

    @property
    def enabled(self) -> bool:
        return self.lam != 0.0 or self.gamma != 0.0

    # --- hot-path accessors ---------------------------------------------------------------------
    def anchors(self) -> list[Tensor]:
        return self._anchors

    @torch.no_grad()
    def kappa_for(self, step: int) -> list[Tensor]:
        """Elementwise coefficients at `step`: grad of the elementwise part = kappa * (W - A).
        Constant schedule: the cached base tensors. Linear: rescaled in place into one cached set
        of buffers only when the factor changed (one multiply per element, no allocation)."""
        f = self.factor(step)
        if f == 1.0:
            return self._kappa
        if self._scaled is None:
            self._scaled = [torch.empty_like(k) for k in self._kappa]
        if self._scaled_factor != f:
            for out, k in zip(self._scaled, self._kappa):
                torch.mul(k, f, out=out)
            self._scaled_factor = f
        return self._scaled

    @torch.no_grad()
    def extra_grads(self, params: Iterable[Tensor], step: int) -> list[Tensor | None]:
        """svd form: 2*gamma*f*(dW - U_k (U_k^T dW)) per 2-D weight, dW = W - A (fp32); None for
        parameters handled entirely by kappa (all of them under "coords")."""
        return self.subspace_terms(params, step)[0]

    @torch.no_grad()
    def subspace_terms(self, params: Iterable[Tensor], step: int) -> tuple[list[Tensor | None], Tensor | None]:
        """(`extra_grads`, gamma*f * sum ||(I - P_S) dW||_F^2 over the svd matrices): the gradient
        and the value of the part of Phi that kappa leaves out. The value is a 0-dim fp32 tensor on
        the parameters' device (no host sync), None when no matrix takes the svd form."""
        f = self.factor(step)
        grads: list[Tensor | None] = []
        value = None
        for p, a, U in zip(params, self._anchors, self._U, strict=True):
            if U is None:
                grads.append(None)
                continue
            dW = p.detach().float() - a
            r = dW - U @ (U.T @ dW) if U.shape[1] > 0 else dW
            sq = r.square().sum()
            value = sq if value is None else value + sq
            grads.append(r.mul_(2.0 * self.gamma * f))
        return grads, (value * (self.gamma * f) if value is not None else None)

    @torch.no_grad()
    def grads(self, params: Iterable[Tensor], step: int) -> list[Tensor]:
        """Full grad Phi per parameter (reference / non-fused path): kappa*(W-A) + extra."""
        params = list(params)
        kap = self.kappa_for(step)
        extra = self.extra_grads(params, step)
        out = []
        for p, a, k, e in zip(params, self._anchors, kap, extra, strict=True):
            g = k * (p.detach().float() - a)
            out.append(g if e is None else g.add_(e))
        return out

    @torch.no_grad()
    def value(self, params: Iterable[Tensor], step: int) -> float:
        """Phi exactly as method.md section 4 writes it (for logging and tests), in float64. The
        decoupled form's value is 1/2 sum kappa (W - A)^2 with its own kappa: the potential whose
        gradient, times the learning rate, is the pull (what the optimizer step logs)."""
        f = self.factor(step)
        total = 0.0
        if self.form == "decoupled":
            for p, a, k in zip(params, self._anchors, self._kappa, strict=True):
                total += 0.5 * f * (k.double() * (p.detach().double() - a.double()).square()).sum().item()
            return total
        for p, a, k, inh, U in zip(params, self._anchors, self._kappa, self._inherited, self._U, strict=True):
            dW = p.detach().double() - a.double()
            # lambda * Omega * M is kappa restricted to inherited coordinates (in both forms)
            lam_om_m = torch.where(inh, k.double(), 0.0)
            total += 0.5 * f * (lam_om_m * dW.square()).sum().item()
            if U is None:
                proj_out = torch.where(inh, 0.0, dW)  # coords: (I - P_S) dW = (1 - M) * dW
            else:
                Ud = U.double()
                proj_out = dW - Ud @ (Ud.T @ dW)
            total += self.gamma * f * proj_out.square().sum().item()
        return total

    @property
    def penalty_flops_per_step(self) -> int:
        """Estimate of the penalty's work per optimizer step: ~4 FLOPs per parameter for the
        elementwise kappa*(W-A) added to the gradient, plus for each svd matrix two skinny
        matmuls (4*k*rows*cols) and ~3 elementwise ops (subtract, subtract, scale)."""
        if not self.enabled:
            return 0
        return 4 * self._numel + self._svd_flops
