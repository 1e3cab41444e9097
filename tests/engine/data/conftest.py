"""Corpora on disk shared by the data tests."""
from __future__ import annotations

import pytest

from tests.helpers.text import make_text


@pytest.fixture
def text_dir(tmp_path):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    for i in range(12):
        (d / ("sub" if i % 2 else "") / f"doc{i:02d}.txt").write_text(make_text(300, i))
    (d / "notes.md").write_text("# Title\n\n" + make_text(200, 99))
    (d / "ignored.csv").write_text("a,b\n1,2\n")
    return d


@pytest.fixture
def corpus(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    for i in range(8):
        (d / f"doc{i}.txt").write_text(make_text(300, i))
    return f"text:{d}"
