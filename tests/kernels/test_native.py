"""The native C++/OpenMP step (kernels/native.py) against the reference: sizes around its chunk
boundaries, every option combination, a large tensor. Skips, naming `make native`, where the
library is not built."""
from __future__ import annotations

import pytest
import torch

from tests.helpers.kernel_steps import (CHUNK, OPTION_GRID, TOL, assert_close, combo_kwargs, make_inputs, needs_native,
                                        run_backend)


SIZES = [0, 1, 7, 1023, 1025, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 3]


@needs_native
@pytest.mark.parametrize("gdtype", [torch.float32, torch.bfloat16], ids=["g32", "gbf16"])
@pytest.mark.parametrize("n", SIZES)
def test_native_sizes(n, gdtype):
    inp = make_inputs(n, gdtype, kdtype=gdtype)
    ref, pen_ref = run_backend("reference", inp)
    out, pen = run_backend("native", inp)
    assert_close(out, ref, pen, pen_ref, TOL[gdtype], f"n={n}")


@needs_native
@pytest.mark.parametrize("gdtype", [torch.float32, torch.bfloat16], ids=["g32", "gbf16"])
def test_native_every_option_combination(gdtype):
    # odd; small so the reference's torch ops stay single-threaded (waking OpenMP threads on a
    # shared 2-core machine costs ~10 ms per op). Chunk boundaries: test_native_sizes.
    n = 4099
    for combo in OPTION_GRID:
        anchor, kdtype = combo[0], combo[1]
        if not anchor and kdtype == torch.bfloat16:
            continue
        inp = make_inputs(n, gdtype, kdtype)
        kw = combo_kwargs(*combo)
        ref, pen_ref = run_backend("reference", inp, steps=2, **kw)
        out, pen = run_backend("native", inp, steps=2, **kw)
        assert_close(out, ref, pen, pen_ref, TOL[gdtype], f"combo={combo}")


@needs_native
def test_native_large():
    n = 1 << 20
    inp = make_inputs(n, torch.bfloat16, torch.bfloat16)
    ref, pen_ref = run_backend("reference", inp, steps=2)
    out, pen = run_backend("native", inp, steps=2)
    assert_close(out, ref, pen, pen_ref, TOL[torch.bfloat16], "1M")
