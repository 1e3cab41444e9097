"""The growth operator G: rung d -> rung d' (method.md section 2), exactly function-preserving.

`grow` builds the new rung from the old one following the table of method.md section 2:

| tensor                 | old block        | new rows / columns                                   |
|------------------------|------------------|------------------------------------------------------|
| wte [V, D]             | copy             | new columns zero                                     |
| c_q, c_k, c_v [I, D]   | copy             | new input columns and new output rows (heads): fresh |
| attn.c_proj [D, I]     | copy             | new output rows zero, new head columns zero          |
| mlp.c_fc [4D, D]       | copy             | new hidden rows and new input columns: fresh         |
| mlp.c_proj [D, 4D]     | copy times 1/c   | new rows and columns zero                            |
| width_init "split"     | c_proj columns   | new heads / hidden units: read-in rows copy a trained|
|                        | of a source/(k+1)| one's (+ noise); write-out 1/(k+1) of it (k copies)  |
| lm_head [V, D]         | copy times 1/c   | new columns: small fresh init (std LM_HEAD_STD)      |
| new layer              | --               | fresh block with both c_proj zero (identity)         |

with c = sqrt(D'/D) and I = n_head * head_dim. New coordinates are appended at the end of
every width axis (model, hidden and head axes), new heads after the old ones, head_dim fixed.
"Fresh" means exactly the distributions of models/gpt.py (`init_read_in_` with the NEW fan-in,
`LM_HEAD_STD` for lm_head), drawn from a torch.Generator seeded with `seed`: we literally build
a freshly initialised model of the new config (`build_model(new_config, seed)`) and overwrite
the inherited block of every tensor, so the fresh values are reproducible and identical in
distribution to a scratch model of the same rung.

Why it is exact (method.md section 2): every read of the residual stream goes through a
parameter-free RMSNorm, which maps c*[x, 0] (and [x, 0] after the embedding) to c*[norm(x), 0];
QK-norm removes c from q and k; v and the attention output carry c, which the stream expects;
ReLU^2 squares c, hence 1/c on mlp.c_proj; the final norm gives c*[norm(x), 0], hence 1/c on
lm_head. Zero write-out weights keep the new stream coordinates at zero, and new heads / hidden
units are written out through zero columns.

Symmetry (a finding worth knowing when reading training curves): at the FIRST step only the
zero-initialised "writers" (wte new columns, c_proj new rows/columns, new layers' c_proj) get a
non-zero gradient; the random "readers" of new stream coordinates / new heads / new hidden units
(c_q/k/v/c_fc new entries, lm_head new columns, new layers' read-ins) see inputs or output
gradients that are exactly zero at that moment, so their gradient is zero at step 1 and non-zero
from step 2 on (with AdamW weight decay they already move at step 1). Nothing stays stuck,
which is the point of making one side random. tests/engine/inherit/test_growth.py checks both facts.

Width init "split" (Net2Net, Chen et al. 2016; bert2BERT's AKI, Chen et al. 2022): instead of
starting empty, each new hidden unit / head copies a trained source unit of the same layer
(sources drawn without replacement, round after round, from a generator seeded with `seed`). Its
read-in rows copy the source's inherited block (the entries on new input columns stay fresh: they
read stream coordinates that are zero at growth); the source's write-out columns are divided
among the source and its k copies, 1/(k+1) each, so the sum they write is unchanged (ReLU^2
activations, and QK-norm / rotary / attention, act on each unit or head alone, so a copy's output
equals its source's). Only the residual stream is not duplicated: under a parameter-free RMSNorm
the RMS of [x, x_S] is not a fixed multiple of x's (it depends on which coordinates S repeats and
their size token by token), so no constant rescale like c keeps the stream's norm exact; new
stream coordinates stay zero as above. Copies are new capacity: mask 0, carried Fisher and
moments 0. A source's read-in rows now feed a write-out 1/(k+1) as large, so their gradient is
1/(k+1) times the parent's: their carried Fisher and v are times 1/(k+1)^2, m times 1/(k+1)
(its write-out columns keep their gradient and their carried values).

The operator works on plain (unsharded) modules; under FSDP the caller gathers a full state
dict, builds a plain GPT, grows it, and re-shards the result.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor

from models.config import GPTConfig
from models.gpt import GPT, build_model

PLACEMENTS = ("end", "middle", "copy-middle")
# How an inserted layer starts: "identity" (fresh read-ins, zero write-outs: exact, method.md section 2)
# or "copy" (the G_stack idea, Du et al. 2024: a whole copy of the trained neighbouring layer, write-outs
# included; the function changes, and growth_logit_error measures by how much).
DEPTH_INITS = ("identity", "copy")
# How new heads and MLP hidden units start: "zero" (fresh read-ins, zero write-outs: exact) or "split"
# (copies of trained ones sharing their write-out; see the module docstring).
WIDTH_INITS = ("zero", "split")
# Symmetry breaking of "split": a copy and its source would get identical read-in gradients (their
# different fresh entries on new input columns matter only once new stream coordinates leave zero),
# and an unequal split of the write-out (Net2Net's alternative) does not help under Adam, whose
# update ignores a constant per-unit gradient scale. So, as Net2Net (Chen et al. 2016) and bert2BERT
# (Chen et al. 2022) suggest, the copy's read-in rows get a little noise: std SPLIT_NOISE times the
# row's RMS. It changes the function slightly (growth_logit_error measures it); 0 keeps it exact.
SPLIT_NOISE = 1e-3
# offset of the split generator's seed from the fresh-init seed, so the two streams differ
_SPLIT_SEED_OFFSET = 104_729

# Tensors whose inherited block is multiplied by 1/c (so their carried Fisher is times c^2).
_RESCALED_SUFFIXES = ("mlp.c_proj.weight",)
_RESCALED_NAMES = ("lm_head.weight",)

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


@dataclass
class GrowthResult:
    """What growth hands to the trainer and the penalty (method.md section 2), all keyed by the
    NEW model's `named_parameters()` names and in the new shapes.

    model:  the grown GPT (same device and parameter dtype as the old one).
    anchor: A, clones of the grown weights at the moment of growth.
    mask:   M, fp32, 1.0 on coordinates that came from the old model, 0.0 on new ones
            (every coordinate of an inserted layer is new, including copy-middle copies).
    fisher: the carried Omega' (fp32): Omega on copied coordinates, c^2 * Omega where the weight
            was multiplied by 1/c, 0 on new coordinates; None when no Fisher was given.
    moments: the parent's Adam moments carried into the new shapes (method.md section 2), keyed
            like the parameters, each {"exp_avg": m', "exp_avg_sq": v'}: m' = c * m and v' = c^2 * v
            where the weight was multiplied by 1/c (its gradient is c times the old one), m and v on
            other copied coordinates, 0 on new ones; None when no moments were given.
    new_layer_indices: indices (in the new model) of the inserted layers, ascending.
    width:  (D, D') model_dim before and after.
    c:      sqrt(D'/D).
    """

    model: GPT
    anchor: dict[str, Tensor]
    mask: dict[str, Tensor]
    fisher: dict[str, Tensor] | None
    new_layer_indices: list[int]
    width: tuple[int, int]
    c: float
    moments: dict[str, dict[str, Tensor]] | None = None


def _check_configs(old: GPTConfig, new: GPTConfig) -> None:
    for field in ("vocab_size", "head_dim", "rope_base", "softcap"):
        a, b = getattr(old, field), getattr(new, field)
        if a != b:
            raise ValueError(f"growth cannot change {field} ({a!r} -> {b!r})")
    if new.depth < old.depth:
        raise ValueError(f"growth cannot reduce depth ({old.depth} -> {new.depth})")
    if new.model_dim < old.model_dim:
        raise ValueError(f"growth cannot reduce model_dim ({old.model_dim} -> {new.model_dim})")
    if old.n_head * old.head_dim != old.model_dim or new.n_head * new.head_dim != new.model_dim:
        raise ValueError("growth assumes n_head * head_dim == model_dim (method.md section 1)")


def _check_inits(depth_init: str, width_init: str, split_noise: float) -> None:
    if depth_init not in DEPTH_INITS:
        raise ValueError(f"depth_init must be one of {DEPTH_INITS}, got {depth_init!r}")
    if width_init not in WIDTH_INITS:
        raise ValueError(f"width_init must be one of {WIDTH_INITS}, got {width_init!r}")
    if not 0 <= split_noise < math.inf:  # NaN fails too
        raise ValueError(f"split_noise must be a finite number >= 0, got {split_noise!r}")


def _layer_map(old_depth: int, new_depth: int, placement: str) -> tuple[list[int], list[int], int | None]:
    """Returns (old layer i -> new index, new layer indices, copy source in OLD indices or None).

    "end": new layers appended. "middle": inserted as a contiguous run at old_depth // 2 (before
    the old layer that sat there). "copy-middle": same position, and each inserted layer copies
    the read-in weights of the old layer at old_depth // 2, so the copy sits right before its
    source and reads exactly the stream its source reads."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    k = new_depth - old_depth
    pos = old_depth if placement == "end" else old_depth // 2
    old_to_new = [i if i < pos else i + k for i in range(old_depth)]
    new_layers = list(range(pos, pos + k))
    src = min(old_depth // 2, old_depth - 1) if placement == "copy-middle" else None
    return old_to_new, new_layers, src


def _new_name(old_name: str, old_to_new: list[int]) -> str:
    m = _BLOCK_RE.match(old_name)
    if m is None:
        return old_name
    return f"blocks.{old_to_new[int(m.group(1))]}.{m.group(2)}"


def _is_rescaled(name: str) -> bool:
    return name in _RESCALED_NAMES or name.endswith(_RESCALED_SUFFIXES)


def _inherited_region(name: str, old_shape: torch.Size) -> tuple[slice, ...]:
    """Every inherited block sits in the leading corner: new coordinates are appended at the end
    of every axis (method.md section 2), so the old tensor occupies [:rows, :cols]."""
    return tuple(slice(0, s) for s in old_shape)


@torch.no_grad()
def grow(
    model: GPT,
    new_config: GPTConfig,
    *,
    seed: int,
    placement: str = "end",
    fisher: dict[str, Tensor] | None = None,
    moments: dict[str, dict[str, Tensor]] | None = None,
    depth_init: str = "identity",
    width_init: str = "zero",
    split_noise: float = SPLIT_NOISE,
) -> GrowthResult:
    """Grow `model` into a GPT of `new_config` (method.md section 2); see the module docstring.

    new_config.depth >= old depth (any number of new layers), model_dim equal or larger; vocab,
    head_dim, rope_base and softcap must match (seq_len and compute dtype may differ). `fisher`
    and `moments` ({name: {"exp_avg", "exp_avg_sq"}}, the parent's Adam state) are keyed by the
    OLD model's parameter names. `split_noise` is the relative noise of width_init="split"
    (SPLIT_NOISE). The old model is not modified."""
    old_cfg = model.config
    _check_configs(old_cfg, new_config)
    _check_inits(depth_init, width_init, split_noise)
    D, D2 = old_cfg.model_dim, new_config.model_dim
    c = math.sqrt(D2 / D)
    old_to_new, new_layers, copy_src = _layer_map(old_cfg.depth, new_config.depth, placement)

    ref = model.wte.weight
    # A scratch model of the new rung supplies every fresh value (same distributions and RNG
    # stream as models/gpt.py), including whole new blocks with zero c_proj.
    new = build_model(new_config, seed=seed, device=ref.device)
    new.to(dtype=ref.dtype)
    new.set_attention(model.attention)
    new_params = dict(new.named_parameters())

    sources = _carried_sources(model, fisher, moments)
    mask, carried = _inherit_into(model, new_params, old_to_new, sources, c)

    if width_init == "split":
        powers = {key: power for key, (_, power) in sources.items()}
        _split_width(new, old_cfg, old_to_new, carried, powers, seed, split_noise)
    if copy_src is not None:
        _copy_middle(new, old_to_new, new_layers, copy_src)
    if depth_init == "copy" and new_layers:
        _copy_neighbours(new, old_to_new, new_layers, copy_src)
    anchor = {n: p.detach().clone() for n, p in new_params.items()}
    return GrowthResult(
        model=new,
        anchor=anchor,
        mask=mask,
        fisher=carried.get("fisher"),
        new_layer_indices=new_layers,
        width=(D, D2),
        c=c,
        moments={n: {"exp_avg": carried["exp_avg"][n], "exp_avg_sq": carried["exp_avg_sq"][n]} for n in new_params}
        if moments is not None else None,
    )


def _split_width(new: GPT, old_cfg: GPTConfig, old_to_new: list[int], carried: dict, powers: dict[str, int],
                 seed: int, noise: float) -> None:
    """width_init="split" on every inherited layer: new hidden units (1 row each) and new heads
    (head_dim rows each) become copies of trained ones. Inserted layers are filled afterwards, so a
    copy-middle or depth_init="copy" layer copies the split layer."""
    # two streams, so the sources chosen do not depend on whether noise is drawn
    pick = torch.Generator().manual_seed(seed + _SPLIT_SEED_OFFSET)
    jitter = torch.Generator().manual_seed(seed + _SPLIT_SEED_OFFSET + 1)
    D = old_cfg.model_dim
    for i in range(old_cfg.depth):
        j = old_to_new[i]
        block = new.blocks[j]
        groups = ((("mlp.c_fc",), "mlp.c_proj", old_cfg.mlp_dim, 1),
                  (("attn.c_q", "attn.c_k", "attn.c_v"), "attn.c_proj", old_cfg.n_head, old_cfg.head_dim))
        for reader_names, writer_name, n_old, size in groups:
            readers = [block.get_submodule(n).weight for n in reader_names]
            n_new = readers[0].size(0) // size - n_old
            if n_new == 0:
                continue
            share = _split_units(readers, block.get_submodule(writer_name).weight, _split_sources(n_old, n_new, pick),
                                 size, D, noise, jitter)
            rows = share.repeat_interleave(size)[:, None]
            for n in reader_names:  # the sources' read-ins now feed 1/(k+1) of their write-out
                for key, power in powers.items():
                    t = carried[key][f"blocks.{j}.{n}.weight"]
                    t[: n_old * size, :D] *= (rows**power).to(device=t.device, dtype=t.dtype)


def _split_sources(n_old: int, n_new: int, gen: torch.Generator) -> Tensor:
    """The trained unit each new unit copies: a random permutation of the old units, repeated when
    there are more new units than old, so no unit is copied twice before every unit once."""
    rounds = [torch.randperm(n_old, generator=gen) for _ in range(-(-n_new // n_old))]
    return torch.cat(rounds)[:n_new]


def _split_units(readers: list[Tensor], writer: Tensor, sources: Tensor, size: int, D: int, noise: float,
                 gen: torch.Generator) -> Tensor:
    """Unit n_old + k copies unit sources[k] (units of `size` rows of every reader, `size` columns
    of the writer); the write-out columns of a source and its copies are each 1/(copies + 1) of the
    source's. Returns that share per old unit (float64)."""
    n_old = writer.size(1) // size - len(sources)
    share = 1.0 / (torch.bincount(sources, minlength=n_old).double() + 1.0)
    cols = writer[:, : n_old * size].unflatten(1, (n_old, size))
    cols.copy_((cols.double() * share.to(writer.device)[None, :, None]).to(writer.dtype))
    src_idx = (sources[:, None] * size + torch.arange(size)).flatten().to(writer.device)
    new_idx = torch.arange(n_old * size, (n_old + len(sources)) * size, device=writer.device)
    writer[:, new_idx] = writer[:, src_idx]
    for w in readers:
        rows = w[src_idx, :D]
        if noise > 0:
            rms = rows.double().square().mean(dim=1, keepdim=True).sqrt()
            draw = torch.randn(rows.shape, generator=gen, dtype=torch.float64).to(w.device)
            rows = (rows.double() + noise * rms * draw).to(w.dtype)
        w[new_idx, :D] = rows
    return share


def _copy_neighbours(new: GPT, old_to_new: list[int], new_layers: list[int], copy_src: int | None) -> None:
    """Each inserted layer becomes a whole copy (write-outs included) of a trained layer: the
    copy-middle source, else the old layer right before the insertion point (after it when the
    layers go first). Inherited coordinates stay masked as new: the penalty treats the copy as new
    capacity."""
    if copy_src is not None:
        src = old_to_new[copy_src]
    else:
        before = [j for j in old_to_new if j < new_layers[0]]
        src = max(before) if before else min(old_to_new)
    for j in new_layers:
        new.blocks[j].load_state_dict(new.blocks[src].state_dict())


@torch.no_grad()

def _carried_sources(model: GPT, fisher: dict | None, moments: dict | None) -> dict:
    """What is carried into the new shapes, per old parameter: {key: ({old name: tensor}, power of c
    where rescaled)}. d/d(W/c) = c * d/dW: a rescaled weight's gradient is c times, its square
    (Omega, v) c^2 times. Every parameter must have an entry."""
    sources = {}
    if fisher is not None:
        sources["fisher"] = ({n: fisher.get(n) for n, _ in model.named_parameters()}, 2)
    if moments is not None:
        for key, power in (("exp_avg", 1), ("exp_avg_sq", 2)):
            sources[key] = ({n: (moments.get(n) or {}).get(key) for n, _ in model.named_parameters()}, power)
    for key, (src, _) in sources.items():
        missing = [n for n, t in src.items() if t is None]
        if missing:
            raise KeyError(f"{'fisher' if key == 'fisher' else 'moments'} lacks entries for "
                           f"{missing[:4]}{'...' if len(missing) > 4 else ''}")
    return sources


def _inherit_into(model: GPT, new_params: dict, old_to_new: dict, sources: dict, c: float) -> tuple[dict, dict]:
    """Write every old parameter (rescaled by 1/c where the width grows) and its carried Fisher and
    moments into the inherited block of the new ones; return (mask of inherited coordinates, carried)."""
    mask = {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in new_params.items()}
    carried = {key: {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in new_params.items()}
               for key in sources}
    for old_name, old_p in model.named_parameters():
        name = _new_name(old_name, old_to_new)
        p = new_params[name]
        region = _inherited_region(name, old_p.shape)
        # Write-out weights must be zero outside the inherited block (new rows write new stream
        # coordinates, new columns carry new heads / hidden units / would-be channels). The
        # scratch model already has zero c_proj; wte's new columns are normal(0,1) there.
        if name == "wte.weight" or name.endswith("c_proj.weight"):
            p.zero_()
        if _is_rescaled(name):
            p[region] = (old_p.detach().double() / c).to(p.dtype)
        else:
            p[region] = old_p.detach().to(p.dtype)
        mask[name][region] = 1.0
        for key, (src, power) in sources.items():
            t = src[old_name].detach().to(device=p.device, dtype=torch.float32)
            if t.shape != old_p.shape:
                raise ValueError(f"{key}[{old_name!r}] has shape {tuple(t.shape)}, expected {tuple(old_p.shape)}")
            carried[key][name][region] = t * (c * c if power == 2 else c) if _is_rescaled(name) else t
    return mask, carried


def _copy_middle(new: GPT, old_to_new: dict, new_layers: list[int], copy_src: int) -> None:
    """placement copy-middle: each new layer reads like the trained layer `copy_src` but writes
    nothing (zero write-out), so the copy starts as an identity map."""
    src = new.blocks[old_to_new[copy_src]]
    for j in new_layers:
        dst = new.blocks[j]
        for a, b in ((dst.attn.c_q, src.attn.c_q), (dst.attn.c_k, src.attn.c_k),
                     (dst.attn.c_v, src.attn.c_v), (dst.mlp.c_fc, src.mlp.c_fc)):
            a.weight.copy_(b.weight)
        dst.attn.c_proj.weight.zero_()
        dst.mlp.c_proj.weight.zero_()


def growth_logit_error(
    old: GPT,
    new: GPT,
    vocab: int,
    seq_len: int,
    n_batches: int = 4,
    seed: int = 0,
    batch_size: int = 2,
) -> float:
    """max |logits_old - logits_new| over `n_batches` random token batches [batch_size, seq_len],
    computed in the models' parameter dtype (fp32) without autocast. Exact growth gives rounding
    error only; method.md section 2 quotes ~1e-15 in float64 (call `.double()` on copies of both
    models to see it) and 0.1 to 0.35 without the c factor."""
    device = old.wte.weight.device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    worst = 0.0
    for _ in range(n_batches):
        x = torch.randint(0, vocab, (batch_size, seq_len), generator=gen).to(device)
        a = old(x).double()
        b = new(x).double()
        worst = max(worst, (a - b).abs().max().item())
    return worst
