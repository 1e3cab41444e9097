"""Text sources: resolve a `source` string into documents split into train and validation.

Four forms:
  builtin        the Python standard library's .py files shipped with this interpreter
  packages       the .py files of the pinned pure-Python wheels of requirements-corpus.txt, installed by
                 `make corpus` (~27M tokens; the same bytes on every machine and every Python)
  text:PATH      a .txt/.md file, or a directory of them (recursive)
  parquet:GLOB   parquet shards with a `text` column (FineWeb-Edu / ClimbMix shard format)

`resolve_source` only looks at file names, sizes and parquet metadata, so bad input fails fast
(ValueError naming the value and what was expected). A source lists the files whose bytes decide
what gets built (`content`); engine/data/digests.py hashes them into the fingerprint that keys the
cache, so the same bytes give the same cache at any path, on any machine.
"""
from __future__ import annotations

import glob as globmod
import hashlib
import os
import platform
import stat
import re
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

VAL_EVERY = 50                # ~1 file in 50 goes to validation
BUILTIN_MIN_VAL_BYTES = 600_000   # >= ~150k tokens of Python source at vocab 2048
TEXT_SUFFIXES = (".txt", ".md")
EAGER_CHECK_BYTES = 16_000_000  # a single text file up to this size is split at resolve time
SOURCE_FORMS = "'builtin', 'packages', 'text:PATH' (a .txt/.md file or a directory of them) or 'parquet:GLOB'"


@dataclass
class Unit:
    """One step of progress while tokenizing (a file, or a parquet row group)."""
    name: str
    read: Callable[[], list[str]]     # -> documents
    file: str = ""                    # the file it comes from (manifest), default: name


@dataclass
class Source:
    kind: str
    spec: str
    # (label, path) of every file whose bytes decide what is built, in an order that matters; the
    # label is the file's name where the name decides the train/val split, else "".
    content: list[tuple[str, str]]
    train: list[Unit]
    val: list[Unit]
    info: dict = field(default_factory=dict)   # goes into the manifest

    def files(self, split: str) -> list[str]:
        units = self.train if split == "train" else self.val
        return sorted({u.file or u.name for u in units})


def _path_hash(rel: str) -> int:
    return int.from_bytes(hashlib.sha256(rel.encode()).digest()[:8], "little")


def split_by_file(rels: list[str], sizes: list[int], min_val_bytes: int = 1) -> set[str]:
    """Validation files: those whose path hash is 0 mod VAL_EVERY, topped up in hash order until
    they hold at least min_val_bytes; never all files. Deterministic and independent of order."""
    val = {r for r in rels if _path_hash(r) % VAL_EVERY == 0}
    size_of = dict(zip(rels, sizes))
    vbytes = sum(size_of[r] for r in val)
    for r in sorted(rels, key=_path_hash):
        if vbytes >= min_val_bytes and val:
            break
        if r not in val and size_of[r] > 0:
            val.add(r)
            vbytes += size_of[r]
    if not any(size_of[r] > 0 for r in rels if r not in val):  # keep a non-empty train file
        movable = [r for r in val if size_of[r] > 0] or list(val)
        val.discard(max(movable, key=_path_hash))
    return val


def _read_text(path) -> str:
    with open(path, "rb") as f:
        return f.read().decode("utf-8", errors="replace")


def _file_unit(path, rel: str) -> Unit:
    return Unit(rel, lambda: [_read_text(path)])


def _split_source_files(base: str, rels: list[str], sizes: list[int]) -> tuple[list, list[Unit], list[Unit]]:
    """The Python-source corpora (builtin, packages): files under `base` by relative path, in path order,
    one document each, split by file with at least BUILTIN_MIN_VAL_BYTES to validation; returns
    (content, train units, validation units)."""
    order = sorted(range(len(rels)), key=lambda i: rels[i])
    rels, sizes = [rels[i] for i in order], [sizes[i] for i in order]
    val = split_by_file(rels, sizes, BUILTIN_MIN_VAL_BYTES)
    # plain strings: 1800 pathlib joins cost ~0.1 s on the warm path
    content = [(r, os.path.join(base, r)) for r in rels]
    train = [_file_unit(os.path.join(base, r), r) for r in rels if r not in val]
    vals = [_file_unit(os.path.join(base, r), r) for r in rels if r in val]
    return content, train, vals


