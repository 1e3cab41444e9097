"""Content fingerprints (engine/data/digests.py): the same bytes give the same fingerprint at any
path and with any mtimes, one changed byte changes it; the digest memo skips re-reading unchanged
files, never serves a stale digest, and survives damage; the built-in corpus hashes fast."""
from __future__ import annotations

import os
import shutil
import time

from engine.data import digests, resolve_source
from tests.helpers.text import make_text


def write_corpus(d, n=6):
    d.mkdir(parents=True)
    for i in range(n):
        (d / f"doc{i}.txt").write_text(make_text(200, i))
    return d


def content(d):
    return [(p.name, str(p)) for p in sorted(d.iterdir())]


def test_same_bytes_same_fingerprint_anywhere_one_byte_changes_it(tmp_path):
    a = write_corpus(tmp_path / "a")
    b = tmp_path / "elsewhere" / "b"
    shutil.copytree(a, b)
    for i, p in enumerate(sorted(b.iterdir())):
        os.utime(p, ns=(10**18 + i, 10**18 + i))  # other mtimes
    fa = digests.content_fingerprint("text", content(a), tmp_path / "memo1")
    assert digests.content_fingerprint("text", content(b), tmp_path / "memo2") == fa
    assert digests.content_fingerprint("text", content(a), tmp_path / "memo1") == fa
    raw = bytearray((b / "doc3.txt").read_bytes())
    raw[100] ^= 1
    (b / "doc3.txt").write_bytes(raw)
    assert digests.content_fingerprint("text", content(b), tmp_path / "memo2") != fa
    # the label (a name that decides the split) and the kind are part of it too
    renamed = [("x" + label, path) for label, path in content(a)]
    assert digests.content_fingerprint("text", renamed, tmp_path / "memo1") != fa
    assert digests.content_fingerprint("parquet", content(a), tmp_path / "memo1") != fa


def test_memo_skips_unchanged_files_and_never_serves_a_stale_digest(tmp_path, monkeypatch):
    d = write_corpus(tmp_path / "c")
    memo = tmp_path / "memo"
    monkeypatch.setattr(digests, "MEMO_MIN_AGE_S", 0.0)
    first = digests.content_fingerprint("text", content(d), memo)
    assert (memo / digests.MEMO_FILE).is_file()
    real, read = digests.file_sha256, []
    monkeypatch.setattr(digests, "file_sha256", lambda p: read.append(p) or real(p))
    assert digests.content_fingerprint("text", content(d), memo) == first and read == []
    # rewritten in place with the same size and the old mtime: the ctime still tells
    p = d / "doc2.txt"
    st = p.stat()
    raw = bytearray(p.read_bytes())
    raw[0] ^= 1
    p.write_bytes(raw)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert digests.content_fingerprint("text", content(d), memo) != first and read == [str(p)]
    # a damaged memo is ignored (and replaced)
    (memo / digests.MEMO_FILE).write_text("{not json")
    raw[0] ^= 1
    p.write_bytes(raw)
    assert digests.content_fingerprint("text", content(d), memo) == first


def test_recently_modified_files_are_not_memoised(tmp_path):
    d = write_corpus(tmp_path / "c", n=2)
    digests.content_fingerprint("text", content(d), tmp_path / "memo")
    assert not (tmp_path / "memo" / digests.MEMO_FILE).exists()  # both written just now


def test_builtin_corpus_hashes_fast(tmp_path):
    src = resolve_source("builtin")
    t = time.perf_counter()
    fp = digests.content_fingerprint(src.kind, src.content, tmp_path / "memo")
    cold = time.perf_counter() - t
    t = time.perf_counter()
    assert digests.content_fingerprint(src.kind, src.content, tmp_path / "memo") == fp
    warm = time.perf_counter() - t
    print(f"built-in corpus: {src.info['bytes'] / 1e6:.1f} MB in {len(src.content)} files, "
          f"hashed in {cold:.3f} s, {warm:.3f} s with the memo")
    assert cold < 5 and warm < 1


def test_unwritable_memo_directory_goes_without(tmp_path):
    d = write_corpus(tmp_path / "c", n=2)
    (tmp_path / "a_file").write_text("")  # a memo directory under a file cannot be made
    want = digests.content_fingerprint("text", content(d), tmp_path / "rw")
    assert digests.content_fingerprint("text", content(d), tmp_path / "a_file" / "memo") == want
