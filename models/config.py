"""The ladder's one dial: depth -> every shape, parameter count and FLOP count.

Shape rules follow nanochat (see ../shared/reference/method.md section 1):
    model_dim = ceil(aspect_ratio * depth / head_dim) * head_dim
    n_head    = model_dim / head_dim   (n_kv_head = n_head)
Per-layer settings live in an explicit tuple of `BlockConfig`, so growth can insert a layer
anywhere without touching the others.

Also here: the preset table (each preset's shape) and the one grammar of a list of depths
(parse_depths).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

MLP_RATIO = 4  # ReLU^2 MLP with 4x expansion, as nanochat
DTYPES = ("float32", "bfloat16")  # compute dtypes of the fast path: CPU, CUDA


@dataclass(frozen=True)
class BlockConfig:
    """Settings of one transformer block. Every block of the ladder is currently identical in
    kind; the tuple exists so that a grown model can carry per-layer differences later."""

    n_head: int


@dataclass(frozen=True)
class GPTConfig:
    depth: int
    aspect_ratio: int
    head_dim: int
    vocab_size: int
    seq_len: int
    rope_base: float = 10_000.0
    softcap: float = 15.0
    dtype: str = "float32"  # compute dtype on the fast path: "float32" (CPU) or "bfloat16" (CUDA)
    blocks: tuple[BlockConfig, ...] = field(default=())

    def __post_init__(self):
        for name in ("depth", "aspect_ratio", "head_dim", "vocab_size", "seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"GPTConfig.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not self.blocks:
            object.__setattr__(self, "blocks", tuple(BlockConfig(self.n_head) for _ in range(self.depth)))
        if len(self.blocks) != self.depth:
            raise ValueError(f"GPTConfig has depth {self.depth} but {len(self.blocks)} block configs")
        for i, b in enumerate(self.blocks):
            if b.n_head != self.n_head:
                raise ValueError(f"block {i} has n_head={b.n_head}, expected {self.n_head} (model_dim/head_dim)")

    # --- derived shapes -------------------------------------------------------------------
    @property
    def model_dim(self) -> int:
        return math.ceil(self.aspect_ratio * self.depth / self.head_dim) * self.head_dim

    @property
    def n_head(self) -> int:
        return self.model_dim // self.head_dim

    @property
    def n_layer(self) -> int:
        return self.depth

    @property
    def mlp_dim(self) -> int:
        return MLP_RATIO * self.model_dim

    # --- counts ---------------------------------------------------------------------------
    def param_counts(self) -> dict[str, int]:
        """Exact parameter count per group (must equal the module's, tested)."""
        D, V = self.model_dim, self.vocab_size
        attn = 4 * D * D  # c_q, c_k, c_v [D, D] and c_proj [D, D] (n_kv_head = n_head)
        mlp = 2 * self.mlp_dim * D  # c_fc [4D, D] and c_proj [D, 4D]
        return {
            "wte": V * D,
            "attn": self.n_layer * attn,
            "mlp": self.n_layer * mlp,
            "lm_head": V * D,
        }

    @property
    def num_params(self) -> int:
        return sum(self.param_counts().values())

    @property
    def scaling_params(self) -> int:
        """N of the scaling laws, counted as nanochat counts it: block matrices + lm_head."""
        c = self.param_counts()
        return c["attn"] + c["mlp"] + c["lm_head"]

    @property
    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6N plus attention scores/values over a context of seq_len
        (12 * n_layer * model_dim * T), the estimate nanochat and PaLM use."""
        return 6 * self.scaling_params + 12 * self.n_layer * self.model_dim * self.seq_len

    # --- serialization (run.json records the model config; checkpoint.load_run_model reads it) ---
    def to_dict(self) -> dict:
        d = asdict(self)
        d["blocks"] = [asdict(b) for b in self.blocks]
        return d

    @staticmethod
    def from_dict(d: dict) -> "GPTConfig":
        d = dict(d)
        d["blocks"] = tuple(BlockConfig(**b) for b in d.get("blocks", ()))
        return GPTConfig(**d)


# The presets: the model shape of each. cpu-tiny keeps nanochat's shape rules at a size a 2-core CPU
# trains in minutes (method.md suggests aspect 32, head_dim 32, vocab 2048, sequence 256, fp32);
# nanochat: its shapes (anchors.md). Each preset's training defaults (batches, learning rates) are
# the trainer's: engine/train/config.TRAIN_PRESETS, keyed by the same names.
PRESETS: dict[str, dict] = {
    "cpu-tiny": dict(aspect_ratio=32, head_dim=32, vocab_size=2048, seq_len=256, dtype="float32"),
    "nanochat": dict(aspect_ratio=64, head_dim=128, vocab_size=32768, seq_len=2048, dtype="bfloat16"),
}


def check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")


def model_config(preset: str, depth: int, **overrides) -> GPTConfig:
    check_preset(preset)
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f"depth must be a positive integer, got {depth!r}")
    return GPTConfig(depth=depth, **{**PRESETS[preset], **overrides})


def check_depths(depths: list[int]) -> None:
    """The depths of a ladder or a sweep: positive and strictly increasing (a ladder grows upward)."""
    if not depths:
        raise ValueError("--depths is empty; expected e.g. 2:5 or 2,3,5")
    if any(d < 1 for d in depths):
        raise ValueError(f"--depths must be positive, got {depths}")
    if any(b <= a for a, b in zip(depths, depths[1:])):
        raise ValueError(f"--depths must be strictly increasing, got {depths}")


def parse_depths(spec: str) -> list[int]:
    """The one grammar of --depths: a comma list of depths and inclusive ranges LO:HI, e.g.
    '2:5' -> [2, 3, 4, 5], '2,3,5' -> [2, 3, 5], '2:4,8' -> [2, 3, 4, 8]; checked by check_depths."""
    depths: list[int] = []
    try:
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            if ":" in part:
                lo, hi = (int(x) for x in part.split(":"))
                if hi < lo:
                    raise ValueError
                depths.extend(range(lo, hi + 1))
            else:
                depths.append(int(part))
    except ValueError:
        raise ValueError(f"--depths {spec!r}: expected LO:HI (inclusive, LO <= HI) or a list like 2,3,5") from None
    check_depths(depths)
    return depths
