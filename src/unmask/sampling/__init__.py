"""Samplers: one loop (:mod:`unmask.sampling.loop`) and the token draw (:mod:`unmask.sampling.draw`)."""

from unmask.sampling.draw import draw_categorical, filtered_probs
from unmask.sampling.loop import SAMPLERS, DrawConfig, SampleOutput, generate, sample
from unmask.sampling.semi_ar import generate_long
from unmask.sampling.strategies import ORDERS, REMASKING, Remasking

__all__ = [
    "ORDERS",
    "REMASKING",
    "SAMPLERS",
    "DrawConfig",
    "Remasking",
    "SampleOutput",
    "draw_categorical",
    "filtered_probs",
    "generate",
    "generate_long",
    "sample",
]