# -- builtin ---------------------------------------------------------------------------------
def _builtin() -> Source:
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise ValueError(f"source 'builtin': the standard library directory {root} does not exist")
    excluded = {"site-packages", "dist-packages", "__pycache__"}
    rels, sizes = [], []
    # os.walk with pruning: site-packages under the stdlib root can hold 10x more files.
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in excluded]
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        for fn in filenames:
            if fn.endswith(".py"):
                st = os.stat(os.path.join(dirpath, fn))
                if stat.S_ISREG(st.st_mode):
                    rels.append(fn if rel_dir == "." else f"{rel_dir}/{fn}")
                    sizes.append(st.st_size)
    if not rels:
        raise ValueError(f"source 'builtin': no .py files under {root}")
    content, train, vals = _split_source_files(str(root), rels, sizes)
    # The cache is keyed on these files' bytes, not on the interpreter's version; the manifest
    # records the version whose stdlib it is (and the fingerprint of its bytes).
    info = {"root": str(root), "python": platform.python_version(), "n_files": len(rels),
            "bytes": sum(sizes), "included": "every .py file under the stdlib root",
            "excluded": "site-packages, dist-packages, __pycache__, non-.py files; empty files "
                        "contribute no document"}
    return Source("builtin", "builtin", content, train, vals, info)


# -- packages ------------------------------------------------------------------------------
CORPUS_PINS = Path(__file__).resolve().parents[2] / "requirements-corpus.txt"
CORPUS_INSTALL = "make corpus"  # the command that installs the pinned wheels (Makefile)


def corpus_dir() -> Path:
    """Where `make corpus` installs the pinned wheels: LADDER_CORPUS_DIR, else <venv>/corpus."""
    env = os.environ.get("LADDER_CORPUS_DIR")
    return Path(env).expanduser() if env else Path(sys.prefix) / "corpus"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503 name normalisation


