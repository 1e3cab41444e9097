"""Cache file checks (engine/data/integrity.py): token ids range-checked where the checksums match."""
from __future__ import annotations

import numpy as np
import pytest

from engine.data import prepare_data
from engine.data.integrity import CacheCorruptError, checksum, verify
from tests.helpers.faults import overwrite_tokens


def test_token_ids_are_range_checked_where_checksums_match(corpus, tmp_path):
    b = prepare_data(corpus, 512, tmp_path / "cache", progress=False)
    path = b.directory / "train.bin"
    overwrite_tokens(path, 37, [600])
    with pytest.raises(CacheCorruptError,
                       match=rf"{path} holds token id 600 at position 37, outside the vocabulary \[0, 512\)"):
        verify(path, checksum(path), np.uint16, 512)
