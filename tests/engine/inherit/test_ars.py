"""ARS damping (method.md section 5): host and device versions against an independent reference."""
import math
import statistics

import numpy as np
import pytest
import torch

from engine.inherit.ars import ARS, ARSDevice


pytestmark = pytest.mark.usefixtures("one_thread")


def reference_factors(losses, sigma, *, detrended=False, window=10, seed=0, jitter=True):
    """method.md section 5 written out with the statistics module (independent of engine/inherit/ars.py)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    out, win = [], []
    for L in losses:
        win = (win + [L])[-window:]
        psi = 1.0
        if len(win) >= 2:
            xs = list(win)
            if detrended:
                ts = list(range(len(xs)))
                slope, icpt = statistics.linear_regression(ts, xs)
                xs = [x - (slope * t + icpt) for t, x in zip(ts, xs)]
            sd = statistics.pstdev(xs)
            if sd > 1e-12 * max(1.0, abs(statistics.fmean(win))):
                m = statistics.fmean(xs)
                z = [(x - m) / sd for x in xs]
                try:
                    rho = statistics.correlation(z[:-1], z[1:])
                    psi = 0.5 if abs(rho) > 0.5 else 1.0
                except statistics.StatisticsError:  # fewer than 2 pairs or a constant side
                    psi = 1.0
        mu = statistics.fmean(win)
        s = abs(L - mu) / (mu + 1e-8)
        gate = min(max(1 - min(0.1 * s, 1.0), 0.1), 1.0)
        chi = 1.0
        if psi < 1 and jitter:
            chi = min(max(rng.normal(1.0, sigma), 0.5), 2.0)
        out.append(min(max(psi * gate * chi, 0.1), 2.0))
    return out


FALLING = [5.0 - 0.1 * t for t in range(15)]


def test_hand_computed_falling_sequence():
    ars = ARS("seed", jitter_sigma=0.0)
    d = [ars.update(L, lr=0.0) for L in FALLING]  # sigma=0: chi == 1 exactly
    assert d[0] == 1.0  # one point: no guard, no surprise
    assert d[1] == pytest.approx(1 - 0.1 * 0.05 / (4.95 + 1e-8), abs=1e-12)  # 2 points: rho undefined
    assert d[2] == pytest.approx(0.5 * (1 - 0.1 * 0.1 / (4.9 + 1e-8)), abs=1e-12)  # linear: rho=1, guard on
    # window full (10 points ending at L_t): mu = L_t + 0.45, s = 0.45 / mu
    for t in range(9, 15):
        mu = FALLING[t] + 0.45
        assert d[t] == pytest.approx(0.5 * (1 - 0.1 * 0.45 / (mu + 1e-8)), abs=1e-12)
    assert d == pytest.approx(reference_factors(FALLING, 0.0), abs=1e-12)


def test_seed_mode_matches_reference_with_jitter():
    rng = np.random.default_rng(3)
    falling = [4.0 * math.exp(-t / 40) + 0.02 * rng.standard_normal() for t in range(60)]
    ars = ARS("seed", seed=7)
    d = [ars.update(L, lr=3e-3) for L in falling]  # sigma is 0.01 whatever the learning rate
    assert d == pytest.approx(reference_factors(falling, 0.01, seed=7), abs=1e-12)


def test_noisy_sequence_guard_off():
    rng = np.random.default_rng(0)
    noisy = list(3.0 + 0.05 * rng.standard_normal(40))
    ref_psi_on = reference_factors(noisy, 0.0)
    ars = ARS("seed", jitter_sigma=0.0)
    d, psi = [], []
    for L in noisy:
        d.append(ars.update(L, lr=0.0))
        psi.append(ars.last["psi"])
    assert d == pytest.approx(ref_psi_on, abs=1e-12)
    # white noise: once the window is full, the guard is mostly off (|rho| of 9 iid pairs is small)
    assert sum(p == 1.0 for p in psi[10:]) >= 0.7 * len(psi[10:])
    # and where it is off, d is just the surprise gate
    for t in range(10, 40):
        if psi[t] == 1.0:
            mu = statistics.fmean(noisy[t - 9:t + 1])
            assert d[t] == pytest.approx(1 - 0.1 * abs(noisy[t] - mu) / (mu + 1e-8), abs=1e-12)


def test_clip_bounds():
    rng = np.random.default_rng(1)
    wild = list(np.abs(rng.standard_normal(200)) * 10 ** rng.uniform(-2, 2, 200))
    for mode in ("seed", "detrended"):
        ars = ARS(mode, seed=1, jitter_sigma=1.0)
        d = [ars.update(L, lr=1e-3) for L in wild]  # sigma = 1: jitter hits both clips
        assert all(0.1 <= v <= 2.0 for v in d)
        # the upper clip never binds: chi <= 2 only multiplies Psi = 0.5, and the surprise gate G <= 1
        assert max(d) <= 1.0
    # the lower clip: a falling loss gives 0.5 * G ~ 0.49 once the guard is on
    ars = ARS("seed", clip=(0.6, 2.0), jitter_sigma=0.0)
    d = [ars.update(L, lr=0.0) for L in FALLING]
    assert d[2:] == [0.6] * (len(FALLING) - 2)
    ars = ARS("seed", clip=(0.1, 0.7), jitter_sigma=0.0)
    assert max(ars.update(L, lr=0.0) for L in FALLING) == 0.7
    # the surprise gate G reaches its floor 0.1 only for a spike ~9x the window mean (s -> 9 with window 10)
    ars = ARS("seed")
    for _ in range(9):
        ars.update(1e-9, 0.0)
    assert ars.update(1e6, 0.0) == pytest.approx(0.1, abs=1e-9)
    assert ARS("off").update(123.0, 1.0) == 1.0


@pytest.mark.parametrize("mode", ["seed", "detrended"])
def test_state_dict_roundtrip_bitwise(mode):
    rng = np.random.default_rng(2)
    seq = list(2.0 + 0.3 * np.sin(np.arange(50)) + 0.05 * rng.standard_normal(50))
    full = ARS(mode, seed=11)
    ref = [full.update(L, 1e-4) for L in seq]
    a = ARS(mode, seed=11)
    first = [a.update(L, 1e-4) for L in seq[:23]]
    state = a.state_dict()
    b = ARS(mode, seed=999)  # different seed: everything must come from the state
    b.load_state_dict(state)
    rest = [b.update(L, 1e-4) for L in seq[23:]]
    assert first + rest == ref  # bitwise
    assert any(x != 0.5 * round(x / 0.5) for x in ref)  # the jitter really was exercised


def test_detrended_fires_only_on_oscillation():
    seed_ars, det = ARS("seed"), ARS("detrended")
    fired_seed, fired_det = [], []
    for L in FALLING * 1 + [FALLING[-1] - 0.1 * t for t in range(1, 20)]:
        seed_ars.update(L, 0.0)
        det.update(L, 0.0)
        fired_seed.append(seed_ars.last["psi"] < 1)
        fired_det.append(det.last["psi"] < 1)
    assert all(fired_seed[2:]) and not any(fired_det)  # steady fall: raw guard always on
    osc = [5.0 - 0.02 * t + 0.05 * (-1) ** t for t in range(30)]
    det = ARS("detrended")
    fired = []
    for L in osc:
        det.update(L, 0.0)
        fired.append(det.last["psi"] < 1)
    assert all(fired[3:])
    ref = reference_factors(osc, 0.0, detrended=True)
    det2 = ARS("detrended", jitter_sigma=0.0)
    assert [det2.update(L, 0.0) for L in osc] == pytest.approx(ref, abs=1e-12)
    # white noise around a linear trend: detrended guard rarely fires
    rng = np.random.default_rng(5)
    noisy_fall = [5.0 - 0.01 * t + 0.02 * rng.standard_normal() for t in range(100)]
    det3, raw3 = ARS("detrended"), ARS("seed")
    nd = nr = 0
    for L in noisy_fall[:]:
        det3.update(L, 0.0), raw3.update(L, 0.0)
        nd += det3.last["psi"] < 1
        nr += raw3.last["psi"] < 1
    assert nd < nr


@pytest.mark.parametrize("mode", ["seed", "detrended", "off"])
def test_device_matches_host_without_jitter(mode):
    rng = np.random.default_rng(4)
    seqs = [
        FALLING,
        [5.0 - 0.02 * t + 0.05 * (-1) ** t for t in range(25)],
        list(3.0 + 0.05 * rng.standard_normal(40)),
        [2.0] * 12,  # constant: rho undefined
    ]
    for seq in seqs:
        host, dev = ARS(mode, jitter=False), ARSDevice(mode, jitter=False)
        for L in seq:
            L32 = torch.tensor(L, dtype=torch.float32)
            h = host.update(float(L32), 1e-3)
            d = dev.update(L32, 1e-3)
            assert d.shape == () and d.dtype == torch.float32
            assert d.item() == pytest.approx(h, abs=1e-6)
            assert (host.last["psi"] < 1) == (d.item() < 0.75 * host.last["surprise_gate"])  # same guard decision


def test_device_jitter_only_when_guarded_and_roundtrip():
    seq = FALLING + [3.0] * 5
    dev = ARSDevice("seed", seed=3)
    host = ARS("seed", jitter=False)
    vals = []
    for L in seq:
        v = dev.update(torch.tensor(L), 1e-4).item()
        h = host.update(float(torch.tensor(L)), 1e-4)
        if host.last["psi"] == 1.0:
            assert v == pytest.approx(h, abs=1e-6)  # no jitter when the guard is off
        assert 0.1 <= v <= 2.0
        vals.append(v)
    assert any(abs(v - h0) > 1e-4 for v, h0 in zip(vals[2:15], reference_factors(FALLING, 0.0)[2:]))
    a = ARSDevice("detrended", seed=5)
    full = ARSDevice("detrended", seed=5)
    osc = [5.0 - 0.02 * t + 0.05 * (-1) ** t for t in range(30)]
    ref = [full.update(torch.tensor(L), 1e-4).item() for L in osc]
    first = [a.update(torch.tensor(L), 1e-4).item() for L in osc[:13]]
    b = ARSDevice("detrended", seed=0)
    b.load_state_dict(a.state_dict())
    assert first + [b.update(torch.tensor(L), 1e-4).item() for L in osc[13:]] == ref


@pytest.mark.parametrize("mode", ["seed", "detrended"])
def test_device_update_refused_by_ok_then_rolled_back_leaves_no_trace(mode):
    """The trainer's lagged non-finite guard: an update with ok=False (a NaN loss the device
    skipped), then rollback(), must leave ARS as if it never happened (jitter off: the random
    stream is the one thing a refused update still advances)."""
    losses = [5.0 - 0.02 * t + 0.05 * (-1) ** t for t in range(25)]
    clean, guarded = ARSDevice(mode, jitter=False), ARSDevice(mode, jitter=False)
    want = [clean.update(torch.tensor(L), 1e-4).item() for L in losses]
    got = []
    for t, L in enumerate(losses):
        if t in (1, 12, 13):  # including back-to-back refusals and one before the window fills
            guarded.update(torch.tensor(float("nan")), 1e-4, ok=torch.tensor(False))
            guarded.rollback()
        got.append(guarded.update(torch.tensor(L), 1e-4, ok=torch.tensor(True)).item())
    assert got == want
    assert guarded.steps == clean.steps and guarded.state_dict()["count"] == clean.state_dict()["count"]
    assert torch.equal(guarded.buf, clean.buf)


@pytest.mark.parametrize("cls", ["host", "device"])
def test_jitter_sigma_is_the_seeds_operating_point(cls):
    """chi ~ N(1, 0.01^2) at any learning rate (method.md section 5). A falling loss keeps the guard
    on; chi is read from the host's components, or as the ratio of a jittered to an unjittered
    device ARS fed the same losses."""
    losses = [10.0 - 0.001 * t for t in range(2000)]
    if cls == "host":
        ars, chis = ARS("seed", seed=5), []
        for L in losses:
            ars.update(L, 5e-3)
            if ars.last["psi"] < 1:
                chis.append(ars.last["chi"])
    else:
        a, b = ARSDevice("seed", seed=5), ARSDevice("seed", seed=5, jitter=False)
        pairs = [(float(a.update(torch.tensor(L, dtype=torch.float64), 5e-3)),
                  float(b.update(torch.tensor(L, dtype=torch.float64), 5e-3))) for L in losses]
        chis = [x / y for x, y in pairs if y < 0.75]  # guard on: d ~ 0.5
    chis = np.array(chis)
    assert len(chis) > 1000 and abs(chis.mean() - 1.0) < 2e-3 and 0.009 < chis.std() < 0.011
    with pytest.raises(ValueError, match="jitter_sigma"):
        ARS("seed", jitter_sigma=-1.0)
