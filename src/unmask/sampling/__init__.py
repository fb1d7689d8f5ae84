"""Samplers, each a run (:mod:`.run`: events out, logits in, one :func:`drive`): over one window
(:mod:`.loop`), left to right (:mod:`.autoregressive`), block by block (:mod:`.blocks`), window by
window (:mod:`.semi_ar`). How to sample is one value (:mod:`.config`), what is reversed another
(:mod:`.process`); the token draw (:mod:`.draw`) and unmasking strategies (:mod:`.strategies`)."""

from unmask.sampling.config import SAMPLERS, DrawConfig, SamplerConfig, SamplingError
from unmask.sampling.draw import draw_categorical, filtered_probs
from unmask.sampling.loop import SamplingRun, generate, sample
from unmask.sampling.process import Process
from unmask.sampling.run import DenoiserCall, SampleOutput, StepDone, drive, run_to_end
from unmask.sampling.semi_ar import generate_long
from unmask.sampling.strategies import ORDERS, REMASKING, Remasking

__all__ = [
    "ORDERS",
    "REMASKING",
    "SAMPLERS",
    "DenoiserCall",
    "DrawConfig",
    "Process",
    "Remasking",
    "SampleOutput",
    "SamplerConfig",
    "SamplingError",
    "SamplingRun",
    "StepDone",
    "draw_categorical",
    "drive",
    "filtered_probs",
    "generate",
    "generate_long",
    "run_to_end",
    "sample",
]
