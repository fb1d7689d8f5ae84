import os

import pytest
from toy import ToyDistribution

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

CORPUS = """It is a truth universally acknowledged, that a single man in possession of a good fortune,
must be in want of a wife. However little known the feelings or views of such a man may be on his
first entering a neighbourhood, this truth is so well fixed in the minds of the surrounding families,
that he is considered the rightful property of some one or other of their daughters.
"""

# A very small model and data set: every CLI test trains in seconds on 2 cores.
TINY = [
    "model.n_layers=1", "model.hidden=32", "model.n_heads=2", "model.cond_dim=16", "model.dropout=0.1",
    "data.tokenizer=char", "data.length=32", "train.global_batch=8", "train.micro_batch=4",
    "train.eval_every=2", "train.eval_batches=2", "train.save_every=2", "train.log_every=1",
    "train.precision=fp32", "train.tensorboard=false", "optim.warmup_steps=2",
]


@pytest.fixture()
def corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(CORPUS * 3 for _ in range(20)))
    return path


@pytest.fixture()
def tiny_overrides(tmp_path):
    return [*TINY, f"data.cache_dir={tmp_path / 'cache'}"]


@pytest.fixture(scope="module")
def toy():
    """The enumerable distribution of the exact-math tests (3 ids, length 4)."""
    return ToyDistribution(vocab=3, length=4, seed=1)
