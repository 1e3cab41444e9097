"""prepare_data: source -> (tokenizer, memmapped train/val token arrays), cached on disk.

Cache layout: <cache_dir>/<kind>-<fingerprint[:16]>-v<vocab>/ holding tokenizer.json,
train.bin, val.bin (raw little-endian uint16/uint32, documents each prefixed with <|bos|>) and
manifest.json. The manifest is written last (temp file + os.replace): a directory without a
valid manifest is a half-built cache and is rebuilt. Builders serialise on an fcntl lock
(<cache_dir>/<key>.lock), so when several torchrun ranks call prepare_data at once exactly one
builds and the others wait, then load.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .sources import BUILTIN_MIN_VAL_BYTES, VAL_EVERY, Source, iter_sample, resolve_source
from .tokenizer import SPLIT_PATTERN, TOKENIZER_FILE, Tokenizer, _num_threads, train_tokenizer

FORMAT_VERSION = 1
TOKENIZER_SAMPLE_CHARS = 8_000_000   # tokenizer trains on the first ~8 MB of train text
FLUSH_CHARS = 4_000_000              # characters per encode_ordinary_batch call
MANIFEST = "manifest.json"
SPLITS = ("train", "val")


@dataclass
class DataBundle:
    tokenizer: Tokenizer
    train: np.ndarray        # 1-D memmap, uint16 if vocab <= 65536 else uint32
    val: np.ndarray
    manifest: dict
    directory: Path


def default_cache_dir() -> Path:
    env = os.environ.get("LADDER_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / ".cache" / "data"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


class _FileLock:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        import fcntl

        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _load(directory: Path) -> DataBundle | None:
    """The cached bundle, or None when the directory holds no complete cache (rebuild it)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    try:
        if manifest.get("format_version") != FORMAT_VERSION:
            return None
        dtype = np.dtype(manifest["dtype"])
        counts = {split: int(manifest["tokens"][split]) for split in SPLITS}
        manifest["tokenizer_hash"], manifest["vocab_size"]
    except (AttributeError, KeyError, TypeError, ValueError):
        return None  # not a manifest this version wrote: rebuild
    arrays = {}
    for split in SPLITS:
        path, n = directory / f"{split}.bin", counts[split]
        if n <= 0 or not path.is_file() or path.stat().st_size != n * dtype.itemsize:
            return None  # truncated or missing token file: treat as half-built
        arrays[split] = np.memmap(path, dtype=dtype, mode="r", shape=(n,))
    if not (directory / TOKENIZER_FILE).is_file():
        return None
    tok = Tokenizer.load(directory)  # raises if the tokenizer file fails its own hash check
    if tok.hash != manifest["tokenizer_hash"]:
        raise ValueError(f"data cache {directory}: the manifest was built with tokenizer "
                         f"{manifest['tokenizer_hash']} but {TOKENIZER_FILE} has hash {tok.hash}; "
                         f"delete {directory} to rebuild it")
    if tok.vocab_size != manifest["vocab_size"]:
        raise ValueError(f"data cache {directory}: manifest vocab_size {manifest['vocab_size']} != "
                         f"tokenizer vocab_size {tok.vocab_size}; delete {directory} to rebuild it")
    return DataBundle(tok, arrays["train"], arrays["val"], manifest, directory)


def _tokenize_split(src: Source, split: str, tok: Tokenizer, out: Path, progress: bool) -> dict:
    units = src.train if split == "train" else src.val
    dtype = token_dtype(tok.vocab_size)
    n_tokens = n_docs = n_chars = 0
    pending: list[str] = []
    pending_chars = 0

    def flush(f):
        nonlocal n_tokens, n_docs, pending, pending_chars
        if not pending:
            return
        encoded = tok.enc.encode_ordinary_batch(pending, num_threads=_num_threads())
        total = sum(len(ids) for ids in encoded) + len(encoded)
        buf = np.empty(total, dtype=dtype)
        i = 0
        for ids in encoded:  # <|bos|> doc <|bos|> doc ...
            buf[i] = tok.bos_id
            buf[i + 1: i + 1 + len(ids)] = ids
            i += 1 + len(ids)
        buf.tofile(f)
        n_tokens += total
        n_docs += len(encoded)
        pending, pending_chars = [], 0

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(units), desc=f"tokenizing {split}", unit="file", file=sys.stderr,
                   dynamic_ncols=True)
    tmp = out.with_suffix(".bin.tmp")
    with open(tmp, "wb") as f:
        for u in units:
            for doc in u.read():
                if not doc.strip():
                    continue  # empty files (e.g. bare __init__.py) are not documents
                pending.append(doc)
                pending_chars += len(doc)
                n_chars += len(doc)
                if pending_chars >= FLUSH_CHARS:
                    flush(f)
            if bar is not None:
                bar.update(1)
        flush(f)
        f.flush()
        os.fsync(f.fileno())
    if bar is not None:
        bar.close()
    if n_docs == 0:
        tmp.unlink()
        raise ValueError(f"source {src.spec!r}: the {split} split has no text (all documents empty)")
    os.replace(tmp, out)
    return {"tokens": n_tokens, "documents": n_docs, "chars": n_chars}


