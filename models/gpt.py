"""The GPT of the ladder (method.md section 1), nanochat's core block and nothing more.

Pre-norm blocks; parameter-free RMSNorm (after the embedding, before every sub-layer and before
lm_head); rotary embeddings; RMS-normalised q and k; ReLU^2 MLP with 4x expansion; no biases;
untied wte / lm_head; fp32 logits soft-capped as cap * tanh(z / cap). Output projections start at
zero so a fresh block is the identity map, which is also what makes an inserted layer exact.

The module knows nothing about training, sharding or inheritance: FSDP2, autocast and
torch.compile are applied from outside (engine/), and growth (engine/inherit/growth.py) builds a new
module from a new config.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.attention import SDPA, AttentionBackend
from models.config import BlockConfig, GPTConfig
from models.loss import softcap_cross_entropy


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def residual_dtype(x: torch.Tensor) -> torch.dtype:
    """Autocast's dtype where autocast is on for x's device, else x's own dtype."""
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


def rotary_tables(seq_len: int, head_dim: int, base: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [seq_len, head_dim/2], fp32."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    t = torch.arange(seq_len, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)
    return freqs.cos(), freqs.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, T, H, hd]; rotates the two halves of each head (the GPT-NeoX convention)."""
    T = x.size(1)
    cos = cos[:T, None, :].to(x.dtype)
    sin = sin[:T, None, :].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


def init_read_in_(weight: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Matrices that read the residual stream: uniform with bound sqrt(3)/sqrt(fan_in) (unit-variance
    inputs give unit-variance outputs). Used for fresh models and for new coordinates in growth."""
    bound = math.sqrt(3.0) / math.sqrt(weight.size(1))
    with torch.no_grad():
        return weight.uniform_(-bound, bound, generator=generator)


LM_HEAD_STD = 1e-3  # small lm_head so the initial logits are nearly uniform
WTE_STD = 1.0


