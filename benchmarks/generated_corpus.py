"""A small generated text file that lets a benchmark start a real ``unmask.train.Trainer`` offline.

The trainer opens its training and validation blocks from a corpus before its first step; the
benchmarks that time its step feed it their own batches of random tokens, so the text only has to
exist and to be long enough.
"""

from __future__ import annotations

import random
from pathlib import Path

CORPUS_WORDS = ("the", "of", "and", "to", "in", "is", "was", "he", "that", "it", "for", "on", "with", "his", "at")


def write_corpus(path: Path, length: int, documents: int = 50) -> Path:
    """A small text file of random words: enough for a trainer to open its training and validation
    blocks at ``length`` (the last 2% of documents validate, so each document holds several blocks)."""
    rng = random.Random(0)
    text = "\n\n".join(" ".join(rng.choice(CORPUS_WORDS) for _ in range(4 * length)) for _ in range(documents))
    path.write_text(text + "\n")
    return path
