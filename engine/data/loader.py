"""Token loaders: a shuffled, exactly resumable, world-size invariant training stream and a fixed
validation set.

Training: the token array is cut into n_seq = (len - 1) // seq_len non-overlapping windows of
seq_len + 1 tokens (x = w[:-1], y = w[1:]; consecutive windows share their boundary token).
The global stream of window indices is epoch 0's permutation, then epoch 1's, ..., epoch e's
permutation coming from np.random.default_rng([seed, e]). Step k consumes stream entries
[k*G, (k+1)*G) (G = global_batch), and rank r takes the slice [r*B, (r+1)*B) of them with
B = G // world_size. The only state is how many stream entries were consumed, so a resumed run,
at any world size, sees exactly the tokens the uninterrupted run would have seen.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

# torch is imported inside the functions that need it: `from engine.data import prepare_data`
# stays light (data-prep processes and tests don't pay torch's import time).


def _as_array(tokens) -> np.ndarray:
    if type(tokens).__module__.startswith("torch"):
        tokens = tokens.detach().cpu().numpy()
    tokens = np.asarray(tokens) if not isinstance(tokens, np.ndarray) else tokens
    if tokens.ndim != 1:
        raise ValueError(f"tokens: expected a 1-D array, got shape {tokens.shape}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens: expected an integer array, got dtype {tokens.dtype}")
    return tokens


def _check_int(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name}={value!r}: expected an int >= {lo}")
    return int(value)


def _to_device(windows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L+1] token windows -> x, y int64 [B, L] on device (pinned, async copy on CUDA)."""
    b, l1 = windows.shape
    cuda = device.type == "cuda"
    xy = torch.empty((2, b, l1 - 1), dtype=torch.int64, pin_memory=cuda)
    a = xy.numpy()
    a[0] = windows[:, :-1]
    a[1] = windows[:, 1:]
    if device.type != "cpu":
        xy = xy.to(device, non_blocking=cuda)
    return xy[0], xy[1]


class TokenLoader:
    def __init__(self, tokens: np.ndarray, seq_len: int, global_batch: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, device="cpu"):
        self.tokens = _as_array(tokens)
        self.seq_len = _check_int("seq_len", seq_len, 1)
        self.global_batch = _check_int("global_batch", global_batch, 1)
        self.world_size = _check_int("world_size", world_size, 1)
        self.rank = _check_int("rank", rank, 0)
        self.seed = _check_int("seed", seed, 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank={rank} out of range for world_size={world_size}")
        if self.global_batch % self.world_size:
            raise ValueError(f"global_batch={global_batch} is not divisible by world_size="
                             f"{world_size}")
        self.local_batch = self.global_batch // self.world_size
        self.n_tokens = len(self.tokens)
        self.n_seq = max(0, (self.n_tokens - 1) // self.seq_len)
        if self.n_seq < self.global_batch:
            raise ValueError(f"seq_len={seq_len}, global_batch={global_batch}: {self.n_tokens} "
                             f"tokens hold only {self.n_seq} sequences of {seq_len}+1 tokens, "
                             f"fewer than one global batch")
        self.device = torch.device(device)
        self.seq_consumed = 0
        self._perms: dict[int, np.ndarray] = {}

    @property
    def epoch(self) -> int:
        return self.seq_consumed // self.n_seq

    def _perm(self, epoch: int) -> np.ndarray:
        p = self._perms.get(epoch)
        if p is None:
            if len(self._perms) >= 2:  # a batch spans at most two epochs
                self._perms.pop(min(self._perms))
            p = np.random.default_rng([self.seed, epoch]).permutation(self.n_seq)
            self._perms[epoch] = p
        return p

    def stream(self, start: int, count: int) -> np.ndarray:
        """Window indices at global stream positions [start, start + count)."""
        pos = np.arange(start, start + count, dtype=np.int64)
        epochs, offs = np.divmod(pos, self.n_seq)
        out = np.empty(count, dtype=np.int64)
        for e in np.unique(epochs):
            m = epochs == e
            out[m] = self._perm(int(e))[offs[m]]
        return out

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.seq_consumed + self.rank * self.local_batch
        idx = self.stream(start, self.local_batch)
        self.seq_consumed += self.global_batch
        L = self.seq_len
        windows = np.empty((self.local_batch, L + 1), dtype=self.tokens.dtype)
        for i, s in enumerate(idx * L):
            windows[i] = self.tokens[s: s + L + 1]
        return _to_device(windows, self.device)

    __next__ = next

    def __iter__(self):
        return self

    def state_dict(self) -> dict:
        return {"seq_consumed": self.seq_consumed, "seed": self.seed, "seq_len": self.seq_len,
                "global_batch": self.global_batch, "n_tokens": self.n_tokens}

    def load_state_dict(self, state: dict) -> None:
        """Resume. global_batch may differ from the saved one (the stream is counted in
        sequences, so a batch-size change continues the same stream)."""
        missing = {"seq_consumed", "seed", "seq_len", "n_tokens"} - set(state)
        if missing:
            raise ValueError(f"loader state is missing {sorted(missing)}")
        for key in ("seq_len", "n_tokens", "seed"):
            if int(state[key]) != getattr(self, key):
                raise ValueError(f"loader state mismatch: saved {key}={state[key]}, this loader has "
                                 f"{key}={getattr(self, key)} (different data or settings)")
        self.seq_consumed = _check_int("seq_consumed", state["seq_consumed"], 0)


def val_batches(tokens, seq_len: int, batch_size: int, max_tokens: int | None, rank: int = 0,
                world_size: int = 1, device="cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed validation set: as many windows of seq_len + 1 as max_tokens tokens fill (all
    when None), in full batches of batch_size (a trailing partial batch is dropped so every batch
    has the same shape), spread evenly over the WHOLE split: window i starts at window slot
    floor(i * slots / n_windows). A prefix would measure one stretch of documents (in the
    built-in corpus, a handful of modules); strided windows sample every part of the split, so the
    same set stays representative at any size. Rank r yields batches r, r + W, r + 2W, ...; the
    union over ranks is the same set for every world size. Arguments are checked here, at the
    call, not at the first next()."""
    tokens = _as_array(tokens)
    seq_len = _check_int("seq_len", seq_len, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    world_size = _check_int("world_size", world_size, 1)
    rank = _check_int("rank", rank, 0)
    if rank >= world_size:
        raise ValueError(f"rank={rank} out of range for world_size={world_size}")
    n = len(tokens) if max_tokens is None else min(_check_int("max_tokens", max_tokens, 1), len(tokens))
    n_batches = max(0, (n - 1) // seq_len) // batch_size
    if n_batches == 0:
        raise ValueError(f"val_batches: {n} tokens do not fill one batch of {batch_size} "
                         f"sequences of {seq_len}+1 tokens (max_tokens={max_tokens}, "
                         f"len(tokens)={len(tokens)})")
    dev = torch.device(device)
    slots, n_windows = (len(tokens) - 1) // seq_len, n_batches * batch_size

    def gen():
        L = seq_len
        for b in range(rank, n_batches, world_size):
            windows = np.empty((batch_size, L + 1), dtype=tokens.dtype)
            for i in range(batch_size):
                s = ((b * batch_size + i) * slots // n_windows) * L
                windows[i] = tokens[s: s + L + 1]
            yield _to_device(windows, dev)

    return gen()
