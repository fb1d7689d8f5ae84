"""Evaluation: likelihood bounds, generative perplexity and entropy, sampler frontiers."""

from unmask.evaluate.generative import GenerativeResult, generative_perplexity, load_evaluator, unigram_entropy
from unmask.evaluate.likelihood import LikelihoodResult, evaluate_likelihood

__all__ = [
    "GenerativeResult",
    "LikelihoodResult",
    "evaluate_likelihood",
    "generative_perplexity",
    "load_evaluator",
    "unigram_entropy",
]
