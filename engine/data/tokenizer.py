"""BPE tokenizer: trained with rustbpe, run with tiktoken.

rustbpe learns the merges (fast, Rust, parallel); tiktoken encodes and decodes with them
(fast, threaded batch API). The tokenizer is fully described by three things: the mergeable
ranks (token bytes in rank order), the split regex and the special tokens. Its `hash` is a
sha256 over exactly those, so two machines that trained the same tokenizer agree on it and a
cache built with one tokenizer is never silently read with another.

Special tokens take the top ids of the vocabulary; the only one is "<|bos|>", prepended to every
document (it doubles as the document separator in the flat token stream).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import tiktoken

# GPT-4's split regex with numbers split into groups of at most two digits (as nanochat does for
# its smaller vocabularies: fewer tokens spent on number chunks).
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
SPECIAL_TOKENS = ("<|bos|>",)
TOKENIZER_FILE = "tokenizer.json"
_FORMAT = 1


def encode_threads() -> int:
    """Threads for batch encoding: every core."""
    return max(1, os.cpu_count() or 1)


def _tokenizer_hash(ranked_tokens: list[bytes], pattern: str, special_tokens: dict[str, int],
                    vocab_size: int) -> str:
    h = hashlib.sha256()
    header = {"format": _FORMAT, "pattern": pattern, "vocab_size": vocab_size,
              "special_tokens": sorted(special_tokens.items())}
    h.update(json.dumps(header, sort_keys=True).encode())
    for tok in ranked_tokens:  # length-prefixed so the concatenation is unambiguous
        h.update(len(tok).to_bytes(4, "little"))
        h.update(tok)
    return h.hexdigest()


class Tokenizer:
    """A tiktoken Encoding plus the facts the trainer needs (vocab_size, bos_id, token_bytes)."""

    def __init__(self, ranked_tokens: list[bytes], pattern: str, vocab_size: int):
        n_special = len(SPECIAL_TOKENS)
        if len(ranked_tokens) + n_special > vocab_size:
            raise ValueError(f"{len(ranked_tokens)} merge tokens + {n_special} special tokens do not "
                             f"fit in vocab_size={vocab_size}")
        if len(set(ranked_tokens)) != len(ranked_tokens):
            raise ValueError("duplicate token bytes in mergeable ranks")
        self.ranked_tokens = list(ranked_tokens)
        self.pattern = pattern
        self.vocab_size = int(vocab_size)
        # Specials sit at the top of the vocabulary. If the corpus was too small to learn all the
        # requested merges, ids between the last merge token and the specials are never produced
        # (the model's embedding rows for them are simply unused); `n_learned` tells.
        self.special_tokens = {s: vocab_size - n_special + i for i, s in enumerate(SPECIAL_TOKENS)}
        self.n_learned = len(self.ranked_tokens)
        self.bos_id = self.special_tokens["<|bos|>"]
        self.hash = _tokenizer_hash(self.ranked_tokens, pattern, self.special_tokens, vocab_size)
        self.enc = tiktoken.Encoding(
            f"ladder-{self.hash[:12]}", pat_str=pattern,
            mergeable_ranks={t: i for i, t in enumerate(self.ranked_tokens)},
            special_tokens=self.special_tokens)
        tb = np.zeros(vocab_size, dtype=np.int32)  # 0 for specials and unused ids
        tb[: self.n_learned] = [len(t) for t in self.ranked_tokens]
        self.token_bytes = tb

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, bos_id={self.bos_id}, hash={self.hash[:12]})"

    # -- encode / decode -------------------------------------------------------------------
    # encode_ordinary: text that happens to contain "<|bos|>" is encoded as plain text, never as
    # the special token (documents cannot forge separators).
    def encode(self, text: str, prepend_bos: bool = False) -> list[int]:
        ids = self.enc.encode_ordinary(text)
        return [self.bos_id] + ids if prepend_bos else ids

    def encode_batch(self, texts: list[str], prepend_bos: bool = False,
                     num_threads: int | None = None) -> list[list[int]]:
        out = self.enc.encode_ordinary_batch(list(texts), num_threads=num_threads or encode_threads())
        if prepend_bos:
            out = [[self.bos_id] + ids for ids in out]
        return out

    def decode(self, ids) -> str:
        if hasattr(ids, "tolist"):  # torch tensors, numpy arrays
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        ids = [int(i) for i in ids]
        if self.n_learned + len(SPECIAL_TOKENS) < self.vocab_size:  # drop never-produced ids
            lo, hi = self.n_learned, self.vocab_size - len(SPECIAL_TOKENS)
            ids = [i for i in ids if not lo <= i < hi]
        return self.enc.decode(ids)

    # -- persistence -----------------------------------------------------------------------
    def save(self, directory) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        obj = {"format": _FORMAT, "hash": self.hash, "vocab_size": self.vocab_size,
               "pattern": self.pattern, "special_tokens": self.special_tokens,
               "mergeable_ranks": [base64.b64encode(t).decode("ascii") for t in self.ranked_tokens]}
        tmp = d / (TOKENIZER_FILE + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(obj))
        os.replace(tmp, d / TOKENIZER_FILE)

    @staticmethod
    def load(directory) -> "Tokenizer":
        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer at {path}")
        try:
            obj = json.loads(path.read_text())
            ranked = [base64.b64decode(s) for s in obj["mergeable_ranks"]]
            tok = Tokenizer(ranked, obj["pattern"], int(obj["vocab_size"]))
            stored = obj["hash"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"tokenizer file {path} is unreadable or corrupted ({e}); "
                             f"delete {path.parent} to rebuild it") from e
        if tok.hash != stored or obj.get("special_tokens") != tok.special_tokens:
            raise ValueError(f"tokenizer file {path} fails its hash check: stored {stored}, "
                             f"computed {tok.hash} (file modified or corrupted); "
                             f"delete {path.parent} to rebuild it")
        return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int, pattern: str = SPLIT_PATTERN) -> Tokenizer:
    """Train a byte-level BPE with rustbpe; vocab_size counts the 256 byte tokens and the specials."""
    import rustbpe  # needed only to train a tokenizer; a cached one runs on tiktoken alone

    min_vocab = 256 + len(SPECIAL_TOKENS)
    if not isinstance(vocab_size, (int, np.integer)) or not min_vocab <= vocab_size <= 2**31 - 1:
        raise ValueError(f"vocab_size={vocab_size!r}: expected an int >= {min_vocab} "
                         f"(256 byte tokens + {len(SPECIAL_TOKENS)} special)")
    vocab_size = int(vocab_size)
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(iter(texts), vocab_size - len(SPECIAL_TOKENS), pattern=pattern)
    ranks = sorted(((bytes(t), r) for t, r in bpe.get_mergeable_ranks()), key=lambda p: p[1])
    if [r for _, r in ranks] != list(range(len(ranks))):
        raise RuntimeError("rustbpe returned non-contiguous ranks")
    return Tokenizer([t for t, _ in ranks], bpe.get_pattern(), vocab_size)
