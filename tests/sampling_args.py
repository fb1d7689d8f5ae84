"""Keyword arguments of a test split into a SamplerConfig and the rest of ``generate``'s arguments."""

from __future__ import annotations

import dataclasses

from unmask.sampling import SamplerConfig

_FIELDS = {f.name for f in dataclasses.fields(SamplerConfig)}


def split(kwargs: dict) -> tuple[SamplerConfig, dict]:
    """(SamplerConfig of the sampling options in ``kwargs``, the other keyword arguments)."""
    options = {k: v for k, v in kwargs.items() if k in _FIELDS}
    return SamplerConfig(**{"sampler": "ancestral", **options}), {k: v for k, v in kwargs.items() if k not in _FIELDS}
