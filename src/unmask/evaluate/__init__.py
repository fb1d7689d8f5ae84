"""Evaluation: likelihood bounds, generative perplexity and entropy, sampler frontiers."""

from unmask.evaluate.likelihood import LikelihoodResult, evaluate_likelihood

__all__ = ["LikelihoodResult", "evaluate_likelihood"]
