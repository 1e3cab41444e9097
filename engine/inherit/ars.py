"""ARS, "Adaptive Resonance Suppression" gradient damping (method.md section 5).

Each step, from the task loss L_t (not loss + Phi) and a window of the last `window` losses
(including L_t), a factor d_t scales the gradient inside the optimizer step (g <- d_t * g):

- entropy guard Psi_t: z-score the window, rho = lag-1 autocorrelation (Pearson correlation of
  z[:-1] with z[1:]); Psi_t = guard_factor (0.5) if |rho| > guard_threshold (0.5) else 1; 1 when
  the window has fewer than 2 points or rho is undefined (constant window / zero variance);
- surprise gate G_t: mu = window mean (including L_t), s = |L_t - mu| / (mu + 1e-8),
  G_t = clip(1 - min(surprise_damping * s, 1), 0.1, 1) (the seeds call it Phi_t; it is not the
  penalty Phi of engine/inherit/penalty.py);
- Chronos jitter chi_t: only when Psi_t < 1, chi_t ~ N(1, sigma^2) with sigma = 0.01, clipped to
  [0.5, 2]; else 1 (seeded generator);
- d_t = clip(Psi_t * G_t * chi_t, clip[0], clip[1]).

Modes: "seed" exactly as above (the seeds' reference); "detrended": rho computed on the window
after removing its least-squares linear trend, so a steadily falling loss (raw rho ~ 1, guard
almost always on) does not fire it and oscillation does; "off": d_t = 1.

Sigma (method.md section 5, revised): the seeds' code writes sigma = 0.01 * lr / 1e-5, which is 0.01
at their learning rate of 1e-5. Evaluated at ours (1e-3 to 1e-2) it would be 1 to 10, saturating
the clip and turning the jitter into a coin flip between 0.5 and 2; we keep the seeds' operating
value 0.01, independent of the learning rate (`jitter_sigma`). A curved
(non-linear) loss curve leaves a smooth residual after detrending, which has high lag-1
autocorrelation too, so "detrended" can also fire on strong curvature within the window.

"Undefined" rho, made precise so the host and device versions agree bitwise-in-decision: the
(detrended) window's standard deviation is <= 1e-12 * max(1, |mean of the raw window|) (this
catches constant and exactly linear windows, whose float residuals are rounding noise), or a
lag-pair variance is exactly zero.

`ARS` runs on the host (Python floats, float64 numpy; needs the loss as a float, i.e. one host
sync per step if the loss lives on a GPU). `ARSDevice` computes the same statistics with torch
ops on a device ring buffer and returns a 0-dim tensor: no host sync. Its jitter stream comes
from a torch.Generator and is drawn every step (masked by Psi < 1) so it differs from the host
stream, same formula.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

MODES = ("off", "seed", "detrended")
JITTER_SIGMA = 0.01  # the seeds' operating point (0.01 * lr / 1e-5 at their lr = 1e-5)
_JITTER_CLIP = (0.5, 2.0)
_SURPRISE_CLIP = (0.1, 1.0)
_UNDEFINED_RTOL = 1e-12


def _lag1_rho(x: np.ndarray, detrended: bool) -> float | None:
    """Lag-1 autocorrelation of the z-scored window (None when undefined)."""
    n = x.size
    if n < 2:
        return None
    scale = max(1.0, abs(float(x.mean())))
    r = x - x.mean()
    if detrended:
        t = np.arange(n, dtype=np.float64)
        t -= t.mean()
        r = r - (float((t * r).sum()) / float((t * t).sum())) * t
    std = math.sqrt(float((r * r).mean()))
    if std <= _UNDEFINED_RTOL * scale:
        return None
    z = r / std
    a, b = z[:-1] - z[:-1].mean(), z[1:] - z[1:].mean()
    saa, sbb = float((a * a).sum()), float((b * b).sum())
    if saa == 0.0 or sbb == 0.0:
        return None
    return float((a * b).sum()) / math.sqrt(saa * sbb)


class ARSSettings:
    """The settings the host and the device ARS share (method.md section 5), checked once."""

    def __init__(
        self,
        mode: str = "off",
        window: int = 10,
        guard_threshold: float = 0.5,
        surprise_damping: float = 0.1,
        clip: tuple[float, float] = (0.1, 2.0),
        seed: int = 0,
        *,
        guard_factor: float = 0.5,
        jitter: bool = True,
        jitter_sigma: float = JITTER_SIGMA,
    ):
        if mode not in MODES:
            raise ValueError(f"ARS mode must be one of {MODES}, got {mode!r}")
        if window < 1:
            raise ValueError("ARS window must be >= 1")
        self.mode, self.window = mode, int(window)
        self.guard_threshold, self.surprise_damping = float(guard_threshold), float(surprise_damping)
        self.clip = (float(clip[0]), float(clip[1]))
        self.guard_factor, self.jitter = float(guard_factor), bool(jitter)
        if not 0 <= jitter_sigma < math.inf:
            raise ValueError(f"ARS jitter_sigma must be a finite number >= 0, got {jitter_sigma!r}")
        self.jitter_sigma = float(jitter_sigma)
        self.seed = seed
        self.steps = 0


class ARS(ARSSettings):
    """Host ARS (method.md section 5), built from ARSSettings' arguments. `update(loss, lr) -> d_t`
    (a Python float)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._rng = np.random.Generator(np.random.PCG64(self.seed))
        self.losses: list[float] = []
        # last step's components, for logging
        self.last = {"psi": 1.0, "surprise_gate": 1.0, "chi": 1.0, "rho": None, "d": 1.0}

    def update(self, loss: float, lr: float) -> float:
        self.steps += 1
        if self.mode == "off":
            return 1.0
        loss = float(loss)
        self.losses.append(loss)
        if len(self.losses) > self.window:
            del self.losses[0]
        x = np.asarray(self.losses, dtype=np.float64)
        rho = _lag1_rho(x, detrended=self.mode == "detrended")
        psi = self.guard_factor if (rho is not None and abs(rho) > self.guard_threshold) else 1.0
        mu = float(x.mean())
        s = abs(loss - mu) / (mu + 1e-8)
        gate = min(max(1.0 - min(self.surprise_damping * s, 1.0), _SURPRISE_CLIP[0]), _SURPRISE_CLIP[1])
        chi = 1.0
        if psi < 1.0 and self.jitter:
            chi = min(max(float(self._rng.normal(1.0, self.jitter_sigma)), _JITTER_CLIP[0]), _JITTER_CLIP[1])
        d = min(max(psi * gate * chi, self.clip[0]), self.clip[1])
        self.last = {"psi": psi, "surprise_gate": gate, "chi": chi, "rho": rho, "d": d}
        return d

    def state_dict(self) -> dict:
        return {
            "mode": self.mode,
            "losses": list(self.losses),
            "steps": self.steps,
            "rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["mode"] != self.mode:
            raise ValueError(f"ARS state is for mode {state['mode']!r}, this ARS is {self.mode!r}")
        self.losses = [float(v) for v in state["losses"]][-self.window:]
        self.steps = int(state["steps"])
        self._rng.bit_generator.state = state["rng"]


class ARSDevice(ARSSettings):
    """Device-side ARS (method.md section 5: "computing the statistics on the device from a ring
    buffer avoids a host sync per step"). `update(loss_tensor, lr) -> 0-dim float32 tensor` on
    the buffer's device; no `.item()` anywhere. The window is kept in chronological order by a
    shift (window <= a few dozen elements, so this is one tiny kernel), and the number of valid
    entries is a host int (it only depends on how many times update was called). Statistics in
    float64 (tiny) so decisions match the host version. Built from ARSSettings' arguments and the
    `device` of its buffers."""

    def __init__(self, *args, device: torch.device | str = "cpu", **kwargs):
        super().__init__(*args, **kwargs)
        self.device = torch.device(device)
        self.buf = torch.zeros(self.window, dtype=torch.float64, device=self.device)
        self.count = 0
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(self.seed)
        self._one = torch.ones((), dtype=torch.float32, device=self.device)
        if self.window >= 2:
            t = torch.arange(self.window, dtype=torch.float64, device=self.device)
            self._t = [None, None] + [t[:n] - t[:n].mean() for n in range(2, self.window + 1)]

    @torch.no_grad()
    def update(self, loss: Tensor, lr: float | Tensor, ok: Tensor | None = None) -> Tensor:
        """`ok` (0-dim bool device tensor, optional): False leaves the window as it was (a step the
        trainer skips on the device for a non-finite loss); the host count is then put right by
        `rollback()` once the trainer has read the flag."""
        self.steps += 1
        if self.mode == "off":
            return self._one
        L = loss.detach().reshape(()).to(dtype=torch.float64)
        shifted = torch.cat([self.buf[1:], L.reshape(1)])
        self.buf.copy_(shifted if ok is None else torch.where(ok, shifted, self.buf))
        self.count += 1  # updates so far (unbounded, so a rollback is exact); the window holds min(count, window)
        n = min(self.count, self.window)
        x = self.buf[self.window - n:]
        mu = x.mean()
        if n >= 2:
            scale = torch.clamp(mu.abs(), min=1.0)
            r = x - mu
            if self.mode == "detrended":
                t = self._t[n]
                r = r - ((t * r).sum() / (t * t).sum()) * t
            std = (r * r).mean().sqrt()
            defined = std > _UNDEFINED_RTOL * scale
            z = r / torch.where(defined, std, torch.ones_like(std))
            a, b = z[:-1] - z[:-1].mean(), z[1:] - z[1:].mean()
            saa, sbb = (a * a).sum(), (b * b).sum()
            defined = defined & (saa > 0) & (sbb > 0)
            rho = (a * b).sum() / torch.where(defined, (saa * sbb).sqrt(), torch.ones_like(saa))
            fire = defined & (rho.abs() > self.guard_threshold)
            psi = torch.where(fire, torch.full_like(mu, self.guard_factor), torch.ones_like(mu))
        else:
            fire = torch.zeros((), dtype=torch.bool, device=self.device)
            psi = torch.ones_like(mu)
        s = (L - mu).abs() / (mu + 1e-8)
        gate = (1.0 - torch.clamp(self.surprise_damping * s, max=1.0)).clamp(*_SURPRISE_CLIP)
        d = psi * gate
        if self.jitter:
            # drawn every step (no data-dependent control flow), used only where the guard fired
            noise = torch.randn((), generator=self.gen, dtype=torch.float64, device=self.device)
            chi = (1.0 + self.jitter_sigma * noise).clamp(*_JITTER_CLIP)
            d = d * torch.where(fire, chi, torch.ones_like(chi))
        return d.clamp(*self.clip).to(torch.float32)

    def rollback(self) -> None:
        """Undo the host bookkeeping of the last update whose `ok` turned out False."""
        self.steps -= 1
        if self.mode != "off":
            self.count -= 1

    def state_dict(self) -> dict:
        return {
            "mode": self.mode,
            "buf": self.buf.tolist(),  # float64 -> JSON floats, exact (checkpoints keep this state in JSON)
            "count": min(self.count, self.window),
            "steps": self.steps,
            "gen": self.gen.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["mode"] != self.mode:
            raise ValueError(f"ARS state is for mode {state['mode']!r}, this ARS is {self.mode!r}")
        self.buf.copy_(torch.as_tensor(state["buf"], dtype=torch.float64))
        self.count, self.steps = int(state["count"]), int(state["steps"])
        self.gen.set_state(state["gen"])
