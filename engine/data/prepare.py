"""prepare_data: source -> (tokenizer, memmapped train/val token arrays), cached on disk.

Cache layout: <cache_dir>/<kind>-<key[:16]>-v<vocab>/ holding tokenizer.json,
train.bin, val.bin (raw little-endian uint16/uint32, documents each prefixed with <|bos|>) and
manifest.json. The manifest is written last (temp file + os.replace): a directory without a
valid manifest is a half-built cache and is rebuilt. The key is a hash of the source's bytes
(engine/data/digests.py), the tokenizer trainer and every setting that changes what gets built;
the manifest records them (`source_fingerprint`, `tokenizer_trainer` and its version, and for the
built-in corpus the Python whose stdlib it is). Builders serialise on an fcntl lock
(<cache_dir>/<key>.lock), so when several torchrun ranks call prepare_data at once exactly one
builds and the others wait, then load.

The manifest holds a CRC-32 per 64 MiB block of every file (engine/data/integrity.py), verified,
with a range check of every token id, each time the cache is opened. A file that fails is named
in a warning and the cache is rebuilt from the source (the same tokens: the build is
deterministic). A cache written before checksums existed gets them added once, after its token
ids pass the range check. A write error while building (a full disk) removes the partial files
and stops with one message.
"""
from __future__ import annotations

import fcntl
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
from tqdm import tqdm

from engine.runtime.diskspace import is_write_error, remove_quietly, write_failure

from .digests import content_fingerprint
from .integrity import CacheCorruptError, check_range, checksum, verify
from .sources import BUILTIN_MIN_VAL_BYTES, VAL_EVERY, Source, iter_sample, resolve_source
from .tokenizer import (SPLIT_PATTERN, TOKENIZER_FILE, TRAINERS, Tokenizer, encode_threads,
                        require_trainer, tokenizer_trainer, train_tokenizer, trainer_version)

