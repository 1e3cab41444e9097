"""The ladder's model (models/gpt.py): module counts against the config's, init, that it learns,
and the dtypes it keeps under bf16 autocast."""
import math

import pytest
import torch

from models.attention import select_backend
from models.config import model_config
from models.gpt import GPT, build_model


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_module_counts_equal_config_counts(depth):
    c = model_config("cpu-tiny", depth)
    m = GPT(c)
    counts = {"wte": 0, "attn": 0, "mlp": 0, "lm_head": 0}  # by name: blocks.<i>.<attn|mlp>.*, wte.*, lm_head.*
    for n, p in m.named_parameters():
        counts[n.split(".")[2] if n.startswith("blocks.") else n.split(".")[0]] += p.numel()
    assert counts == c.param_counts()
    assert sum(p.numel() for p in m.parameters()) == c.num_params
    assert all(b.n_head == c.n_head for b in c.blocks)


def test_fresh_block_is_identity_and_logits_capped():
    c = model_config("cpu-tiny", 2, seq_len=32)
    m = build_model(c, seed=0)
    for b in m.blocks:
        assert b.attn.c_proj.weight.abs().sum() == 0 and b.mlp.c_proj.weight.abs().sum() == 0
    x = torch.randint(0, c.vocab_size, (2, 32))
    h = torch.nn.functional.rms_norm(m.wte(x), (c.model_dim,))
    for b in m.blocks:
        assert torch.equal(b(h, m.rope_cos, m.rope_sin, m.attention), h)
    m.lm_head.weight.data.normal_(0, 10.0)
    logits = m(x)
    assert logits.shape == (2, 32, c.vocab_size) and logits.dtype == torch.float32
    assert logits.abs().max() <= c.softcap + 1e-4


def test_init_is_deterministic_per_seed():
    c = model_config("cpu-tiny", 2)
    a, b, z = build_model(c, seed=3), build_model(c, seed=3), build_model(c, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.wte.weight, z.wte.weight)


def test_initial_loss_near_uniform():
    c = model_config("cpu-tiny", 2, seq_len=64)
    m = build_model(c, seed=0)
    x = torch.randint(0, c.vocab_size, (4, 64))
    assert abs(m(x, x).item() - math.log(c.vocab_size)) < 0.05  # lm_head std 1e-3


def test_tiny_model_overfits_a_fixed_batch():
    torch.manual_seed(0)
    c = model_config("cpu-tiny", 1, vocab_size=64, seq_len=32)
    m = build_model(c, seed=0)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, betas=(0.9, 0.95))
    x = torch.randint(0, 64, (4, 33))
    first = None
    for _ in range(150):
        loss = m(x[:, :-1], x[:, 1:])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 4.0 and loss.item() < 0.3, (first, loss.item())


def test_sequence_longer_than_model_is_an_error():
    m = build_model(model_config("cpu-tiny", 1, seq_len=16), seed=0)
    with pytest.raises(ValueError, match="exceeds the model's seq_len 16"):
        m(torch.zeros(1, 17, dtype=torch.long))


# ----------------------------------------------------------------------------------------------
# Mixed precision: attention inputs, residual stream (the loss head: tests/models/test_loss.py)
# ----------------------------------------------------------------------------------------------


def _strict_flash_stand_in(seen):
    """flash_attn_func's dtype contract: q, k, v of one dtype, fp16 or bf16."""
    def attend(q, k, v):
        seen.append((q.dtype, k.dtype, v.dtype))
        if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16):
            raise RuntimeError(f"FlashAttention only support fp16 and bf16 data type, one for all: {seen[-1]}")
        return select_backend("cpu").fn(q, k, v)
    return attend


def test_attention_gets_one_half_precision_dtype_under_autocast(bf16_autocast_model):
    from models.attention import AttentionBackend

    m, c = bf16_autocast_model
    seen = []
    m.set_attention(AttentionBackend("strict", _strict_flash_stand_in(seen)))
    x = torch.randint(0, c.vocab_size, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = m(x, x)
    loss.backward()
    assert seen and all(s == (torch.bfloat16,) * 3 for s in seen), seen


def test_residual_stream_is_bf16_under_autocast(bf16_autocast_model):
    m, c = bf16_autocast_model
    dtypes = []
    for b in m.blocks:
        b.register_forward_pre_hook(lambda mod, args: dtypes.append(args[0].dtype))
        b.register_forward_hook(lambda mod, args, out: dtypes.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m(torch.randint(0, c.vocab_size, (2, 16)))
    assert dtypes == [torch.bfloat16] * 2 * c.depth, dtypes
