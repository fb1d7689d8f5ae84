"""Samplers: one loop (:mod:`unmask.sampling.loop`) and the token draw (:mod:`unmask.sampling.draw`)."""

from unmask.sampling.draw import draw_categorical, filtered_probs
from unmask.sampling.loop import SAMPLERS, DrawConfig, SampleOutput, generate, sample

__all__ = ["SAMPLERS", "DrawConfig", "SampleOutput", "draw_categorical", "filtered_probs", "generate", "sample"]
