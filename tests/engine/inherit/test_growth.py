"""Growth operator (method.md section 2): exact function preservation, symmetry breaking, anchor /
mask / Fisher / moment carry-over. Old models are first trained a few AdamW steps
(tests/helpers/growth.py) so that c_proj and lm_head are non-trivial."""
import math
import re

import pytest
import torch

from engine.inherit.fisher import posthoc_fisher
from engine.inherit.growth import SPLIT_NOISE, WIDTH_INITS, grow, growth_logit_error
from models.gpt import LM_HEAD_STD
from tests.helpers.growth import T, V, batches, cfg, train_, trained


pytestmark = pytest.mark.usefixtures("one_thread")


TOL = 1e-5 * 15.0  # 1e-5 * softcap


ERRORS: dict = {}


PLACEMENT_CYCLE = ("end", "middle", "copy-middle")


def check_growth(old, kind, d1, placement, seed):
    d0 = old.config.depth
    res = grow(old, cfg(kind, d1), seed=seed, placement=placement)
    new = res.model
    assert len(new.blocks) == d1 and res.width == (cfg(kind, d0).model_dim, cfg(kind, d1).model_dim)
    assert res.c == pytest.approx(math.sqrt(res.width[1] / res.width[0]))
    err = growth_logit_error(old, new, V, T, n_batches=2, seed=d0, batch_size=1)
    ERRORS.setdefault(kind, []).append((d0, d1, placement, res.width, err))
    assert err <= TOL, f"{kind} {d0}->{d1} {placement}: max logit error {err:.3e} > {TOL:.1e}"
    # the check is not vacuous: the old model's logits are O(1)
    with torch.no_grad():
        assert old(batches(1, 0)[0][0]).std() > 0.5
    pos = {"end": d0, "middle": d0 // 2, "copy-middle": d0 // 2}[placement]
    assert res.new_layer_indices == list(range(pos, pos + d1 - d0))
    return res


# Every (d, d+1) pair of each preset's range, as a ladder: grow, check, train the grown model two
# AdamW steps (so its new layers and coordinates are non-trivial too), grow again. Placements
# cycle, so every placement is checked at several sizes. The whole file runs in ~35 s on one thread.
CHAINS = [
    pytest.param("cpu-tiny", 1, 5, id="cpu-tiny-1to5"),
    pytest.param("nanochat", 1, 4, id="nanochat-1to4"),  # 1->2, 3->4 depth-only; 2->3 heads grow
    pytest.param("tiny-hd64", 1, 4, id="tiny-hd64-1to4"),  # same pattern at aspect 32 / head_dim 64
    pytest.param("cpu-tiny", 5, 13, id="cpu-tiny-5to13"),
    pytest.param("nanochat", 4, 9, id="nanochat-4to9"),
]


@pytest.mark.parametrize("kind,start,stop", CHAINS)
def test_growth_ladder_preserves_logits(kind, start, stop):
    model = trained(kind, start)
    for d in range(start, stop):
        res = check_growth(model, kind, d + 1, PLACEMENT_CYCLE[d % 3], seed=d)
        model = train_(res.model, seed=200 + d)


@pytest.mark.parametrize("kind,d0,d1,placement", [("cpu-tiny", 2, 5, "end"), ("nanochat", 2, 5, "middle"),
                                                   ("cpu-tiny", 1, 4, "copy-middle"), ("tiny-hd64", 2, 4, "end")])
def test_growth_jumps_preserve_logits(kind, d0, d1, placement):
    check_growth(trained(kind, d0), kind, d1, placement, seed=11)


def test_without_c_rescale_growth_is_not_exact():
    """Sensitivity of the logit check: undoing the 1/c of mlp.c_proj and lm_head breaks exactness."""
    old = trained("cpu-tiny", 2)
    res = grow(old, cfg("cpu-tiny", 3), seed=7)
    with torch.no_grad():
        D = res.width[0]
        res.model.lm_head.weight[:, :D] *= res.c
        for b in res.model.blocks:
            b.mlp.c_proj.weight[:D, :] *= res.c
    assert growth_logit_error(old, res.model, V, T, n_batches=1) > 100 * TOL


def test_float64_growth_error():
    old = trained("nanochat", 2)
    res = grow(old, cfg("nanochat", 3), seed=7)
    import copy

    o64, n64 = copy.deepcopy(old).double(), res.model.double()
    # logits are cast to fp32 inside GPT.forward, so ~1e-7 is the floor here
    assert growth_logit_error(o64, n64, V, T, n_batches=1) < 2e-6


def test_fresh_values_mask_anchor():
    old = trained("cpu-tiny", 2)
    res = grow(old, cfg("cpu-tiny", 4), seed=3, placement="middle")
    new, D, D2 = res.model, *res.width
    c = res.c
    P = dict(new.named_parameters())
    assert res.new_layer_indices == [1, 2]
    assert res.anchor.keys() == res.mask.keys() == P.keys()
    for n, p in P.items():
        assert torch.equal(res.anchor[n], p.detach()) and res.anchor[n].data_ptr() != p.data_ptr()
        assert res.mask[n].dtype == torch.float32
    bound = math.sqrt(3) / math.sqrt(D2)
    ob = old.blocks[1]
    nb = new.blocks[3]  # old block 1 moved past the 2 inserted layers
    for name in ("c_q", "c_k", "c_v"):
        w = getattr(nb.attn, name).weight
        assert torch.equal(w[:D, :D], getattr(ob.attn, name).weight)
        fresh = torch.cat([w[D:, :].flatten(), w[:D, D:].flatten()])
        assert fresh.abs().max() <= bound and fresh.abs().max() > 0.9 * bound
    w = nb.mlp.c_fc.weight
    assert torch.equal(w[: 4 * D, :D], ob.mlp.c_fc.weight) and w[4 * D:].abs().max() <= bound
    w = nb.attn.c_proj.weight
    assert torch.equal(w[:D, :D], ob.attn.c_proj.weight) and w[D:].abs().sum() == 0 and w[:, D:].abs().sum() == 0
    w = nb.mlp.c_proj.weight
    torch.testing.assert_close(w[:D, : 4 * D], ob.mlp.c_proj.weight / c, rtol=1e-6, atol=0)
    assert w[D:].abs().sum() == 0 and w[:, 4 * D:].abs().sum() == 0
    assert torch.equal(new.wte.weight[:, :D], old.wte.weight) and new.wte.weight[:, D:].abs().sum() == 0
    lm = new.lm_head.weight
    torch.testing.assert_close(lm[:, :D], old.lm_head.weight / c, rtol=1e-6, atol=0)
    assert abs(lm[:, D:].std().item() - LM_HEAD_STD) < 0.15 * LM_HEAD_STD
    for j in res.new_layer_indices:
        b = new.blocks[j]
        assert b.attn.c_proj.weight.abs().sum() == 0 and b.mlp.c_proj.weight.abs().sum() == 0
        assert b.attn.c_q.weight.abs().max() <= bound and b.attn.c_q.weight.std() > 0.5 * bound / math.sqrt(3)
        assert all(res.mask[n].sum() == 0 for n in P if n.startswith(f"blocks.{j}."))
    m = res.mask["blocks.3.mlp.c_fc.weight"]
    assert m[: 4 * D, :D].min() == 1 and m.sum() == 4 * D * D
    # same seed -> same model; other seed -> other fresh values
    again = grow(old, cfg("cpu-tiny", 4), seed=3, placement="middle").model
    assert all(torch.equal(a, b) for a, b in zip(new.parameters(), again.parameters()))
    other = grow(old, cfg("cpu-tiny", 4), seed=4, placement="middle").model
    assert not torch.equal(other.blocks[3].attn.c_q.weight, nb.attn.c_q.weight)
    cm = grow(old, cfg("cpu-tiny", 3), seed=3, placement="copy-middle")
    src, cp = cm.model.blocks[2], cm.model.blocks[1]  # old block 1 (= 2//2) now at 2, copy at 1
    assert torch.equal(src.attn.c_q.weight, cp.attn.c_q.weight) and torch.equal(src.mlp.c_fc.weight, cp.mlp.c_fc.weight)
    assert cp.mlp.c_proj.weight.abs().sum() == 0 and src.mlp.c_proj.weight.abs().sum() > 0
    with pytest.raises(ValueError):
        grow(old, cfg("cpu-tiny", 1), seed=0)
    with pytest.raises(ValueError):
        grow(old, cfg("cpu-tiny", 3), seed=0, placement="front")


def full_vocab_batch(seed):
    """Inputs covering every token, so every row of wte's new columns is read."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randperm(V, generator=g).view(8, T)
    return x, torch.randint(0, V, (8, T), generator=g)


def loss_backward_dead_units(model, x, y):
    """loss.backward() on (x, y); returns, per block, the ReLU^2 hidden units inactive on every token.
    Their write-out columns (and read-in rows) get no gradient whatever growth does -- a property
    of ReLU, not of inheritance -- so they are exempt from the "has moved" checks (their share is
    asserted small)."""
    dead, hooks = {}, []
    for i, b in enumerate(model.blocks):
        def hook(mod, inp, out, i=i):
            dead[i] = (out.detach() <= 0).flatten(0, -2).all(0)
        hooks.append(b.mlp.c_fc.register_forward_hook(hook))
    try:
        model(x, y).backward()
    finally:
        for h in hooks:
            h.remove()
    return dead


def exempt_mask(name, shape, dead):
    ex = torch.zeros(shape, dtype=torch.bool)
    parts = name.split(".")
    if parts[0] == "blocks" and parts[2] == "mlp":
        dd = dead[int(parts[1])]
        if parts[3] == "c_proj":
            ex[:, dd] = True
        else:
            ex[dd, :] = True
    return ex


@pytest.mark.parametrize("kind,d0,d1,placement", [("cpu-tiny", 2, 3, "end"), ("nanochat", 2, 3, "middle"),
                                                   ("tiny-hd64", 1, 3, "copy-middle")])
def test_every_new_coordinate_moves(kind, d0, d1, placement):
    old = trained(kind, d0)
    x, y = full_vocab_batch(1)
    for wd in (0.01, 0.0):
        res = grow(old, cfg(kind, d1), seed=5, placement=placement)
        new = res.model
        opt = torch.optim.AdamW(new.parameters(), lr=1e-3, weight_decay=wd)
        dead1 = loss_backward_dead_units(new, x, y)
        assert sum(d.sum().item() for d in dead1.values()) <= 0.1 * sum(d.numel() for d in dead1.values())
        grads1 = {n: p.grad.clone() for n, p in new.named_parameters()}
        opt.step()
        opt.zero_grad()
        for n, p in new.named_parameters():
            fresh = res.mask[n] == 0
            if not fresh.any():
                continue
            live = fresh & ~exempt_mask(n, p.shape, dead1)
            zero_init = (res.anchor[n] == 0) & live
            # zero-initialised new coordinates (the "writers") get a gradient at the first step
            assert (grads1[n][zero_init] != 0).all(), f"{n}: zero-init new coordinate without gradient"
            if wd > 0:  # AdamW: after ONE step every new coordinate has moved
                moved = (p.detach() != res.anchor[n])[live]
                assert moved.all(), f"{n}: {(~moved).sum().item()} new coordinates did not move"
        if wd == 0:
            # without weight decay the random "readers" see zero inputs / zero output gradients at
            # step 1 and start moving at step 2
            dead2 = loss_backward_dead_units(new, x, y)
            opt.step()
            for n, p in new.named_parameters():
                live = (res.mask[n] == 0) & ~exempt_mask(n, p.shape, dead1) & ~exempt_mask(n, p.shape, dead2)
                assert (p.detach() != res.anchor[n])[live].all(), f"{n}: not moved after 2 steps (wd=0)"


@pytest.mark.parametrize("kind,d0,d1,width_init", [("cpu-tiny", 2, 3, "zero"), ("nanochat", 2, 3, "zero"),
                                                  ("tiny-hd64", 1, 2, "zero"), ("cpu-tiny", 2, 3, "split"),
                                                  ("cpu-tiny", 1, 3, "split"), ("nanochat", 2, 3, "split")])
def test_fisher_carry_over_equals_grown_model_fisher(kind, d0, d1, width_init):
    """The strongest check of the c^2 factor (and, with width_init="split", of the 1/(k+1)^2 on a
    split source's read-ins): the empirical Fisher of the grown model at the moment of growth, on
    the same batches, equals the carried Fisher on inherited coordinates."""
    old = trained(kind, d0)
    bs = batches(2, seed=42)
    omega, _ = posthoc_fisher(old, bs)
    res = grow(old, cfg(kind, d1), seed=1, fisher=omega, width_init=width_init, split_noise=0.0)
    omega_new, _ = posthoc_fisher(res.model, bs)
    c2 = res.c**2
    for n, carried in res.fisher.items():
        m = res.mask[n] > 0
        assert (carried[~m] == 0).all(), n
        if not m.any():  # an inserted layer: nothing inherited
            continue
        got, want = omega_new[n][m], carried[m]
        scale = want.abs().max().item()
        assert scale > 0, n
        torch.testing.assert_close(got, want, rtol=2e-3, atol=1e-4 * scale, msg=n)
        if n.endswith("mlp.c_proj.weight") or n == "lm_head.weight":
            region = carried[tuple(slice(0, s) for s in omega[n].shape)]
            torch.testing.assert_close(region, omega[n] * c2)  # c^2 where the weight was times 1/c
    if d1 > d0 and res.width[0] != res.width[1]:
        assert c2 > 1.0


def test_moments_carried_padded_and_rescaled():
    """Carried Adam moments (method.md section 2): the parent's m and v on inherited coordinates,
    m * c and v * c^2 where the weight was multiplied by 1/c, zero on new coordinates."""
    old = trained("cpu-tiny", 2)
    gen = torch.Generator().manual_seed(3)
    moments = {n: {"exp_avg": torch.randn(p.shape, generator=gen), "exp_avg_sq": torch.rand(p.shape, generator=gen)}
               for n, p in old.named_parameters()}
    res = grow(old, cfg("cpu-tiny", 3), seed=1, moments=moments)
    assert res.fisher is None and res.c > 1
    for n, mv in res.moments.items():
        m = res.mask[n] > 0
        for key, power in (("exp_avg", 1), ("exp_avg_sq", 2)):
            assert (mv[key][~m] == 0).all(), (n, key)
        if n in moments:  # same name, same place (end placement keeps old layers' indices)
            region = tuple(slice(0, k) for k in moments[n]["exp_avg"].shape)
            rescaled = n.endswith("mlp.c_proj.weight") or n == "lm_head.weight"
            assert torch.equal(mv["exp_avg"][region], moments[n]["exp_avg"] * (res.c if rescaled else 1.0)), n
            assert torch.equal(mv["exp_avg_sq"][region],
                               moments[n]["exp_avg_sq"] * (res.c * res.c if rescaled else 1.0)), n
    with pytest.raises(KeyError, match="moments lacks entries"):
        grow(old, cfg("cpu-tiny", 3), seed=1, moments={})


@pytest.mark.parametrize("placement", ["end", "middle", "copy-middle"])
def test_depth_init_copy_stacks_a_trained_layer(placement):
    """G_stack-style depth growth: each inserted layer is a whole copy of a trained neighbour
    (write-outs included), so the function changes, by an amount growth_logit_error measures."""
    old, new_cfg = trained("cpu-tiny", 2), cfg("cpu-tiny", 4)
    exact = grow(old, new_cfg, seed=1, placement=placement)
    res = grow(old, new_cfg, seed=1, placement=placement, depth_init="copy")
    assert res.new_layer_indices == exact.new_layer_indices and len(res.new_layer_indices) == 2
    old_idx = [i for i in range(4) if i not in res.new_layer_indices]  # copy-middle copies old layer 2 // 2 = 1
    src = (old_idx[1] if placement == "copy-middle"
           else max([i for i in old_idx if i < res.new_layer_indices[0]] or old_idx[:1]))
    want = res.model.blocks[src].state_dict()
    for j in res.new_layer_indices:
        for k, v in res.model.blocks[j].state_dict().items():
            assert torch.equal(v, want[k]), (j, k)
        assert res.model.blocks[j].mlp.c_proj.weight.abs().sum() > 0  # write-outs copied, not zero
        assert (res.mask[f"blocks.{j}.mlp.c_fc.weight"] == 0).all()  # still new capacity for the penalty
    assert growth_logit_error(old, exact.model, new_cfg.vocab_size, 32) < 1e-4
    assert growth_logit_error(old, res.model, new_cfg.vocab_size, 32) > 1e-3
    with pytest.raises(ValueError, match="depth_init must be one of"):
        grow(old, new_cfg, seed=1, depth_init="zero")


# width_init="split" (Net2Net / bert2BERT): new heads and hidden units copy trained ones

def split_sources(new_w, D, n_old, size):
    """For each new unit (`size` rows of a read-in), the old unit whose inherited rows are closest:
    found from the weights alone, independently of how growth chose them."""
    old_units = new_w[: n_old * size, :D].reshape(n_old, -1)
    new_units = new_w[n_old * size:, :D].reshape(-1, old_units.size(1))
    return torch.cdist(new_units.double(), old_units.double()).argmin(dim=1)


@pytest.mark.parametrize("kind,d0,d1,placement", [("cpu-tiny", 2, 3, "end"), ("cpu-tiny", 3, 5, "middle"),
                                                   ("cpu-tiny", 1, 3, "copy-middle"), ("nanochat", 2, 3, "end")])
def test_width_split_without_noise_preserves_logits(kind, d0, d1, placement):
    old = trained(kind, d0)
    res = grow(old, cfg(kind, d1), seed=2, placement=placement, width_init="split", split_noise=0.0)
    err = growth_logit_error(old, res.model, V, T, n_batches=2, seed=d0, batch_size=1)
    ERRORS.setdefault(f"{kind} split", []).append((d0, d1, placement, res.width, err))
    assert err <= TOL, f"{kind} {d0}->{d1} split: max logit error {err:.3e} > {TOL:.1e}"


@pytest.mark.parametrize("noise", [0.0, SPLIT_NOISE])
def test_width_split_copies_trained_units(noise):
    """Every new hidden unit / head of an inherited layer reads like a trained one (up to the noise)
    and the write-outs of a source and its copies are equal shares summing to the source's."""
    old, (d0, d1) = trained("cpu-tiny", 2), (2, 3)
    old_cfg = cfg("cpu-tiny", d0)
    zero = grow(old, cfg("cpu-tiny", d1), seed=4)
    res = grow(old, cfg("cpu-tiny", d1), seed=4, width_init="split", split_noise=noise)
    D = old_cfg.model_dim
    for i, (ob, nb) in enumerate(zip(old.blocks, res.model.blocks)):
        for readers, writer, n_old, size in (((nb.mlp.c_fc,), nb.mlp.c_proj, old_cfg.mlp_dim, 1),
                                             ((nb.attn.c_q, nb.attn.c_k, nb.attn.c_v), nb.attn.c_proj,
                                              old_cfg.n_head, old_cfg.head_dim)):
            src = split_sources(readers[0].weight, D, n_old, size)
            for r in readers:
                w = r.weight
                rows = torch.cat([torch.arange(s * size, (s + 1) * size) for s in src.tolist()])
                want, got = w[rows, :D], w[n_old * size:, :D]
                if noise == 0:
                    assert torch.equal(got, want)
                else:
                    rel = (got - want).norm() / want.norm()
                    assert 0.3 * noise < rel < 3 * noise, rel
            check_split_write_out(writer.weight, zero.model.blocks[i], writer is nb.mlp.c_proj, src, n_old, size, D)
        for n in ("mlp.c_fc", "attn.c_q", "mlp.c_proj"):  # copies are new capacity for the penalty
            m = res.mask[f"blocks.{i}.{n}.weight"]
            assert torch.equal(m, zero.mask[f"blocks.{i}.{n}.weight"])


def check_split_write_out(w, zero_block, is_mlp, src, n_old, size, D):
    """Source and copies each hold 1/(k+1) of the source's column (as grown with width_init="zero")."""
    full = (zero_block.mlp.c_proj if is_mlp else zero_block.attn.c_proj).weight[:D, : n_old * size]
    full = full.unflatten(1, (n_old, size))
    got = w[:D].unflatten(1, (-1, size))
    assert w[D:].abs().sum() == 0  # new stream coordinates are still written by nothing
    total = got[:, :n_old].clone()
    for k, s in enumerate(src.tolist()):
        assert torch.equal(got[:, n_old + k], got[:, s])
        total[:, s] += got[:, n_old + k]
    torch.testing.assert_close(total, full, rtol=1e-6, atol=1e-7)
    uncopied = torch.bincount(src, minlength=n_old) == 0  # their columns are unchanged, bitwise
    assert torch.equal(got[:, :n_old][:, uncopied], full[:, uncopied])


def test_width_split_noise_changes_the_function_a_little():
    old = trained("cpu-tiny", 2)
    exact = grow(old, cfg("cpu-tiny", 3), seed=4, width_init="split", split_noise=0.0)
    noisy = grow(old, cfg("cpu-tiny", 3), seed=4, width_init="split")
    err = growth_logit_error(old, noisy.model, V, T, n_batches=2, batch_size=1)
    ERRORS.setdefault("cpu-tiny split noise", []).append((2, 3, "end", noisy.width, err))
    assert 10 * TOL < err < 0.05, err
    changed = [n for n, p in noisy.model.named_parameters()
               if not torch.equal(p, dict(exact.model.named_parameters())[n])]
    assert changed and all(n.endswith(("c_fc.weight", "c_q.weight", "c_k.weight", "c_v.weight")) for n in changed)


def test_width_zero_is_the_default_and_split_moments():
    """width_init="zero" is the old path bitwise (split_noise unused); split carries zero moments to
    the copies and m / (k+1), v / (k+1)^2 to a source's read-in rows; bad values are named."""
    old = trained("cpu-tiny", 2)
    gen = torch.Generator().manual_seed(3)
    moments = {n: {"exp_avg": torch.randn(p.shape, generator=gen), "exp_avg_sq": torch.rand(p.shape, generator=gen)}
               for n, p in old.named_parameters()}
    base = grow(old, cfg("cpu-tiny", 3), seed=1, moments=moments)
    zero = grow(old, cfg("cpu-tiny", 3), seed=1, moments=moments, width_init="zero", split_noise=0.5)
    for a, b in zip(base.model.parameters(), zero.model.parameters()):
        assert torch.equal(a, b)
    assert all(torch.equal(base.mask[n], zero.mask[n])
               and torch.equal(base.moments[n]["exp_avg_sq"], zero.moments[n]["exp_avg_sq"]) for n in base.mask)
    split = grow(old, cfg("cpu-tiny", 3), seed=1, moments=moments, width_init="split", split_noise=0.0)
    w, D, n_old = split.model.blocks[0].mlp.c_fc.weight, 64, 4 * 64
    share = 1.0 / (torch.bincount(split_sources(w, D, n_old, 1), minlength=n_old) + 1.0)
    carried, before = split.moments["blocks.0.mlp.c_fc.weight"], base.moments["blocks.0.mlp.c_fc.weight"]
    torch.testing.assert_close(carried["exp_avg"][:n_old], before["exp_avg"][:n_old] * share[:, None])
    torch.testing.assert_close(carried["exp_avg_sq"][:n_old], before["exp_avg_sq"][:n_old] * share[:, None] ** 2)
    assert (carried["exp_avg"][n_old:] == 0).all() and (carried["exp_avg_sq"][n_old:] == 0).all()
    for bad, match in (({"width_init": "copy"}, re.escape(f"width_init must be one of {WIDTH_INITS}, got 'copy'")),
                       ({"width_init": "split", "split_noise": -1.0}, "split_noise must be a finite number >= 0"),
                       ({"width_init": "split", "split_noise": float("nan")}, "split_noise must be")):
        with pytest.raises(ValueError, match=match):
            grow(old, cfg("cpu-tiny", 3), seed=1, **bad)


def test_report_errors():
    """Prints the measured max logit errors (run with -s); always passes."""
    for kind, rows in ERRORS.items():
        worst = max(rows, key=lambda r: r[-1])
        print(f"\n{kind}: max growth logit error {worst[-1]:.2e} over {len(rows)} growths (worst {worst[:4]})")
