"""Token loaders (engine/data/loader.py): world-size invariant windows, epochs as permutations,
resume at another world size, bad arguments refused by name (hypothesis), validation batches."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.data import TokenLoader, val_batches


# -- loaders --------------------------------------------------------------------------------
def arange_tokens(n):
    return np.arange(n, dtype=np.int64) % 60000  # token value == position (while < 60000)


def test_loader_world_size_invariance_and_windows():
    tokens = arange_tokens(10_000).astype(np.uint16)
    L, G = 16, 8
    one = TokenLoader(tokens, L, G, seed=3)
    two = [TokenLoader(tokens, L, G, rank=r, world_size=2, seed=3) for r in range(2)]
    for _ in range(200):  # > 2 epochs (n_seq = 624, 78 steps per epoch)
        x, y = one.next()
        parts = [ld.next() for ld in two]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
        assert x.dtype == torch.int64 and x.shape == (G, L) and x.is_contiguous() and y.is_contiguous()
        assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y[:, -1], x[:, -1] + 1)
        assert (x[:, 0] % L == 0).all()  # windows start at multiples of seq_len
    assert one.state_dict() == two[0].state_dict() == {
        "seq_consumed": 1600, "seed": 3, "seq_len": L, "global_batch": G, "n_tokens": 10_000}


def test_loader_epoch_is_a_permutation():
    tokens = arange_tokens(16 * 40 + 1)
    ld = TokenLoader(tokens, 16, 8, seed=0)  # n_seq = 40, 5 steps per epoch
    starts = [ld.next()[0][:, 0] // 16 for _ in range(5)]
    assert sorted(torch.cat(starts).tolist()) == list(range(40))
    nxt = torch.cat([ld.next()[0][:, 0] // 16 for _ in range(5)])
    assert sorted(nxt.tolist()) == list(range(40)) and nxt.tolist() != torch.cat(starts).tolist()


@pytest.mark.parametrize("stop", [3, 12, 13])  # mid-epoch; a batch that straddles epochs; after
def test_loader_resume(stop):
    tokens = arange_tokens(16 * 50 + 1)  # n_seq = 50, G = 8: step 6 straddles epochs 0/1
    ref = TokenLoader(tokens, 16, 8, seed=7)
    batches = [ref.next() for _ in range(20)]
    ld = TokenLoader(tokens, 16, 8, seed=7)
    for _ in range(stop):
        ld.next()
    state = json.loads(json.dumps(ld.state_dict()))  # survives a JSON round trip
    for ws in (1, 2, 4):  # resume at another world size
        resumed = [TokenLoader(tokens, 16, 8, rank=r, world_size=ws, seed=7) for r in range(ws)]
        for r in resumed:
            r.load_state_dict(state)
        for k in range(stop, 20):
            parts = [r.next() for r in resumed]
            assert torch.equal(torch.cat([p[0] for p in parts]), batches[k][0])
            assert torch.equal(torch.cat([p[1] for p in parts]), batches[k][1])


def test_loader_state_mismatch_and_bad_args():
    tokens = arange_tokens(1000)
    ld = TokenLoader(tokens, 10, 4, seed=1)
    for key, val in (("seq_len", 11), ("n_tokens", 999), ("seed", 2)):
        with pytest.raises(ValueError, match=rf"saved {key}={val}, this loader has {key}="):
            ld.load_state_dict({**ld.state_dict(), key: val})
    with pytest.raises(ValueError, match=r"missing \['seq_consumed'\]"):
        ld.load_state_dict({"seed": 1, "seq_len": 10, "n_tokens": 1000})
    with pytest.raises(ValueError, match="not divisible by world_size=3"):
        TokenLoader(tokens, 10, 4, world_size=3)
    with pytest.raises(ValueError, match="rank=2 out of range for world_size=2"):
        TokenLoader(tokens, 10, 4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="hold only 1 sequences of 500"):
        TokenLoader(tokens, 500, 4)
    with pytest.raises(ValueError, match="seq_len=0"):
        TokenLoader(tokens, 0, 4)


@settings(max_examples=150, deadline=None)
@given(n_tokens=st.integers(0, 3000), seq_len=st.integers(-2, 300), global_batch=st.integers(0, 40),
       world_size=st.integers(0, 6), rank=st.integers(0, 6), seed=st.integers(0, 2**32))
def test_loader_property(n_tokens, seq_len, global_batch, world_size, rank, seed):
    tokens = arange_tokens(n_tokens)
    try:
        ld = TokenLoader(tokens, seq_len, global_batch, rank=rank, world_size=world_size, seed=seed)
    except ValueError as e:
        msg = str(e)
        n_seq = (n_tokens - 1) // seq_len if seq_len > 0 else 0
        if seq_len < 1:
            assert "seq_len" in msg
        elif global_batch < 1:
            assert "global_batch" in msg
        elif world_size < 1:
            assert "world_size" in msg
        elif rank >= world_size:
            assert "out of range" in msg
        elif global_batch % world_size:
            assert "not divisible" in msg
        else:
            assert n_seq < global_batch and "fewer than one global batch" in msg
        return
    B = global_batch // world_size
    for _ in range(3):
        x, y = ld.next()
        assert x.shape == y.shape == (B, seq_len)
        assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y[:, -1], x[:, -1] + 1)
        assert (x[:, 0] % seq_len == 0).all() and (y[:, -1] < n_tokens).all()


def test_val_batches():
    tokens = arange_tokens(5000).astype(np.uint16)
    a = list(val_batches(tokens, 32, 4, 4000))
    b = list(val_batches(tokens, 32, 4, 4000))
    assert len(a) == (3999 // 32) // 4 == 31
    for (x1, y1), (x2, y2) in zip(a, b):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x = torch.cat([p[0] for p in a])
    starts = x[:, 0]  # arange tokens: a window's first token is its offset
    slots = 4999 // 32
    assert torch.equal(starts, torch.tensor([(i * slots // 124) * 32 for i in range(124)]))  # strided, in order
    assert int(starts[-1]) >= (slots - 2) * 32 and int(starts[1] - starts[0]) == 32  # spans the whole split
    whole = torch.cat([p[0] for p in val_batches(tokens, 32, 4, None)])
    assert torch.equal(whole.flatten(), torch.arange(whole.numel()))  # the whole split: every window, in order
    for ws in (2, 3):
        per_rank = [list(val_batches(tokens, 32, 4, 4000, rank=r, world_size=ws)) for r in range(ws)]
        assert sorted(len(p) for p in per_rank) in ([15, 16], [10, 10, 11])
        assert torch.equal(per_rank[1][0][0], a[1][0]) and torch.equal(per_rank[0][1][0], a[ws][0])
        assert sum(len(p) for p in per_rank) == len(a)
    assert len(list(val_batches(tokens, 32, 4, None))) == (4999 // 32) // 4
    with pytest.raises(ValueError, match="do not fill one batch"):
        val_batches(tokens, 32, 4, 100)  # raised at the call, not at first next()
    with pytest.raises(ValueError, match="rank=1 out of range"):
        val_batches(tokens, 32, 4, 4000, rank=1)