class CausalSelfAttention(nn.Module):
    def __init__(self, model_dim: int, block: BlockConfig, head_dim: int):
        super().__init__()
        self.n_head, self.head_dim = block.n_head, head_dim
        inner = block.n_head * head_dim
        self.c_q = nn.Linear(model_dim, inner, bias=False)
        self.c_k = nn.Linear(model_dim, inner, bias=False)
        self.c_v = nn.Linear(model_dim, inner, bias=False)
        self.c_proj = nn.Linear(inner, model_dim, bias=False)

    def forward(self, x, cos, sin, backend: AttentionBackend):
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        q, k = rms_norm(apply_rotary(q, cos, sin)), rms_norm(apply_rotary(k, cos, sin))  # QK-norm
        # torch >= 2.12 gives rms_norm an fp32 autocast policy on CUDA: under bf16 autocast the
        # normed q and k come back fp32 while v is bf16, and flash-attn takes only one fp16/bf16
        # dtype for all three. v's dtype is the compute dtype (a linear's output), so cast to it
        # (a no-op without autocast).
        q, k = q.to(v.dtype), k.to(v.dtype)
        y = backend.fn(q, k, v)
        return self.c_proj(y.reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, model_dim: int, mlp_dim: int):
        super().__init__()
        self.c_fc = nn.Linear(model_dim, mlp_dim, bias=False)
        self.c_proj = nn.Linear(mlp_dim, model_dim, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config: GPTConfig, block: BlockConfig):
        super().__init__()
        self.attn = CausalSelfAttention(config.model_dim, block, config.head_dim)
        self.mlp = MLP(config.model_dim, config.mlp_dim)
        # A 0-dim tensor that scales the block's write-outs while a grown rung ramps a new layer in
        # (engine/train/inherited.py: LayerRamp); None, the plain block, otherwise. Not a buffer: it is
        # a function of the step, never saved.
        self.gate: torch.Tensor | None = None

    def forward(self, x, cos, sin, backend):
        if self.gate is not None:
            x = x + self.gate * self.attn(rms_norm(x), cos, sin, backend)
            return x + self.gate * self.mlp(rms_norm(x))
        x = x + self.attn(rms_norm(x), cos, sin, backend)
        return x + self.mlp(rms_norm(x))

    def init_weights_(self, generator=None):
        for lin in (self.attn.c_q, self.attn.c_k, self.attn.c_v, self.mlp.c_fc):
            init_read_in_(lin.weight, generator)
        with torch.no_grad():  # zero write-out: a fresh block is the identity
            self.attn.c_proj.weight.zero_()
            self.mlp.c_proj.weight.zero_()


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        D = config.model_dim
        self.wte = nn.Embedding(config.vocab_size, D)
        self.blocks = nn.ModuleList(Block(config, b) for b in config.blocks)
        self.lm_head = nn.Linear(D, config.vocab_size, bias=False)
        cos, sin = rotary_tables(config.seq_len, config.head_dim, config.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.attention: AttentionBackend = SDPA

    @torch.no_grad()
    def init_weights(self, seed: int | None = None):
        """Deterministic init; works after `to_empty()` from the meta device too."""
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.wte.weight.device).manual_seed(seed)
        self.wte.weight.normal_(0.0, WTE_STD, generator=gen)
        self.lm_head.weight.normal_(0.0, LM_HEAD_STD, generator=gen)
        for block in self.blocks:
            block.init_weights_(gen)
        self.reset_buffers()

    @torch.no_grad()
    def reset_buffers(self):
        c = self.config
        cos, sin = rotary_tables(c.seq_len, c.head_dim, c.rope_base, device=self.rope_cos.device)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)

    def set_attention(self, backend: AttentionBackend):
        self.attention = backend

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean",
                teacher_logits: torch.Tensor | None = None, teacher_weight: float = 0.0):
        """idx [B, T] int64. Returns fp32 logits [B, T, V], or the cross-entropy (targets == -1
        ignored) with `reduction` 'mean', 'sum' or 'none' ([B, T]). With `teacher_logits` (another
        model's output for idx) each token's loss mixes in the KL from the teacher with weight
        `teacher_weight` (models/loss.py)."""
        if idx.size(1) > self.config.seq_len:
            raise ValueError(f"sequence of {idx.size(1)} tokens exceeds the model's seq_len {self.config.seq_len}")
        x = rms_norm(self.wte(idx))
        # The residual stream in the compute dtype. Under single-GPU autocast the embedding (not
        # an autocast op) and rms_norm (fp32 policy from torch 2.12) give fp32, and fp32 + bf16
        # stays fp32: every block would read and write an fp32 stream, twice the activation
        # traffic and memory of FSDP2's bf16 parameters (and of nanochat). Without autocast
        # this is a no-op, so CPU fp32 runs are unchanged bitwise.
        x = x.to(residual_dtype(x))
        for block in self.blocks:
            x = block(x, self.rope_cos, self.rope_sin, self.attention)
        z = self.lm_head(rms_norm(x))
        cap = self.config.softcap
        if teacher_logits is not None:
            if targets is None:
                raise ValueError("teacher_logits need targets: the distillation term is part of the training loss")
            return softcap_cross_entropy(z, targets, cap, reduction, teacher_logits, teacher_weight)
        if targets is not None and not (z.device.type == "cpu" and z.dtype == torch.float32):
            # bf16 / GPU: no fp32 [B, T, V] chain (models/loss.py); CPU fp32 keeps the eager
            # formula below, whose results the CPU runs are pinned to bitwise
            return softcap_cross_entropy(z, targets, cap, reduction)
        logits = cap * torch.tanh(z.float() / cap)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                               reduction=reduction)
        return loss.view(targets.shape) if reduction == "none" else loss


def build_model(config: GPTConfig, seed: int = 0, device: torch.device | str = "cpu") -> GPT:
    """Construct on the meta device, materialise on `device`, init deterministically from `seed`."""
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights(seed)
    return model