def corpus_pins(path: Path = CORPUS_PINS) -> dict[str, str]:
    """{canonical name: version} of requirements-corpus.txt's `name==version --hash=...` lines."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            m = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line)
            if not m:
                raise ValueError(f"{path}: line {line!r} is not 'name==version --hash=sha256:...'")
            pins[_canonical(m.group(1))] = m.group(2)
    return pins


def _record_py_files(dist_info: Path) -> list[tuple[str, int]]:
    """(path, size) of the .py files a wheel installed, from its RECORD; generated scripts (paths
    leaving the install root, which embed the interpreter's path) are not the wheel's bytes."""
    rows = []
    for line in (dist_info / "RECORD").read_text().splitlines():
        parts = line.rsplit(",", 2)
        if len(parts) == 3 and parts[0].endswith(".py") and not parts[0].startswith("..") and parts[2]:
            rows.append((parts[0], int(parts[2])))
    return rows


def _installed_wheels(root: Path) -> dict[str, tuple[str, Path]]:
    """{canonical name: (version, its .dist-info directory)} of what is installed under root."""
    found = {}
    for d in (root.glob("*.dist-info") if root.is_dir() else []):
        name, _, version = d.name[: -len(".dist-info")].rpartition("-")
        found[_canonical(name)] = (version, d)
    return found


def _packages(pins: dict[str, str] | None = None, root: Path | None = None) -> Source:
    pins = corpus_pins() if pins is None else pins
    root = corpus_dir() if root is None else root
    installed = _installed_wheels(root)
    wrong = [f"{n}=={v} (found {installed[n][0] if n in installed else 'nothing'})"
             for n, v in pins.items() if installed.get(n, ("",))[0] != v]
    if wrong:
        raise ValueError(f"source 'packages': the pinned corpus wheels are not installed at {root}: "
                         f"{', '.join(wrong)}; run `{CORPUS_INSTALL}` (or set LADDER_CORPUS_DIR)")
    rels, sizes = [], []
    for n in sorted(pins):
        for rel, size in _record_py_files(installed[n][1]):
            actual = os.stat(root / rel).st_size if (root / rel).is_file() else None
            if actual != size:
                raise ValueError(f"source 'packages': {root / rel} has {actual} bytes, its wheel's RECORD says "
                                 f"{size}: the corpus changed after it was installed; rerun `{CORPUS_INSTALL}`")
            rels.append(rel)
            sizes.append(size)
    content, train, vals = _split_source_files(str(root), rels, sizes)
    info = {"root": str(root), "packages": {n: pins[n] for n in sorted(pins)}, "n_files": len(rels),
            "bytes": sum(sizes), "included": "every .py file each pinned wheel's RECORD lists",
            "excluded": "generated scripts, non-.py files, anything else in the directory"}
    return Source("packages", "packages", content, train, vals, info)


# -- text:PATH -------------------------------------------------------------------------------
def _paragraph_blocks(path: Path, n_blocks: int = VAL_EVERY) -> tuple[list[str], list[str]]:
    """A single file: paragraphs (blank-line separated) grouped into up to n_blocks contiguous
    blocks, one document each; the last block is validation."""
    text = _read_text(path)
    paras = [p for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
    if len(paras) < 2:
        raise ValueError(f"source 'text:{path}': need at least 2 non-empty paragraphs (separated "
                         f"by a blank line) to split one file into train/val, found {len(paras)}")
    n = min(n_blocks, len(paras))
    bounds = [round(i * len(paras) / n) for i in range(n + 1)]
    blocks = ["\n\n".join(paras[a:b]) for a, b in zip(bounds, bounds[1:])]
    return blocks[:-1], blocks[-1:]


def _text(spec: str, arg: str) -> Source:
    if not arg:
        raise ValueError(f"source {spec!r}: expected text:PATH with a .txt/.md file or a directory")
    path = Path(arg).expanduser()
    if not path.exists():
        raise ValueError(f"source {spec!r}: path {path} does not exist (expected a .txt/.md file "
                         f"or a directory of them)")
    if path.is_file():
        if path.suffix.lower() not in TEXT_SUFFIXES:
            raise ValueError(f"source {spec!r}: {path} is not a .txt/.md file")
        files, root = [path], path.parent
    else:
        root = path
        files = sorted((p for p in path.rglob("*") if p.is_file()
                        and p.suffix.lower() in TEXT_SUFFIXES), key=lambda p: p.relative_to(root).as_posix())
        if not files:
            raise ValueError(f"source {spec!r}: no .txt/.md files under {path}")
    rels = [p.relative_to(root).as_posix() for p in files]
    stats = [p.stat() for p in files]
    sizes = [s.st_size for s in stats]
    if sum(sizes) == 0:
        raise ValueError(f"source {spec!r}: the text is empty ({len(files)} file(s), 0 bytes)")
    # A given file's name decides nothing; in a directory the relative names decide the split.
    content = [("", str(path))] if path.is_file() else [(r, str(p)) for r, p in zip(rels, files)]
    info = {"path": str(path.resolve()), "n_files": len(files), "bytes": sum(sizes)}
    nonempty = [(p, r) for p, r, s in zip(files, rels, sizes) if s > 0]
    if len(nonempty) == 1:  # one file: split by paragraph blocks
        p, r = nonempty[0]
        cache: dict = {}

        def blocks(i: int) -> list[str]:
            if not cache:
                cache["tv"] = _paragraph_blocks(p)
            return cache["tv"][i]
        if p.stat().st_size <= EAGER_CHECK_BYTES:
            blocks(0)  # small file: validate now, before any cache directory is touched
        info["split"] = f"one file: up to {VAL_EVERY} paragraph blocks, the last is validation"
        return Source("text", spec, content, [Unit(r + "#train", lambda: blocks(0), r)],
                      [Unit(r + "#val", lambda: blocks(1), r)], info)
    val = split_by_file(rels, sizes)
    info["split"] = f"by file: hash of the relative path, ~1 in {VAL_EVERY} to validation"
    return Source("text", spec, content, [_file_unit(p, r) for p, r in zip(files, rels) if r not in val],
                  [_file_unit(p, r) for p, r in zip(files, rels) if r in val], info)


# -- parquet:GLOB ----------------------------------------------------------------------------
def _parquet_units(path: Path, name: str, row_lo: int = 0, row_hi: int | None = None) -> list[Unit]:
    import pyarrow.parquet as pq  # parquet sources only; pyarrow is slow to import

    md = pq.ParquetFile(path).metadata
    units, start = [], 0
    for g in range(md.num_row_groups):
        n = md.row_group(g).num_rows
        lo, hi = max(start, row_lo), min(start + n, row_hi if row_hi is not None else start + n)
        if lo < hi:
            def read(g=g, a=lo - start, b=hi - start):
                col = pq.ParquetFile(path).read_row_group(g, columns=["text"]).column("text")
                return [t for t in col.slice(a, b - a).to_pylist() if t]
            units.append(Unit(f"{name}#rg{g}", read, name))
        start += n
    return units


def _parquet(spec: str, pattern: str) -> Source:
    import pyarrow as pa  # parquet sources only; pyarrow is slow to import
    import pyarrow.parquet as pq

    if not pattern:
        raise ValueError(f"source {spec!r}: expected parquet:GLOB, e.g. parquet:data/*.parquet")
    files = sorted(Path(p) for p in globmod.glob(str(Path(pattern).expanduser()), recursive=True)
                   if Path(p).is_file())
    if not files:
        raise ValueError(f"source {spec!r}: no files match {pattern!r} (expected parquet shards "
                         f"with a 'text' column)")
    rows = []
    for f in files:
        try:
            pf = pq.ParquetFile(f)
        except Exception as e:  # noqa: BLE001 (pyarrow raises several types)
            raise ValueError(f"source {spec!r}: {f} is not a readable parquet file ({e})") from e
        schema = pf.schema_arrow
        if "text" not in schema.names:
            raise ValueError(f"source {spec!r}: {f} has no 'text' column (columns: {schema.names}); "
                             f"expected FineWeb-Edu/ClimbMix-style shards with a 'text' column")
        t = schema.field("text").type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
            raise ValueError(f"source {spec!r}: column 'text' of {f} has type {t}, expected string")
        rows.append(pf.metadata.num_rows)
    if sum(rows) == 0:
        raise ValueError(f"source {spec!r}: the text is empty (0 rows in {len(files)} file(s))")
    content = [("", str(f)) for f in files]  # names decide nothing but the order (the last is val)
    info = {"glob": pattern, "n_files": len(files), "rows": sum(rows)}
    if len(files) == 1:  # one file: the last ~1/50 of its rows is validation
        n = rows[0]
        if n < 2:
            raise ValueError(f"source {spec!r}: a single parquet file needs >= 2 rows to split "
                             f"into train/val, {files[0]} has {n}")
        n_val = max(1, n // VAL_EVERY)
        info["split"] = f"one file: the last {n_val} of {n} rows are validation"
        return Source("parquet", spec, content, _parquet_units(files[0], files[0].name, 0, n - n_val),
                      _parquet_units(files[0], files[0].name, n - n_val, n), info)
    info["split"] = "the last file in sorted order is validation"
    train = [u for f in files[:-1] for u in _parquet_units(f, f.name)]
    return Source("parquet", spec, content, train, _parquet_units(files[-1], files[-1].name), info)


def resolve_source(source: str) -> Source:
    if not isinstance(source, str):
        raise ValueError(f"source={source!r}: expected a string, one of {SOURCE_FORMS}")
    if source == "builtin":
        return _builtin()
    if source == "packages":
        return _packages()
    kind, sep, arg = source.partition(":")
    if sep and kind == "text":
        return _text(source, arg)
    if sep and kind == "parquet":
        return _parquet(source, arg)
    raise ValueError(f"unknown source {source!r}: expected {SOURCE_FORMS}")


def iter_sample(units: list[Unit], max_chars: int) -> Iterator[str]:
    """The first max_chars characters of a split's documents, in order (tokenizer training)."""
    n = 0
    for u in units:
        for doc in u.read():
            if n >= max_chars:
                return
            doc = doc[: max_chars - n]
            n += len(doc)
            yield doc
