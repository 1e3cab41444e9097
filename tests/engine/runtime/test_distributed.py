"""Paths a GPU run takes, checked on CPU (engine/runtime/distributed.py): torch.compile per block,
names kept, default by device."""
import pytest
import torch

from engine.runtime.distributed import compile_blocks, resolve_compile
from models.config import model_config
from models.gpt import build_model


@pytest.mark.parametrize("flag,device,want", [
    (None, "cuda", True), (None, "cpu", False), (True, "cpu", True), (False, "cuda", False),
])
def test_compile_default_is_on_for_cuda_only(flag, device, want):
    assert resolve_compile(flag, torch.device(device)) is want


def test_compiled_blocks_keep_names_and_results():
    # aot_eager: dynamo + AOTAutograd without code generation (seconds on CPU, no C++ compiler);
    # it traces each block as inductor would and runs the traced graph's ops eagerly
    torch._dynamo.reset()
    c = model_config("cpu-tiny", 2, vocab_size=96, seq_len=16)
    eager, compiled = build_model(c, seed=0), build_model(c, seed=0)
    names = list(dict(compiled.named_parameters()))
    compile_blocks(compiled, backend="aot_eager")
    assert list(dict(compiled.named_parameters())) == names  # no `_orig_mod.`: checkpoints unchanged
    assert list(compiled.state_dict()) == list(eager.state_dict())
    x = torch.randint(0, c.vocab_size, (2, 16))
    for m in (eager, compiled):
        m(x, x).backward()
    torch.testing.assert_close(compiled(x, x), eager(x, x), rtol=1e-5, atol=1e-6)
    for (n, p), q in zip(compiled.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=n)
    assert all(b._compiled_call_impl is not None for b in compiled.blocks)
