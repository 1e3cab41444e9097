"""BPE tokenizer: trained with rustbpe (or HF `tokenizers` where rustbpe is missing), run with tiktoken.

A trainer learns the merges; tiktoken encodes and decodes with them (fast, threaded batch API),
whichever trainer learned them. rustbpe is the first choice (nanochat's; ~4x faster on one
core); a machine without it trains a byte-level BPE with `tokenizers` on the same split regex,
and its merges convert to tiktoken's mergeable ranks (TRAINERS, tokenizer_trainer(); LADDER_TOKENIZER_TRAINER
forces one). On the built-in corpus both learn the same set of tokens, ranked differently where
pair counts tie, so they are different tokenizers (different hashes and ids).

The tokenizer is fully described by three things: the mergeable
ranks (token bytes in rank order), the split regex and the special tokens. Its `hash` is a
sha256 over exactly those, so two machines that trained the same tokenizer agree on it and a
cache built with one tokenizer is never silently read with another.

Special tokens take the top ids of the vocabulary; the only one is "<|bos|>", prepended to every
document (it doubles as the document separator in the flat token stream).
"""
from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.metadata
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


# -- training ----------------------------------------------------------------------------------
TRAINERS = ("rustbpe", "tokenizers")   # first choice first
TRAINER_ENV = "LADDER_TOKENIZER_TRAINER"


def trainer_installed(trainer: str) -> bool:
    """Whether `trainer`'s package imports here (a broken install counts as missing)."""
    try:
        importlib.import_module(trainer)
    except ImportError:
        return False
    return True


def tokenizer_trainer() -> str:
    """The trainer a new tokenizer is trained with: LADDER_TOKENIZER_TRAINER when set, else rustbpe
    where it imports, else tokenizers. A forced trainer need not be installed here: a cache it
    built elsewhere still loads (require_trainer is checked only when training)."""
    forced = os.environ.get(TRAINER_ENV, "")
    if forced:
        if forced not in TRAINERS:
            raise ValueError(f"{TRAINER_ENV}={forced!r}: expected one of {', '.join(TRAINERS)} "
                             f"(or unset: rustbpe where installed, else tokenizers)")
        return forced
    return "rustbpe" if trainer_installed("rustbpe") else "tokenizers"


def require_trainer(trainer: str) -> None:
    """Raise, naming the trainer and the fix, unless `trainer` can train here."""
    if trainer not in TRAINERS:
        raise ValueError(f"tokenizer trainer {trainer!r}: expected one of {', '.join(TRAINERS)}")
    if not trainer_installed(trainer):
        forced = f" ({TRAINER_ENV}={os.environ[TRAINER_ENV]})" if os.environ.get(TRAINER_ENV) else ""
        raise ValueError(f"tokenizer trainer {trainer!r}{forced} is not installed: expected "
                         f"`pip install {trainer}`, or {TRAINER_ENV} set to an installed one of "
                         f"{', '.join(TRAINERS)}")


def trainer_version(trainer: str) -> str:
    """The installed version of a trainer's package (recorded in the cache manifest)."""
    try:
        return importlib.metadata.version(trainer)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _train_rustbpe(texts: Iterable[str], n_tokens: int, pattern: str) -> tuple[list[bytes], str]:
    import rustbpe

    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(iter(texts), n_tokens, pattern=pattern)
    ranks = sorted(((bytes(t), r) for t, r in bpe.get_mergeable_ranks()), key=lambda p: p[1])
    if [r for _, r in ranks] != list(range(len(ranks))):
        raise RuntimeError("rustbpe returned non-contiguous ranks")
    return [t for t, _ in ranks], bpe.get_pattern()


def _byte_of_char() -> dict[str, int]:
    """GPT-2's byte-to-unicode table, inverted: byte-level BPE (tokenizers' ByteLevel) spells each
    byte as one printable character, the printable latin-1 bytes as themselves."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]  # "!".."~", "¡".."¬", "®".."ÿ"
    moved = [b for b in range(256) if b not in keep]
    table = {chr(b): b for b in keep}
    table.update({chr(256 + i): b for i, b in enumerate(moved)})
    return table


def _train_tokenizers(texts: Iterable[str], n_tokens: int, pattern: str) -> tuple[list[bytes], str]:
    from tokenizers import Regex, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer(models.BPE())
    # Split with our regex (oniguruma accepts it and splits as tiktoken's fancy-regex does: tested),
    # then spell bytes as characters; the initial alphabet holds all 256, so every merge is bytes.
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=n_tokens, show_progress=False, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(texts, trainer)
    merges = json.loads(hf.to_str())["model"]["merges"]
    # Rank = merge order (a merge's token outranks its parts), bytes via the byte-to-unicode
    # table. tiktoken ranks tokens, not pairs, so a merge whose token an earlier merge already
    # made adds nothing and is skipped: tiktoken then reaches that token by either pair, as it
    # does for rustbpe's ranks too.
    byte_of = _byte_of_char()
    ranked = [bytes([b]) for b in range(256)]
    seen = set(ranked)
    for m in merges:
        a, b = m.split(" ") if isinstance(m, str) else m   # "a b" before tokenizers 0.20
        tok = bytes(byte_of[c] for c in a + b)
        if tok not in seen:
            seen.add(tok)
            ranked.append(tok)
    return ranked, pattern


_TRAIN = {"rustbpe": _train_rustbpe, "tokenizers": _train_tokenizers}


def train_tokenizer(texts: Iterable[str], vocab_size: int, pattern: str = SPLIT_PATTERN,
                    trainer: str | None = None) -> Tokenizer:
    """Train a byte-level BPE; vocab_size counts the 256 byte tokens and the specials. `trainer`:
    one of TRAINERS, default tokenizer_trainer()."""
    min_vocab = 256 + len(SPECIAL_TOKENS)
    if not isinstance(vocab_size, (int, np.integer)) or not min_vocab <= vocab_size <= 2**31 - 1:
        raise ValueError(f"vocab_size={vocab_size!r}: expected an int >= {min_vocab} "
                         f"(256 byte tokens + {len(SPECIAL_TOKENS)} special)")
    trainer = tokenizer_trainer() if trainer is None else trainer
    require_trainer(trainer)
    vocab_size = int(vocab_size)
    ranked, pattern = _TRAIN[trainer](texts, vocab_size - len(SPECIAL_TOKENS), pattern)
    return Tokenizer(ranked, pattern, vocab_size)
