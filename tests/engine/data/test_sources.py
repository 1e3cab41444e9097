"""Data sources (engine/data/sources.py) through prepare_data: a text directory, one text file,
parquet shards, the built-in corpus; every document kept losslessly; bad sources and bad files
named before any work."""
from __future__ import annotations

import time

import numpy as np
import pytest

from engine.data import DataBundle, prepare_data
from tests.helpers.text import make_text


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
    for key in ("source", "source_fingerprint", "tokenizer_trainer", "dtype", "files", "created_at"):
        assert key in m


def test_text_directory_source(text_dir, tmp_path):
    b = prepare_data(f"text:{text_dir}", 512, tmp_path / "cache", progress=False)
    check_bundle(b, 512)
    files = b.manifest["files"]
    assert "ignored.csv" not in files["train"] + files["val"]
    assert (len(files["train"]) + len(files["val"]) == 13 and files["val"]
            and not set(files["train"]) & set(files["val"]))
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
    ("nonsense", r"unknown source 'nonsense': expected 'builtin', 'packages', 'text:PATH'"),
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


# -- the `packages` corpus: pinned wheels under a corpus directory ------------------------------------
def fake_wheel(root, name, version, files, scripts=()):
    """Install-like layout: the files, a dist-info with a RECORD naming them (and generated scripts)."""
    import base64
    import hashlib

    dist = root / f"{name}-{version}.dist-info"
    dist.mkdir(parents=True)
    rows = []
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        rows.append(f"{rel},sha256={digest},{len(text.encode())}")
    rows += [f"../../bin/{s},sha256=x,10" for s in scripts] + [f"{dist.name}/RECORD,,"]
    (dist / "RECORD").write_text("\n".join(rows) + "\n")


def test_packages_source_reads_every_pinned_wheels_py_files_only(tmp_path):
    from engine.data.sources import _packages

    root = tmp_path / "corpus"
    fake_wheel(root, "alpha_pkg", "1.0", {f"alpha_pkg/m{i}.py": make_text(3, seed=i) for i in range(60)},
               scripts=["alpha.py"])
    fake_wheel(root, "beta", "2.1", {"beta/__init__.py": "x = 1\n", "beta/data.json": "{}"})
    fake_wheel(root, "gamma", "0.1", {"gamma/g.py": "not pinned\n"})  # installed, not pinned: left out
    src = _packages({"alpha-pkg": "1.0", "beta": "2.1"}, root)
    names = sorted(u.name for u in src.train + src.val)
    assert names == sorted([f"alpha_pkg/m{i}.py" for i in range(60)] + ["beta/__init__.py"])
    assert src.val and src.train and src.info["packages"] == {"alpha-pkg": "1.0", "beta": "2.1"}


@pytest.mark.parametrize("pins, match", [
    ({"alpha": "1.1"}, r"alpha==1.1 \(found 1.0\).*make corpus"),
    ({"delta": "3"}, r"delta==3 \(found nothing\)"),
])
def test_packages_source_names_a_missing_or_other_version(pins, match, tmp_path):
    from engine.data.sources import _packages

    fake_wheel(tmp_path, "alpha", "1.0", {"alpha/a.py": "a = 1\n"})
    with pytest.raises(ValueError, match=match):
        _packages(pins, tmp_path)


def test_packages_source_refuses_a_file_changed_after_install(tmp_path):
    from engine.data.sources import _packages

    fake_wheel(tmp_path, "alpha", "1.0", {"alpha/a.py": "a = 1\n", "alpha/b.py": "b = 2\n"})
    (tmp_path / "alpha/b.py").write_text("b = 22\n")
    with pytest.raises(ValueError, match=r"alpha/b.py has 7 bytes, its wheel's RECORD says 6"):
        _packages({"alpha": "1.0"}, tmp_path)
    (tmp_path / "alpha/b.py").unlink()
    with pytest.raises(ValueError, match=r"alpha/b.py has None bytes"):
        _packages({"alpha": "1.0"}, tmp_path)


def test_installed_corpus_is_the_pinned_wheels_bytes():
    """The corpus `make corpus` installed: every pinned wheel, every .py file's sha256 equal to its
    wheel's RECORD (the bytes the hash-pinned wheel holds), ~27M tokens' worth of source."""
    import base64
    import hashlib

    from engine.data.sources import _installed_wheels, _record_py_files, corpus_dir, corpus_pins, resolve_source

    root = corpus_dir()
    if not (root / ".installed").exists():
        pytest.skip(f"the pinned corpus is not installed at {root} (make corpus)")
    src = resolve_source("packages")
    assert src.info["bytes"] > 60_000_000
    installed = _installed_wheels(root)
    for name in corpus_pins():
        record = {line.rsplit(",", 2)[0]: line.rsplit(",", 2)[1]
                  for line in (installed[name][1] / "RECORD").read_text().splitlines()}
        for rel, _ in _record_py_files(installed[name][1]):
            digest = base64.urlsafe_b64encode(hashlib.sha256((root / rel).read_bytes()).digest()).rstrip(b"=")
            assert record[rel] == "sha256=" + digest.decode(), rel
