"""The compiled GPU code of the Triton optimizer step, checked on a machine without a GPU.

Every kernel variant the optimizer launches (single and multi-tensor; fp32/bf16 gradients and
kappa; each optional-term flag on and off; the decoupled penalty) is compiled for sm_90 (H100/H200) by Triton's own
compiler, and the PTX is checked for what makes the step fast on the device:
- on the hot path (a full block) every operand moves in 16-byte ld/st.global.v4 accesses: the
  bytes per thread of the v4 loads and stores equal the bytes the step reads and writes;
- ptxas (the one Triton ships) reports no register spills.
Skips, naming the reason, where the installed Triton cannot target CUDA.
"""
from __future__ import annotations

import re
import subprocess
from functools import lru_cache

import pytest

from kernels import triton_adamw

try:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource
except Exception as exc:  # no triton, or a build without the NVIDIA backend
    pytestmark = pytest.mark.skip(reason=f"Triton cannot compile for CUDA here: {exc!r}")

SM = 90
# Each optional term is switched off in turn; DECOUPLED moves the same bytes as the coupled form,
# so it gets one variant per kernel of its own (see _variants).
FLAGS = tuple(f for f in triton_adamw.Flags._fields if f != "DECOUPLED")
# the trainer's CUDA step: tensor step, device damping and skip, the coupled penalty
ON_CUDA = {**dict.fromkeys(FLAGS, True), "DECOUPLED": False}
ELEMS_PER_THREAD = triton_adamw.BLOCK // (32 * triton_adamw.NUM_WARPS)
SIZE = {"fp32": 4, "bf16": 2}
INDEX_ARGS = {"table_ptr": "*i64", "numel_ptr": "*i64", "blk_start_ptr": "*i64", "blk_tensor_ptr": "*i32"}


def _variants():
    """(kernel, g dtype, kappa dtype, flags): all four dtype pairs with every flag on, and in
    fp32 each flag off in turn and all off."""
    out = [(kern, g, k, dict(ON_CUDA)) for kern in ("single", "multi")
           for g in ("fp32", "bf16") for k in ("fp32", "bf16")]
    for kern in ("single", "multi"):
        out += [(kern, "fp32", "fp32", {**ON_CUDA, flag: False}) for flag in FLAGS]
        out.append((kern, "fp32", "fp32", {**dict.fromkeys(FLAGS, False), "DECOUPLED": False}))
        out.append((kern, "fp32", "fp32", {**ON_CUDA, "DECOUPLED": True}))
    return out


def _variant_id(v):
    kern, g, k, flags = v
    off = [f for f in FLAGS if not flags[f]]
    name = "all-on" if not off else "off-" + "+".join(off) if len(off) < len(FLAGS) else "all-off"
    return f"{kern}-g{g}-k{k}-{name}" + ("-decoupled" if flags["DECOUPLED"] else "")


def _signature(fn, g, k):
    """Argument types as the launcher sees them for torch tensors: pointers 16-byte aligned
    (torch's allocations are), element counts of unknown divisibility (the general case)."""
    sig = {}
    for name, param in zip(fn.arg_names, fn.params):
        if param.is_constexpr:
            sig[name] = "constexpr"
        elif name == "hp":  # the float hyperparameters, one tuple argument
            sig[name] = triton_adamw.Hyper(*["fp32"] * len(triton_adamw.Hyper._fields))
        elif name in INDEX_ARGS:
            sig[name] = INDEX_ARGS[name]
        elif name.endswith("_ptr"):
            sig[name] = "*" + (g if name == "g_ptr" else k if name == "k_ptr" else "fp32")
        elif name.startswith("n_"):
            sig[name] = "i32"
        else:
            sig[name] = "fp32"
    return sig


@lru_cache(maxsize=None)
def compile_variant(kern, g, k, flags_items, aligned=True):
    """(PTX, ptxas -v log) of one variant for sm_90."""
    fn = triton_adamw._fused_adamw_kernel if kern == "single" else triton_adamw._fused_adamw_multi_kernel
    sig = _signature(fn, g, k)
    consts = dict(F=triton_adamw.Flags(**dict(flags_items)), BLOCK_SIZE=triton_adamw.BLOCK)
    if kern == "multi":
        consts.update(G_BF16=g == "bf16", K_BF16=k == "bf16", ALIGNED=aligned)
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names) if str(sig[n]).startswith("*")}
    compiled = triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", SM, 32),
                              options=dict(num_warps=triton_adamw.NUM_WARPS))
    ptx = compiled.asm["ptx"]
    log = subprocess.run([get_ptxas(SM).path, "-v", f"--gpu-name=sm_{SM}a", "-", "-o", "/dev/null"],
                         input=ptx, capture_output=True, text=True, check=True).stderr
    return ptx, log


def ptx_facts(ptx: str, log: str) -> dict:
    m = re.search(r"Used (\d+) registers", log)
    spills = [int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", log)]
    return dict(ld_v4=len(re.findall(r"\bld\.global\.v4\.b32\b", ptx)),
                st_v4=len(re.findall(r"\bst\.global\.v4\.b32\b", ptx)),
                ld_b32=len(re.findall(r"\bld\.global\.b32\b", ptx)),
                regs=int(m.group(1)) if m else None, spill_bytes=sum(spills))


def hot_path_bytes(g, k, flags) -> tuple:
    """Bytes one thread reads and writes in a full block (kernels/reference.py's operands)."""
    read = ["fp32", g, "fp32", "fp32"]  # p, g, m, v
    write = ["fp32"] * 3  # p, m, v
    if flags["HAS_ANCHOR"]:
        read += ["fp32", k]
    if flags["HAS_EXTRA"]:
        read.append("fp32")
    if flags["HAS_FISHER"]:
        read.append("fp32")
        write.append("fp32")
    per = lambda ops: sum(SIZE[d] for d in ops) * ELEMS_PER_THREAD  # noqa: E731
    return per(read), per(write)


def _skip_without_ptxas():
    try:
        get_ptxas(SM).path
    except Exception as exc:
        pytest.skip(f"Triton's ptxas for sm_{SM} is not available here: {exc!r}")


@pytest.mark.parametrize("variant", _variants(), ids=_variant_id)
def test_hot_path_is_16_byte_vectors_and_no_spills(variant):
    _skip_without_ptxas()
    kern, g, k, flags = variant
    if k == "bf16" and not flags["HAS_ANCHOR"]:
        pytest.skip("kappa's dtype only matters with an anchor")
    facts = ptx_facts(*compile_variant(kern, g, k, tuple(flags.items())))
    read, write = hot_path_bytes(g, k, flags)
    assert facts["ld_v4"] * 16 == read, f"{_variant_id(variant)}: {facts}, expected {read} B/thread in v4 loads"
    assert facts["st_v4"] * 16 == write, f"{_variant_id(variant)}: {facts}, expected {write} B/thread in v4 stores"
    assert facts["spill_bytes"] == 0, f"{_variant_id(variant)}: register spills {facts}"


def test_unaligned_tables_build_the_kernel_without_the_hint():
    """The host's alignment check is what licenses the hint: without it, 4-byte accesses."""
    _skip_without_ptxas()
    facts = ptx_facts(*compile_variant("multi", "fp32", "fp32", tuple(ON_CUDA.items()), aligned=False))
    assert facts["ld_v4"] == facts["st_v4"] == 0 and facts["ld_b32"] > 0, facts
