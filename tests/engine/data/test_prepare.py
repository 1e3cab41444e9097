"""The token cache (engine/data/prepare.py): reused, rebuilt when changed, interrupted or damaged
(a corrupted, truncated or out-of-range shard, a damaged tokenizer, each named), built once by
concurrent ranks, partial files removed on a full disk; keyed on the source's bytes and the
tokenizer trainer (reused at another path, never across trainers), an old layout rebuilt."""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from engine.data import prepare as prepare_mod
from engine.data import TRAINERS, prepare_data, resolve_source
from engine.data.tokenizer import TRAINER_ENV, trainer_installed
from engine.runtime.diskspace import StorageError
from tests.helpers import ROOT
from tests.helpers.faults import enospc, overwrite_tokens
from tests.helpers.text import make_text


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
    procs = [subprocess.Popen([sys.executable, "-c", code, f"text:{text_dir}", str(tmp_path)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    ids = {o[0].strip() for o in outs}
    assert len(ids) == 1
    assert prepare_data(f"text:{text_dir}", 512, tmp_path, progress=False).manifest["build_id"] in ids


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LADDER_CACHE", str(tmp_path / "envcache"))
    assert prepare_mod.default_cache_dir() == tmp_path / "envcache"


@pytest.mark.parametrize("values,what",
                         [([60000, 61000], "out of the vocabulary"), ([7, 8, 9], "within the vocabulary")])
def test_corrupted_shard_is_named_and_rebuilt(corpus, tmp_path, capfd, values, what):
    b = prepare_data(corpus, 512, tmp_path / "cache", progress=False)
    want = np.array(b.train)
    overwrite_tokens(b.directory / "train.bin", 100, values)
    b2 = prepare_data(corpus, 512, tmp_path / "cache", progress=False)
    err = capfd.readouterr().err
    assert f"warning: data cache file {b.directory / 'train.bin'} fails its crc32 check in bytes 0.." in err, err
    assert f"rebuilding the cache {b.directory} from {corpus!r}" in err
    assert np.array_equal(b2.train, want)
    assert prepare_data(corpus, 512, tmp_path / "cache", progress=False).manifest["build_id"] == b2.manifest["build_id"]


def test_truncated_shard_and_damaged_tokenizer_are_named_and_rebuilt(corpus, tmp_path, capfd):
    b = prepare_data(corpus, 512, tmp_path / "cache", progress=False)
    want = np.array(b.val)
    with open(b.directory / "val.bin", "r+b") as f:
        f.truncate(100)
    assert np.array_equal(prepare_data(corpus, 512, tmp_path / "cache", progress=False).val, want)
    assert f"{b.directory / 'val.bin'} has 100 bytes, the manifest says {2 * len(want)}" in capfd.readouterr().err
    text = (b.directory / "tokenizer.json").read_text()
    (b.directory / "tokenizer.json").write_text(text.replace("A", "B", 1))
    prepare_data(corpus, 512, tmp_path / "cache", progress=False)
    assert f"{b.directory / 'tokenizer.json'} fails its crc32 check" in capfd.readouterr().err


def test_cache_from_before_checksums_gets_them_without_a_rebuild(corpus, tmp_path, monkeypatch, capfd):
    b = prepare_data(corpus, 512, tmp_path / "cache", progress=False)
    m = json.loads((b.directory / "manifest.json").read_text())
    del m["checksums"]
    (b.directory / "manifest.json").write_text(json.dumps(m))
    with monkeypatch.context() as mp:
        mp.setattr(prepare_mod, "train_tokenizer", lambda *a: pytest.fail("rebuilt a sound cache"))
        b2 = prepare_data(corpus, 512, tmp_path / "cache", progress=False)
    assert b2.manifest["build_id"] == b.manifest["build_id"] and "checksums" in b2.manifest
    # ... but one whose ids are out of range is named and rebuilt
    (b.directory / "manifest.json").write_text(json.dumps(m))
    overwrite_tokens(b.directory / "train.bin", 5, [700])
    b3 = prepare_data(corpus, 512, tmp_path / "cache", progress=False)
    assert "holds token id 700 at position 5, outside the vocabulary [0, 512)" in capfd.readouterr().err
    assert b3.manifest["build_id"] != b.manifest["build_id"] and int(b3.train.max()) < 512


def test_full_disk_while_building_the_cache_removes_partial_files(corpus, tmp_path, monkeypatch):
    real = prepare_mod._tokenize_split

    def fills_up(src, split, tok, out, progress):
        if split == "val":
            out.with_suffix(".bin.tmp").write_bytes(b"\0" * 10)
            raise enospc(out.with_suffix(".bin.tmp"))
        return real(src, split, tok, out, progress)

    monkeypatch.setattr(prepare_mod, "_tokenize_split", fills_up)
    with pytest.raises(StorageError,
                       match=r"^the disk is full: writing the data cache to .* failed \(OSError: .*No space "
                                           r"left on device.*The partial cache files were removed; free space or point "
                                           r"--cache-dir"):
        prepare_data(corpus, 512, tmp_path / "cache", progress=False)
    (d,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert not list(d.glob("*.tmp*")) and not (d / "manifest.json").exists()
    monkeypatch.undo()
    assert len(prepare_data(corpus, 512, tmp_path / "cache", progress=False).train) > 0


# -- the key: the source's bytes and the trainer --------------------------------------------------
def test_same_bytes_elsewhere_reuse_the_cache_one_changed_byte_does_not(text_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    b = prepare_data(f"text:{text_dir}", 512, cache, progress=False)
    copy = tmp_path / "moved" / "corpus_copy"
    shutil.copytree(text_dir, copy)
    for p in copy.rglob("*"):
        os.utime(p, ns=(10**18, 10**18))  # other mtimes too
    with monkeypatch.context() as mp:
        mp.setattr(prepare_mod, "train_tokenizer", lambda *a, **k: pytest.fail("rebuilt for the same bytes"))
        b2 = prepare_data(f"text:{copy}", 512, cache, progress=False)
    assert b2.directory == b.directory and b2.manifest["build_id"] == b.manifest["build_id"]
    doc = next(copy.rglob("doc03.txt"))
    raw = bytearray(doc.read_bytes())
    raw[10] ^= 1
    doc.write_bytes(raw)
    b3 = prepare_data(f"text:{copy}", 512, cache, progress=False)
    assert b3.directory != b.directory
    assert b3.manifest["source_fingerprint"] != b.manifest["source_fingerprint"]


@pytest.mark.parametrize("trainer", TRAINERS)
def test_manifest_records_the_trainer_and_the_trainer_is_in_the_key(trainer, corpus, tmp_path, monkeypatch):
    if not trainer_installed(trainer):
        pytest.skip(f"{trainer} is not installed")
    monkeypatch.setenv(TRAINER_ENV, trainer)
    b = prepare_data(corpus, 512, tmp_path / "cache", progress=False)
    assert b.manifest["tokenizer_trainer"] == trainer and b.manifest["tokenizer_trainer_version"] != "unknown"
    other = [t for t in TRAINERS if t != trainer][0]
    src = resolve_source(corpus)
    assert prepare_mod.cache_key(src, 512, other, tmp_path / "cache").name != b.directory.name
    # forced but not installed: a cache it built still loads, a new one is refused before any work
    monkeypatch.setitem(sys.modules, trainer, None)
    assert prepare_data(corpus, 512, tmp_path / "cache", progress=False).manifest == b.manifest
    with pytest.raises(ValueError, match=rf"^tokenizer trainer '{trainer}' \({TRAINER_ENV}={trainer}\) is not "
                                         rf"installed: expected `pip install {trainer}`"):
        prepare_data(corpus, 600, tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").glob("*-v600"))


def test_builtin_key_is_its_stdlib_bytes_and_the_manifest_names_the_python(tmp_path, monkeypatch):
    src = resolve_source("builtin")
    assert src.info["python"] == platform.python_version()
    key = prepare_mod.cache_key(src, 2048, "tokenizers", tmp_path / "m1")
    monkeypatch.setattr(sys, "version", sys.version.replace(platform.python_version(), "3.99.0"))
    assert prepare_mod.cache_key(resolve_source("builtin"), 2048, "tokenizers", tmp_path / "m2") == key
    assert resolve_source("builtin").info["python"] == "3.99.0"


@pytest.mark.parametrize("change", ["format_version", "no_trainer", "unknown_trainer"])
def test_a_cache_of_another_layout_is_rebuilt_not_misread(change, corpus, tmp_path):
    b = prepare_data(corpus, 512, tmp_path / "cache", progress=False)
    m = json.loads((b.directory / "manifest.json").read_text())
    if change == "format_version":
        m["format_version"] = 1
    elif change == "no_trainer":
        del m["tokenizer_trainer"]
    else:
        m["tokenizer_trainer"] = "sentencepiece"
    (b.directory / "manifest.json").write_text(json.dumps(m))
    b2 = prepare_data(corpus, 512, tmp_path / "cache", progress=False)
    assert b2.manifest["build_id"] != b.manifest["build_id"]
    assert b2.manifest["format_version"] == prepare_mod.FORMAT_VERSION
    assert np.array_equal(b2.train, b.train)  # the build is deterministic
