"""Small models to grow (engine/inherit/growth.py): each kind of width rule at a given depth, trained
a few AdamW steps so that c_proj and lm_head are non-trivial (with zero c_proj a logit check would
be vacuous). Trained models are cached per process and never modified by their users."""
import torch

from models.config import model_config
from models.gpt import build_model

V, T = 256, 32  # vocabulary and context of every model here

KINDS = {
    "cpu-tiny": dict(preset="cpu-tiny"),
    "nanochat": dict(preset="nanochat", dtype="float32"),  # aspect 64, head_dim 128
    "tiny-hd64": dict(preset="cpu-tiny", head_dim=64),  # aspect 32 / hd 64: odd depths round up
}


def cfg(kind, depth):
    kw = dict(KINDS[kind])
    return model_config(kw.pop("preset"), depth, vocab_size=V, seq_len=T, **kw)


def random_batches(k, seed, B, T, V):
    """k (input, target) pairs of uniformly random tokens, each [B, T], drawn from `seed`."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(k):
        t = torch.randint(0, V, (B, T + 1), generator=g)
        out.append((t[:, :-1], t[:, 1:]))
    return out


def batches(k, seed, B=2):
    return random_batches(k, seed, B, T, V)


_CACHE = {}


def train_(m, steps=2, seed=0, lr=1e-2):
    opt = torch.optim.AdamW(m.parameters(), lr=lr)
    for x, y in batches(steps, seed=seed, B=1):
        m(x, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return m


def trained(kind, depth):
    """Old model after 2 AdamW steps, lm_head scaled up (cached across tests)."""
    key = (kind, depth)
    if key not in _CACHE:
        m = train_(build_model(cfg(kind, depth), seed=depth), seed=100 + depth)
        with torch.no_grad():  # logits O(1), so the 1/c on lm_head and the softcap are exercised
            m.lm_head.weight *= 30.0
        assert all(b.attn.c_proj.weight.abs().sum() > 0 and b.mlp.c_proj.weight.abs().sum() > 0 for b in m.blocks)
        _CACHE[key] = m
    return _CACHE[key]
