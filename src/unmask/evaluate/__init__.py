"""Evaluation: likelihood bounds (:mod:`.likelihood`), a checkpoint's report (:mod:`.report`),
generative perplexity and entropy (:mod:`.generative`), sampler frontiers (:mod:`.frontier`)."""

from unmask.evaluate.generative import GenerativeResult, generative_perplexity, load_evaluator, sample_entropy
from unmask.evaluate.likelihood import LikelihoodResult, evaluate_dataset

__all__ = [
    "GenerativeResult",
    "LikelihoodResult",
    "evaluate_dataset",
    "generative_perplexity",
    "load_evaluator",
    "sample_entropy",
]