def _build(src: Source, vocab_size: int, directory: Path, progress: bool) -> None:
    t0 = time.time()
    for name in (MANIFEST, TOKENIZER_FILE, "train.bin", "val.bin"):
        (directory / name).unlink(missing_ok=True)
    sample = list(iter_sample(src.train, TOKENIZER_SAMPLE_CHARS))
    if not any(s.strip() for s in sample):
        raise ValueError(f"source {src.spec!r}: the training text is empty")
    tok = train_tokenizer(sample, vocab_size)
    sample_chars = sum(len(s) for s in sample)
    del sample
    tok.save(directory)
    t_tok = time.time() - t0
    stats = {split: _tokenize_split(src, split, tok, directory / f"{split}.bin", progress)
             for split in SPLITS}
    manifest = {
        "format_version": FORMAT_VERSION,
        "source": src.spec,
        "source_kind": src.kind,
        "source_fingerprint": src.fingerprint,
        "cache_key": directory.name,
        "source_info": src.info,
        "tokenizer_hash": tok.hash,
        "vocab_size": vocab_size,
        "merges_learned": tok.n_learned - 256,
        "bos_id": tok.bos_id,
        "dtype": token_dtype(vocab_size).name,
        "tokens": {s: stats[s]["tokens"] for s in SPLITS},
        "documents": {s: stats[s]["documents"] for s in SPLITS},
        "chars": {s: stats[s]["chars"] for s in SPLITS},
        "files": {s: src.files(s) for s in SPLITS},
        "tokenizer_sample_chars": sample_chars,
        "build_seconds": {"tokenizer": round(t_tok, 3), "total": round(time.time() - t0, 3)},
        "build_id": uuid.uuid4().hex,
        "built_by": f"{socket.gethostname()}:{os.getpid()}",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    tmp = directory / (MANIFEST + f".tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / MANIFEST)


def prepare_data(source: str = "builtin", vocab_size: int = 2048, cache_dir: str | Path | None = None,
                 *, progress: bool = True) -> DataBundle:
    """Tokenize `source` once into a cache and return memmapped train/val token arrays.

    The first call trains the tokenizer and writes the cache; later calls (any process) load it
    in well under a second. Safe to call from every torchrun rank at once.
    """
    if not isinstance(vocab_size, (int, np.integer)) or isinstance(vocab_size, bool) \
            or not 257 <= vocab_size <= 2**32:
        raise ValueError(f"vocab_size={vocab_size!r}: expected an int in [257, 2**32] "
                         f"(256 byte tokens + the <|bos|> special token at least)")
    vocab_size = int(vocab_size)
    src = resolve_source(source)  # validates; cheap (names, sizes, metadata)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    # The key covers the data and every setting that changes what gets built.
    settings = {"fingerprint": src.fingerprint, "format": FORMAT_VERSION, "pattern": SPLIT_PATTERN,
                "sample_chars": TOKENIZER_SAMPLE_CHARS, "val_every": VAL_EVERY,
                "builtin_min_val_bytes": BUILTIN_MIN_VAL_BYTES}
    key_hash = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    key = f"{src.kind}-{key_hash[:16]}-v{vocab_size}"
    directory = root / key
    bundle = _load(directory)
    if bundle is not None:
        return bundle
    directory.mkdir(parents=True, exist_ok=True)
    with _FileLock(root / f"{key}.lock"):
        bundle = _load(directory)  # another rank may have built it while we waited
        if bundle is None:
            _build(src, vocab_size, directory, progress)
            bundle = _load(directory)
            assert bundle is not None, f"cache {directory} unreadable right after building it"
    return bundle
