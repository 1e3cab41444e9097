"""Attention backend selection (models/attention.py)."""
import pytest

from models.attention import select_backend


def test_attention_backend_on_cpu_is_sdpa(monkeypatch):
    monkeypatch.delenv("LADDER_ATTENTION", raising=False)
    assert select_backend("cpu").name == "sdpa"
    monkeypatch.setenv("LADDER_ATTENTION", "fa2")
    with pytest.raises(RuntimeError, match="needs CUDA"):
        select_backend("cpu")
    monkeypatch.setenv("LADDER_ATTENTION", "bogus")
    with pytest.raises(ValueError, match="bogus"):
        select_backend("cpu")
