"""Samplers: one loop (:mod:`.loop`), how to sample as one value (:mod:`.config`), the token draw
(:mod:`.draw`), unmasking strategies (:mod:`.strategies`), any-length generation (:mod:`.semi_ar`)."""

from unmask.sampling.config import SAMPLERS, DrawConfig, SamplerConfig, SamplingError
from unmask.sampling.draw import draw_categorical, filtered_probs
from unmask.sampling.loop import SampleOutput, generate, sample
from unmask.sampling.semi_ar import generate_long
from unmask.sampling.strategies import ORDERS, REMASKING, Remasking

__all__ = [
    "ORDERS",
    "REMASKING",
    "SAMPLERS",
    "DrawConfig",
    "Remasking",
    "SampleOutput",
    "SamplerConfig",
    "SamplingError",
    "draw_categorical",
    "filtered_probs",
    "generate",
    "generate_long",
    "sample",
]
