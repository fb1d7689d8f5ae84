"""Evaluation: how to evaluate and what it finds (:mod:`.config`), likelihood bounds (:mod:`.likelihood`), a
checkpoint's report (:mod:`.report`), generative perplexity and entropy (:mod:`.generative`), sampler
frontiers (:mod:`.frontier`)."""

from unmask.evaluate.config import EvalConfig, EvalError, EvalReport
from unmask.evaluate.generative import GenerativeResult, generative_perplexity, load_evaluator, sample_entropy
from unmask.evaluate.likelihood import LikelihoodResult, evaluate_dataset
from unmask.evaluate.report import evaluate_checkpoint

__all__ = [
    "EvalConfig",
    "EvalError",
    "EvalReport",
    "GenerativeResult",
    "LikelihoodResult",
    "evaluate_checkpoint",
    "evaluate_dataset",
    "generative_perplexity",
    "load_evaluator",
    "sample_entropy",
]
