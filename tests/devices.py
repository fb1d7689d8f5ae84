"""The devices a test body runs on: the CPU always, CUDA where torch sees a GPU.

Parametrize a test with ``DEVICES`` and its CPU half runs everywhere while its CUDA half carries
the ``cuda`` mark (skipped without a GPU by conftest; ``pytest -m cuda`` runs those alone).
"""

import pytest
import torch

CUDA = pytest.param("cuda", marks=pytest.mark.cuda, id="cuda")
DEVICES = [pytest.param("cpu", id="cpu"), CUDA]
# CUDA with two GPUs (a multi-process run with one process per GPU); skipped on one.
TWO_GPUS = pytest.param("cuda", id="cuda", marks=[
    pytest.mark.cuda,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs, one per process"),
])


def generator(device: str, seed: int) -> torch.Generator:
    """A seeded generator on ``device`` (draws on CUDA take a CUDA generator)."""
    return torch.Generator(device).manual_seed(seed)
