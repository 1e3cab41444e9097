"""Data pipeline: tokenizer, sources, cache, loaders (engine.data)."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.data import (DataBundle, TokenLoader, Tokenizer, prepare_data, train_tokenizer,
                         val_batches)
from engine.data import prepare as prepare_mod

WORDS = ("the quick brown fox jumps over the lazy dog while a model learns byte pair merges "
         "def class return import numpy tensor gradient loss 12345 67890 ümlaut café naïve 日本語 "
         "текст 🙂 🚀").split()


def make_text(n_words: int, seed: int) -> str:
    rng = random.Random(seed)
    out = []
    for i in range(n_words):
        out.append(rng.choice(WORDS))
        if i % 13 == 12:
            out.append(".\n")
        if i % 97 == 96:
            out.append("\n\n")
    return " ".join(out)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    corpus = [make_text(400, s) for s in range(30)] + [
        "def f(x):\n    return {'a': [1, 2, 3]}\n" * 20]
    return train_tokenizer(corpus, 400)


@pytest.fixture
def text_dir(tmp_path):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    for i in range(12):
        (d / ("sub" if i % 2 else "") / f"doc{i:02d}.txt").write_text(make_text(300, i))
    (d / "notes.md").write_text("# Title\n\n" + make_text(200, 99))
    (d / "ignored.csv").write_text("a,b\n1,2\n")
    return d


def write_parquet(path, texts, column="text", row_group_size=None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({column: texts}), path, row_group_size=row_group_size)


def decode_stream(bundle: DataBundle, arr) -> list[str]:
    """The documents of a token array (split on <|bos|>)."""
    arr = np.asarray(arr)
    cuts = np.flatnonzero(arr == bundle.tokenizer.bos_id)
    assert len(cuts) and cuts[0] == 0, "stream must start with <|bos|>"
    bounds = list(cuts) + [len(arr)]
    return [bundle.tokenizer.decode(arr[a + 1:b]) for a, b in zip(bounds, bounds[1:])]


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


# -- sources & cache ------------------------------------------------------------------------
def check_bundle(b: DataBundle, vocab_size: int):
    assert b.tokenizer.vocab_size == vocab_size
    assert b.train.dtype == np.uint16 and b.val.dtype == np.uint16
    assert isinstance(b.train, np.memmap) and isinstance(b.val, np.memmap)
    m = b.manifest
    assert m["tokens"] == {"train": len(b.train), "val": len(b.val)}
    assert m["tokenizer_hash"] == b.tokenizer.hash and m["vocab_size"] == vocab_size
    assert len(b.val) > 0 and len(b.train) > len(b.val)
    assert b.train[0] == b.tokenizer.bos_id and b.val[0] == b.tokenizer.bos_id
    assert int(b.train.max()) < vocab_size
    for key in ("source", "source_fingerprint", "dtype", "files", "created_at"):
        assert key in m


def test_text_directory_source(text_dir, tmp_path):
    b = prepare_data(f"text:{text_dir}", 512, tmp_path / "cache", progress=False)
    check_bundle(b, 512)
    files = b.manifest["files"]
    assert "ignored.csv" not in files["train"] + files["val"]
    assert len(files["train"]) + len(files["val"]) == 13 and files["val"] and not set(files["train"]) & set(files["val"])
    docs = decode_stream(b, b.train) + decode_stream(b, b.val)
    originals = sorted(p.read_text() for p in text_dir.rglob("*") if p.suffix in (".txt", ".md"))
    assert sorted(docs) == originals  # every file is one document, losslessly
    assert b.directory.parent == tmp_path / "cache"


def test_text_single_file_source(tmp_path):
    f = tmp_path / "book.txt"
    f.write_text(make_text(6000, 1))
    b = prepare_data(f"text:{f}", 512, tmp_path / "cache", progress=False)
    check_bundle(b, 512)
    assert b.manifest["documents"]["val"] == 1 and b.manifest["documents"]["train"] > 10
    val_doc = decode_stream(b, b.val)[0]
    assert f.read_text().rstrip().endswith(val_doc.rstrip())  # the last paragraph block


def test_parquet_sources(tmp_path):
    texts = [make_text(150, i) for i in range(60)]
    d = tmp_path / "shards"
    d.mkdir()
    for k in range(3):
        write_parquet(d / f"shard_{k:05d}.parquet", texts[k * 20:(k + 1) * 20] + [None, ""],
                      row_group_size=7)
    b = prepare_data(f"parquet:{d}/*.parquet", 512, tmp_path / "cache", progress=False)
    check_bundle(b, 512)
    assert b.manifest["files"]["val"] == ["shard_00002.parquet"]
    assert decode_stream(b, b.val) == texts[40:]  # null and empty rows dropped
    assert decode_stream(b, b.train) == texts[:40]
    # one file: split by rows, the tail is validation
    write_parquet(tmp_path / "one.parquet", texts, row_group_size=16)
    b1 = prepare_data(f"parquet:{tmp_path}/one.parquet", 512, tmp_path / "cache", progress=False)
    check_bundle(b1, 512)
    assert decode_stream(b1, b1.val) == texts[-1:] and decode_stream(b1, b1.train) == texts[:-1]


@pytest.mark.parametrize("source, match", [
    ("nonsense", r"unknown source 'nonsense': expected 'builtin', 'text:PATH'"),
    ("hf:foo/bar", r"unknown source 'hf:foo/bar'"),
    ("text:", r"expected text:PATH"),
    ("text:/definitely/not/here", r"/definitely/not/here does not exist"),
    ("parquet:/definitely/not/*.parquet", r"no files match '/definitely/not/\*.parquet'"),
])
def test_bad_sources(source, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        prepare_data(source, 512, tmp_path, progress=False)


def test_bad_inputs_on_disk(tmp_path):
    empty_dir = tmp_path / "empty_dir"
    empty_dir.mkdir()
    (empty_dir / "x.csv").write_text("1,2")
    with pytest.raises(ValueError, match=r"no \.txt/\.md files under .*empty_dir"):
        prepare_data(f"text:{empty_dir}", 512, tmp_path / "c", progress=False)
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(ValueError, match=r"text:.*e\.txt.*the text is empty"):
        prepare_data(f"text:{tmp_path / 'e.txt'}", 512, tmp_path / "c", progress=False)
    (tmp_path / "ws.txt").write_text("  \n\n \n")
    with pytest.raises(ValueError, match=r"need at least 2 non-empty paragraphs"):
        prepare_data(f"text:{tmp_path / 'ws.txt'}", 512, tmp_path / "c", progress=False)
    (tmp_path / "x.py").write_text("print(1)\n\nprint(2)")
    with pytest.raises(ValueError, match=r"x\.py is not a \.txt/\.md file"):
        prepare_data(f"text:{tmp_path / 'x.py'}", 512, tmp_path / "c", progress=False)
    write_parquet(tmp_path / "bad.parquet", ["a", "b"], column="content")
    with pytest.raises(ValueError, match=r"bad\.parquet has no 'text' column \(columns: \['content'\]\)"):
        prepare_data(f"parquet:{tmp_path}/bad.parquet", 512, tmp_path / "c", progress=False)
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match=r"junk\.parquet is not a readable parquet file"):
        prepare_data(f"parquet:{tmp_path}/junk.parquet", 512, tmp_path / "c", progress=False)
    for bad in (100, 2048.0, "2048"):
        with pytest.raises(ValueError, match=r"vocab_size=.*expected an int"):
            prepare_data("builtin", bad, tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())  # no work done


def test_cache_reuse_rebuild_and_hash_mismatch(text_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    b = prepare_data(f"text:{text_dir}", 512, cache, progress=False)
    files = {p.name: p.stat().st_mtime_ns for p in b.directory.iterdir()}

    def boom(*a, **k):
        raise AssertionError("rebuilt a valid cache")
    monkeypatch.setattr(prepare_mod, "train_tokenizer", boom)
    t = time.perf_counter()
    b2 = prepare_data(f"text:{text_dir}", 512, cache, progress=False)
    assert time.perf_counter() - t < 1.0
    assert {p.name: p.stat().st_mtime_ns for p in b2.directory.iterdir()} == files
    assert b2.manifest == b.manifest and np.array_equal(b2.train, b.train)
    monkeypatch.undo()
    # a different vocab size is a different cache entry
    assert prepare_data(f"text:{text_dir}", 600, cache, progress=False).directory != b.directory
    # a changed source is a different cache entry
    (text_dir / "new.txt").write_text(make_text(50, 1234))
    assert prepare_data(f"text:{text_dir}", 512, cache, progress=False).directory != b.directory
    # interrupted build: no manifest (half-written token files lying around) -> rebuilt
    (b.directory / "manifest.json").unlink()
    (b.directory / "train.bin").unlink()  # (never rewrite a file in place: b.train maps it)
    (b.directory / "train.bin").write_bytes(b"\x00" * 10)
    (text_dir / "new.txt").unlink()
    b3 = prepare_data(f"text:{text_dir}", 512, cache, progress=False)
    assert b3.directory == b.directory and np.array_equal(b3.train, b.train)
    assert b3.manifest["created_at"] >= b.manifest["created_at"] and b3.manifest["build_id"] != b.manifest["build_id"]
    # truncated token file with a manifest -> rebuilt too
    (b.directory / "val.bin").unlink()
    (b.directory / "val.bin").write_bytes(b"\x00" * 4)
    assert np.array_equal(prepare_data(f"text:{text_dir}", 512, cache, progress=False).val, b.val)
    # manifest and tokenizer disagree -> clear error with both hashes and the directory
    m = json.loads((b.directory / "manifest.json").read_text())
    m["tokenizer_hash"] = "f" * 64
    (b.directory / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match=rf"tokenizer {'f' * 64} but tokenizer.json has hash {b.tokenizer.hash}"):
        prepare_data(f"text:{text_dir}", 512, cache, progress=False)
    with pytest.raises(ValueError, match=str(b.directory)):
        prepare_data(f"text:{text_dir}", 512, cache, progress=False)


def test_concurrent_prepare_builds_once(text_dir, tmp_path):
    # separate interpreters, like torchrun ranks (fork would inherit rustbpe's thread pool)
    code = ("import sys; from engine.data import prepare_data; "
            "print(prepare_data(sys.argv[1], 512, sys.argv[2], progress=False).manifest['build_id'])")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    procs = [subprocess.Popen([sys.executable, "-c", code, f"text:{text_dir}", str(tmp_path)], cwd=root,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    ids = {o[0].strip() for o in outs}
    assert len(ids) == 1
    assert prepare_data(f"text:{text_dir}", 512, tmp_path, progress=False).manifest["build_id"] in ids


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LADDER_CACHE", str(tmp_path / "envcache"))
    assert prepare_mod.default_cache_dir() == tmp_path / "envcache"


@pytest.mark.slow
def test_builtin_source(tmp_path):
    t = time.perf_counter()
    b = prepare_data("builtin", 2048, tmp_path, progress=False)
    build = time.perf_counter() - t
    check_bundle(b, 2048)
    assert build < 60
    assert len(b.val) > 100_000 and len(b.train) > 5_000_000
    files = b.manifest["files"]
    assert all(f.endswith(".py") and "site-packages" not in f for f in files["train"] + files["val"])
    assert 20 <= len(files["val"]) <= 200
    t = time.perf_counter()
    b2 = prepare_data("builtin", 2048, tmp_path, progress=False)
    assert time.perf_counter() - t < 1.0 and b2.manifest == b.manifest


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
