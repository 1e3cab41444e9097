"""The byte-level BPE tokenizer (engine/data/tokenizer.py): round trips on random unicode, code and
emoji, bytes per token, save/load with its hash and tamper check, a small corpus."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.data import Tokenizer, train_tokenizer
from tests.helpers.text import make_text


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    corpus = [make_text(400, s) for s in range(30)] + [
        "def f(x):\n    return {'a': [1, 2, 3]}\n" * 20]
    return train_tokenizer(corpus, 400)


# -- tokenizer ------------------------------------------------------------------------------
def test_tokenizer_basics(tok):
    assert tok.vocab_size == 400 and tok.bos_id == 399
    assert tok.token_bytes.dtype == np.int32 and tok.token_bytes.shape == (400,)
    assert tok.token_bytes[tok.bos_id] == 0 and (tok.token_bytes[:256] == 1).all()
    assert len(tok.hash) == 64
    ids = tok.encode("hello world", prepend_bos=True)
    assert ids[0] == tok.bos_id and tok.decode(ids[1:]) == "hello world"
    # text that spells the special token stays plain text
    assert tok.bos_id not in tok.encode("<|bos|>") and tok.decode(tok.encode("<|bos|>")) == "<|bos|>"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_tokenizer_roundtrip_random_unicode(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert int(tok.token_bytes[ids].sum()) == len(text.encode("utf-8"))


def test_tokenizer_roundtrip_code_emoji_batch(tok):
    texts = ["def f(x):\n\treturn x ** 2  # 🙂🚀\n", "", "  \n\n\r\n ", "日本語のテキスト 👩‍👩‍👧‍👦",
             "\x00\x7f\u200b\ufeff", make_text(500, 7), open(__file__).read()]
    batch = tok.encode_batch(texts, prepend_bos=True)
    for t, ids in zip(texts, batch):
        assert ids == tok.encode(t, prepend_bos=True)
        assert tok.decode(ids[1:]) == t
        assert int(tok.token_bytes[ids].sum()) == len(t.encode("utf-8"))  # bos counts 0 bytes
    assert tok.decode(torch.tensor(batch[0][1:])) == texts[0]
    assert tok.decode(np.array(batch[0][1:])) == texts[0]


def test_tokenizer_save_load_hash_and_tamper(tok, tmp_path):
    tok.save(tmp_path)
    tok2 = Tokenizer.load(tmp_path)
    assert tok2.hash == tok.hash and tok2.vocab_size == tok.vocab_size
    assert (tok2.token_bytes == tok.token_bytes).all()
    assert tok2.encode(make_text(100, 3)) == tok.encode(make_text(100, 3))
    # same corpus -> same tokenizer -> same hash (training is deterministic)
    corpus = [make_text(400, s) for s in range(30)] + ["def f(x):\n    return {'a': [1, 2, 3]}\n" * 20]
    assert train_tokenizer(corpus, 400).hash == tok.hash
    # tamper: swap two merge tokens
    path = tmp_path / "tokenizer.json"
    obj = json.loads(path.read_text())
    r = obj["mergeable_ranks"]
    r[300], r[301] = r[301], r[300]
    path.write_text(json.dumps(obj))
    with pytest.raises(ValueError, match=r"fails its hash check: stored [0-9a-f]{64}, computed [0-9a-f]{64}"):
        Tokenizer.load(tmp_path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="unreadable or corrupted"):
        Tokenizer.load(tmp_path)


def test_tokenizer_small_corpus_keeps_requested_vocab():
    t = train_tokenizer(["ab ab ab"], 1000)  # far fewer merges learnable than requested
    assert t.vocab_size == 1000 and t.bos_id == 999 and t.n_learned < 999
    assert t.decode(t.encode("ab ab zz", prepend_bos=True)) == "<|bos|>ab ab zz"
    assert t.decode([t.n_learned, 5]) == "\x05"  # never-produced ids are dropped, not an error
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["x"], 100)
