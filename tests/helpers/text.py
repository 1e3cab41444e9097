"""A synthetic corpus: words of several scripts, emoji and code, with sentence and paragraph breaks."""
from __future__ import annotations

import random


WORDS = ("the quick brown fox jumps over the lazy dog while a model learns byte pair merges "
         "def class return import numpy tensor gradient loss 12345 67890 ümlaut café naïve 日本語 "
         "текст 🙂 🚀").split()


def make_text(n_words: int, seed: int) -> str:
    rng = random.Random(seed)
    out = []
    for i in range(n_words):
        out.append(rng.choice(WORDS))
        if i % 13 == 12:
            out.append(".\n")
        if i % 97 == 96:
            out.append("\n\n")
    return " ".join(out)
