"""The byte-level BPE tokenizer (engine/data/tokenizer.py): round trips on random unicode, code and
emoji, bytes per token, save/load with its hash and tamper check, a small corpus; both trainers
(rustbpe, HF tokenizers) give the same interface, tokenizers' merges convert exactly, and the
trainer choice (LADDER_TOKENIZER_TRAINER) fails with one sentence on a bad or missing value."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.data import SPLIT_PATTERN, TRAINERS, Tokenizer, tokenizer_trainer, train_tokenizer
from engine.data import tokenizer as tokenizer_mod
from engine.data.tokenizer import TRAINER_ENV, trainer_installed
from tests.helpers.text import make_text


def trainer_or_skip(name: str) -> str:
    if not trainer_installed(name):
        pytest.skip(f"{name} is not installed")
    return name


@pytest.fixture(scope="module", params=TRAINERS)
def trainer(request) -> str:
    return trainer_or_skip(request.param)


@pytest.fixture(scope="module")
def tok(trainer) -> Tokenizer:
    corpus = [make_text(400, s) for s in range(30)] + [
        "def f(x):\n    return {'a': [1, 2, 3]}\n" * 20]
    return train_tokenizer(corpus, 400, trainer=trainer)


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


def test_tokenizer_save_load_hash_and_tamper(tok, trainer, tmp_path):
    tok.save(tmp_path)
    tok2 = Tokenizer.load(tmp_path)
    assert tok2.hash == tok.hash and tok2.vocab_size == tok.vocab_size
    assert (tok2.token_bytes == tok.token_bytes).all()
    assert tok2.encode(make_text(100, 3)) == tok.encode(make_text(100, 3))
    # same corpus -> same tokenizer -> same hash (training is deterministic)
    corpus = [make_text(400, s) for s in range(30)] + ["def f(x):\n    return {'a': [1, 2, 3]}\n" * 20]
    assert train_tokenizer(corpus, 400, trainer=trainer).hash == tok.hash
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


def test_tokenizer_small_corpus_keeps_requested_vocab(trainer):
    t = train_tokenizer(["ab ab ab"], 1000, trainer=trainer)  # far fewer merges learnable than requested
    assert t.vocab_size == 1000 and t.bos_id == 999 and t.n_learned < 999
    assert t.decode(t.encode("ab ab zz", prepend_bos=True)) == "<|bos|>ab ab zz"
    assert t.decode([t.n_learned, 5]) == "\x05"  # never-produced ids are dropped, not an error
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["x"], 100)


# -- trainers: rustbpe where installed, HF tokenizers otherwise ------------------------------------

def test_each_trainer_makes_the_same_kind_of_tokenizer(trainer):
    corpus = [make_text(400, s) for s in range(30)] + ["def f(x):\n    return {'a': [1, 2, 3]}\n" * 20]
    t = train_tokenizer(corpus, 400, trainer=trainer)
    assert isinstance(t, Tokenizer) and t.vocab_size == 400 and t.bos_id == 399 and t.n_learned == 399
    assert t.ranked_tokens[:256] == [bytes([b]) for b in range(256)] and (t.token_bytes[:256] == 1).all()
    texts = ["hello world, the quick brown fox", "naïve café 日本語 текст 🙂🚀 👩‍👩‍👧‍👦", "\x00\x7f\u200b\ufeff",
             "  \n\n\r\n\t12345 67890", "<|bos|>", make_text(300, 99)]
    for text, ids in zip(texts, t.encode_batch(texts, prepend_bos=True)):
        assert ids[0] == t.bos_id and t.bos_id not in ids[1:] and t.decode(ids[1:]) == text
        assert max(ids[1:], default=0) < t.n_learned
        assert int(t.token_bytes[ids].sum()) == len(text.encode("utf-8"))
    assert len(t.encode(make_text(300, 99))) < len(make_text(300, 99).encode()) / 2  # it compresses
    assert train_tokenizer(corpus, 400, trainer=trainer).hash == t.hash  # deterministic


def test_tokenizers_merges_convert_to_the_same_encoding():
    """tiktoken over the converted ranks tokenizes as the tokenizers model itself does."""
    trainer_or_skip("tokenizers")
    import tokenizers
    from tokenizers import Regex, models, pre_tokenizers, trainers

    corpus = [make_text(400, s) for s in range(30)]
    t = train_tokenizer(corpus, 600, trainer="tokenizers")
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(SPLIT_PATTERN), "isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=599, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    byte_of = tokenizer_mod._byte_of_char()
    assert sorted(byte_of.values()) == list(range(256))
    assert set(byte_of) == set(pre_tokenizers.ByteLevel.alphabet())
    rank = {tok: i for i, tok in enumerate(t.ranked_tokens)}
    for text in [make_text(500, 1000 + s) for s in range(5)] + [open(__file__).read()]:
        hf_ids = [rank[bytes(byte_of[c] for c in hf.id_to_token(i))] for i in hf.encode(text).ids]
        assert t.encode(text) == hf_ids


def test_trainer_choice_and_its_errors(monkeypatch):
    monkeypatch.delenv(TRAINER_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "rustbpe", None)  # as on a machine without rustbpe: ImportError
    assert tokenizer_trainer() == "tokenizers"
    monkeypatch.setenv(TRAINER_ENV, "sentencepiece")
    with pytest.raises(ValueError, match=r"^LADDER_TOKENIZER_TRAINER='sentencepiece': expected one of "
                                         r"rustbpe, tokenizers \(or unset"):
        tokenizer_trainer()
    with pytest.raises(ValueError, match="LADDER_TOKENIZER_TRAINER='sentencepiece'"):
        train_tokenizer(["ab ab"], 300)
    monkeypatch.setenv(TRAINER_ENV, "rustbpe")
    assert tokenizer_trainer() == "rustbpe"  # forced: a cache it made elsewhere still loads
    with pytest.raises(ValueError, match=r"^tokenizer trainer 'rustbpe' \(LADDER_TOKENIZER_TRAINER=rustbpe\) is "
                                         r"not installed: expected `pip install rustbpe`"):
        train_tokenizer(["ab ab"], 300)
    with pytest.raises(ValueError, match=r"tokenizer trainer 'bpe': expected one of rustbpe, tokenizers"):
        train_tokenizer(["ab ab"], 300, trainer="bpe")