# 2: content-keyed caches with a `tokenizer_trainer`. A version-1 cache (keyed on mtimes and the
# interpreter version) lies under another key and, if met, is not read (_read_manifest).
FORMAT_VERSION = 2
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
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _read_manifest(directory: Path) -> dict | None:
    """The manifest when it is one this version can read, else None (a half-built cache)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    try:
        if manifest.get("format_version") != FORMAT_VERSION:
            return None
        np.dtype(manifest["dtype"])
        [int(manifest["tokens"][split]) for split in SPLITS]
        manifest["tokenizer_hash"], manifest["vocab_size"]
        if manifest["tokenizer_trainer"] not in TRAINERS:
            return None
    except (AttributeError, KeyError, TypeError, ValueError):
        return None  # not a manifest this version wrote: rebuild
    return manifest


def _load(directory: Path) -> DataBundle | None:
    """The cached bundle, verified; None when the directory holds no complete cache (build it) or
    one written before checksums (add them). Raises CacheCorruptError naming a damaged file."""
    manifest = _read_manifest(directory)
    if manifest is None or "checksums" not in manifest:
        return None
    dtype = np.dtype(manifest["dtype"])
    sums = manifest["checksums"]
    names = (TOKENIZER_FILE, *(f"{s}.bin" for s in SPLITS))
    if not isinstance(sums, dict) or not all(isinstance(sums.get(n), dict) for n in names):
        raise CacheCorruptError(directory / MANIFEST, f"has no checksum entry for each of {names}")
    verify(directory / TOKENIZER_FILE, sums[TOKENIZER_FILE])
    arrays = {}
    for split in SPLITS:
        path, n = directory / f"{split}.bin", int(manifest["tokens"][split])
        verify(path, sums[path.name], dtype, int(manifest["vocab_size"]))
        arrays[split] = np.memmap(path, dtype=dtype, mode="r", shape=(n,))
    tok = Tokenizer.load(directory)  # raises if the tokenizer file fails its own hash check
    if tok.hash != manifest["tokenizer_hash"]:
        raise ValueError(f"data cache {directory}: the manifest was built with tokenizer "
                         f"{manifest['tokenizer_hash']} but {TOKENIZER_FILE} has hash {tok.hash}; "
                         f"delete {directory} to rebuild it")
    if tok.vocab_size != manifest["vocab_size"]:
        raise ValueError(f"data cache {directory}: manifest vocab_size {manifest['vocab_size']} != "
                         f"tokenizer vocab_size {tok.vocab_size}; delete {directory} to rebuild it")
    return DataBundle(tok, arrays["train"], arrays["val"], manifest, directory)


def _file_sums(directory: Path) -> dict:
    return {name: checksum(directory / name) for name in (TOKENIZER_FILE, *(f"{s}.bin" for s in SPLITS))}


def _add_checksums(directory: Path) -> bool:
    """Give a complete cache written before checksums existed its checksums (after range-checking
    its token ids); False when the directory holds no such cache."""
    manifest = _read_manifest(directory)
    if manifest is None or "checksums" in manifest or not (directory / TOKENIZER_FILE).is_file():
        return False
    dtype = np.dtype(manifest["dtype"])
    for split in SPLITS:
        path, n = directory / f"{split}.bin", int(manifest["tokens"][split])
        if n <= 0 or not path.is_file() or path.stat().st_size != n * dtype.itemsize:
            return False  # truncated or missing token file: treat as half-built
        check_range(path, dtype, int(manifest["vocab_size"]))
    manifest["checksums"] = _file_sums(directory)
    _write_manifest(directory, manifest)
    return True


def _write_manifest(directory: Path, manifest: dict) -> None:
    tmp = directory / (MANIFEST + f".tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / MANIFEST)


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
        encoded = tok.enc.encode_ordinary_batch(pending, num_threads=encode_threads())
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


@dataclass(frozen=True)
class CacheKey:
    """What names a cache: its directory's name, the fingerprint of the source's bytes and the
    tokenizer trainer, both of which the name covers."""
    name: str
    fingerprint: str
    trainer: str


def cache_key(src: Source, vocab_size: int, trainer: str, memo_dir: Path) -> CacheKey:
    """The key covers the source's bytes and every setting that changes what gets built.

    The trainer is in the key, not only in the manifest: rustbpe and tokenizers learn different
    rankings of the same corpus (ties broken differently), i.e. different token ids, so a cache one
    made must never stand in for the other's. A machine without rustbpe thus builds its own cache
    beside a copied rustbpe one; LADDER_TOKENIZER_TRAINER=rustbpe makes it read the copy instead
    (loading needs no trainer)."""
    fingerprint = content_fingerprint(src.kind, src.content, memo_dir)
    settings = {"fingerprint": fingerprint, "format": FORMAT_VERSION, "pattern": SPLIT_PATTERN,
                "sample_chars": TOKENIZER_SAMPLE_CHARS, "val_every": VAL_EVERY,
                "builtin_min_val_bytes": BUILTIN_MIN_VAL_BYTES, "trainer": trainer}
    key_hash = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return CacheKey(f"{src.kind}-{key_hash[:16]}-v{vocab_size}", fingerprint, trainer)


def _manifest(src: Source, key: CacheKey, tok: Tokenizer, stats: dict, directory: Path) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "source": src.spec,
        "source_kind": src.kind,
        "source_fingerprint": key.fingerprint,
        "cache_key": key.name,
        "source_info": src.info,
        "tokenizer_trainer": key.trainer,
        "tokenizer_trainer_version": trainer_version(key.trainer),
        "tokenizer_hash": tok.hash,
        "vocab_size": tok.vocab_size,
        "merges_learned": tok.n_learned - 256,
        "bos_id": tok.bos_id,
        "dtype": token_dtype(tok.vocab_size).name,
        "tokens": {s: stats[s]["tokens"] for s in SPLITS},
        "documents": {s: stats[s]["documents"] for s in SPLITS},
        "chars": {s: stats[s]["chars"] for s in SPLITS},
        "files": {s: src.files(s) for s in SPLITS},
        "build_id": uuid.uuid4().hex,
        "built_by": f"{socket.gethostname()}:{os.getpid()}",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "checksums": _file_sums(directory),
    }


def _build(src: Source, vocab_size: int, directory: Path, key: CacheKey, progress: bool) -> None:
    t0 = time.time()
    for name in (MANIFEST, TOKENIZER_FILE, "train.bin", "val.bin"):
        (directory / name).unlink(missing_ok=True)
    sample = list(iter_sample(src.train, TOKENIZER_SAMPLE_CHARS))
    if not any(s.strip() for s in sample):
        raise ValueError(f"source {src.spec!r}: the training text is empty")
    tok = train_tokenizer(sample, vocab_size, trainer=key.trainer)
    sample_chars = sum(len(s) for s in sample)
    del sample
    tok.save(directory)
    t_tok = time.time() - t0
    stats = {split: _tokenize_split(src, split, tok, directory / f"{split}.bin", progress)
             for split in SPLITS}
    manifest = _manifest(src, key, tok, stats, directory)
    manifest["tokenizer_sample_chars"] = sample_chars
    manifest["build_seconds"] = {"tokenizer": round(t_tok, 3), "total": round(time.time() - t0, 3)}
    _write_manifest(directory, manifest)


def _build_or_explain(src: Source, vocab_size: int, directory: Path, key: CacheKey, progress: bool) -> None:
    """_build; a write error (a full disk) removes the partial files and becomes one message."""
    try:
        _build(src, vocab_size, directory, key, progress)
    except (OSError, RuntimeError) as e:
        if not is_write_error(e):
            raise
        for partial in directory.glob("*.tmp*"):
            remove_quietly(partial)
        raise write_failure(directory, None, "the data cache", e,
                            "The partial cache files were removed; free space or point --cache-dir (or "
                            "LADDER_CACHE) at a disk with room, then rerun.") from e


def _open_or_build(src: Source, vocab_size: int, directory: Path, key: CacheKey, progress: bool) -> DataBundle:
    """Under the cache lock: open the cache, repairing it (checksums added, or a damaged cache
    rebuilt from the source) or building it as needed."""
    try:
        bundle = _load(directory)  # another rank may have built it while we waited
        if bundle is None and _add_checksums(directory):
            bundle = _load(directory)
    except CacheCorruptError as e:
        print(f"warning: {e}; rebuilding the cache {directory} from {src.spec!r}", file=sys.stderr, flush=True)
        bundle = None
    if bundle is None:
        _build_or_explain(src, vocab_size, directory, key, progress)
        bundle = _load(directory)
        assert bundle is not None, f"cache {directory} unreadable right after building it"
    return bundle


def prepare_data(source: str = "builtin", vocab_size: int = 2048, cache_dir: str | Path | None = None,
                 *, progress: bool = True) -> DataBundle:
    """Tokenize `source` once into a cache and return memmapped train/val token arrays.

    The first call trains the tokenizer (tokenizer_trainer(): rustbpe, else tokenizers; the
    bundle's manifest["tokenizer_trainer"] says which made it) and writes the cache; later calls
    (any process, any machine with the same bytes) load it in well under a second. Safe to call
    from every torchrun rank at once.
    """
    if not isinstance(vocab_size, (int, np.integer)) or isinstance(vocab_size, bool) \
            or not 257 <= vocab_size <= 2**32:
        raise ValueError(f"vocab_size={vocab_size!r}: expected an int in [257, 2**32] "
                         f"(256 byte tokens + the <|bos|> special token at least)")
    vocab_size = int(vocab_size)
    trainer = tokenizer_trainer()  # validates LADDER_TOKENIZER_TRAINER
    src = resolve_source(source)  # validates; cheap (names, sizes, metadata)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key = cache_key(src, vocab_size, trainer, root)
    directory = root / key.name
    try:
        bundle = _load(directory)
    except CacheCorruptError:
        bundle = None  # named and repaired under the lock
    if bundle is not None:
        return bundle
    require_trainer(trainer)  # before any directory is made: building needs the trainer installed
    directory.mkdir(parents=True, exist_ok=True)
    with _FileLock(root / f"{key.name}.lock"):
        return _open_or_build(src, vocab_size, directory, key, progress)
