"""How to evaluate, as one value (:class:`EvalConfig`, validated where it is built), and what an
evaluation of a checkpoint finds (:class:`EvalReport`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from unmask.data import DETOKENIZERS
from unmask.errors import UserError
from unmask.evaluate.generative import GenerativeResult
from unmask.evaluate.likelihood import LikelihoodResult
from unmask.runtime import PRECISIONS

SPLITS = ("train", "validation", "test", "all")


class EvalError(UserError):
    """Evaluation options that cannot be used; the message names the fix."""


@dataclass(frozen=True)
class EvalConfig:
    """How ``unmask eval`` (and :func:`unmask.evaluate_checkpoint`) evaluates a checkpoint.

    - ``data``: a file, folder or dataset name to evaluate on zero-shot (None: the run's own validation
      data); ``split`` of it (None: validation for a corpus, all of a file); ``text_field`` of .jsonl /
      .parquet files (None: the run's); ``detokenizer``: the reference's reading of the paper's zero-shot
      datasets (None: the dataset's own).
    - ``num_t``: time samples per sequence (K); ``discrete_steps``: also the discrete-time bound at each T.
    - ``batch_size`` sequences per pass, the first ``max_batches`` batches only (None: all), noise seeded
      by ``seed``, in ``precision``.
    - ``mask_rate_ranges``: block diffusion only: also the variance of the per-block loss with masking
      rates drawn from each [LO, HI] (empty: a few candidates; None: not computed).
    - ``prompt_file``: prompted evaluation instead: a JSON-lines file of {"context", "continuation"} pairs,
      each continuation bounded given its context (:mod:`unmask.evaluate.conditional`, ``num_t`` samples,
      ``batch_size`` rows per pass); the figure is per continuation token.
    """

    data: str | None = None
    split: str | None = None
    text_field: str | None = None
    detokenizer: str | None = None
    num_t: int = 1
    discrete_steps: tuple[int, ...] = ()
    batch_size: int = 32
    max_batches: int | None = None
    seed: int = 0
    precision: str = "auto"
    mask_rate_ranges: tuple[tuple[float, float], ...] | None = None
    prompt_file: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "discrete_steps", tuple(self.discrete_steps))
        if self.mask_rate_ranges is not None:
            object.__setattr__(self, "mask_rate_ranges", tuple(tuple(r) for r in self.mask_rate_ranges))
        for name in ("num_t", "batch_size"):
            if getattr(self, name) < 1:
                raise EvalError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_batches is not None and self.max_batches < 1:
            raise EvalError(f"max_batches must be at least 1 (None: every batch), got {self.max_batches}")
        if any(steps < 1 for steps in self.discrete_steps):
            raise EvalError(f"discrete_steps are step counts T >= 1, got {list(self.discrete_steps)}")
        if self.split is not None and self.split not in SPLITS:
            raise EvalError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.detokenizer is not None and self.detokenizer not in DETOKENIZERS:
            raise EvalError(f"detokenizer must be one of {', '.join(DETOKENIZERS)}, got {self.detokenizer!r}")
        if self.precision not in PRECISIONS:
            raise EvalError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for low, high in self.mask_rate_ranges or ():
            if not 0 <= low < high <= 1:
                raise EvalError(f"a masking-rate range needs 0 <= LO < HI <= 1, got {low}:{high}")
        if self.prompt_file is not None:
            data_options = {"data": self.data, "split": self.split, "text_field": self.text_field,
                            "detokenizer": self.detokenizer, "max_batches": self.max_batches,
                            "discrete_steps": self.discrete_steps or None, "mask_rate_ranges": self.mask_rate_ranges}
            given = [name for name, value in data_options.items() if value is not None]
            if given:
                raise EvalError(f"prompt_file scores its own pairs: drop {', '.join(given)}")


@dataclass
class EvalReport:
    """What an evaluation of ``checkpoint`` found: the main figure (``likelihood``: the NELBO per token, or
    the exact NLL for a kind whose figure is ``exact``), the discrete-time bounds by T, the per-block loss
    variances (block diffusion) and, when asked, generative perplexity. A prompted evaluation
    (``continuations`` set) counts continuation tokens given their contexts."""

    checkpoint: str
    objective: str
    exact: bool
    data: str
    split: str
    detokenizer: str | None
    length: int
    tokenizer: str
    likelihood: LikelihoodResult
    discrete: dict[int, LikelihoodResult] = field(default_factory=dict)
    block_variance: list[dict[str, Any]] | None = None
    generative: GenerativeResult | None = None
    continuations: list[dict[str, float]] | None = None  # prompted evaluation: each pair's figures

    @property
    def character_level(self) -> bool:
        return self.tokenizer == "char"

    @property
    def nelbo_per_token(self) -> float:
        return self.likelihood.nelbo_per_token

    @property
    def stderr(self) -> float:
        return self.likelihood.stderr

    @property
    def perplexity(self) -> float:
        return self.likelihood.perplexity

    def to_dict(self) -> dict[str, Any]:
        """As JSON data (``unmask eval --json``): the main figure's fields at the top level."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name not in ("likelihood", "discrete", "block_variance", "generative", "continuations")}
        values.update(character_level=self.character_level, **self.likelihood.to_dict(),
                      discrete={str(steps): result.to_dict() for steps, result in self.discrete.items()})
        if self.block_variance is not None:
            values["block_variance"] = self.block_variance
        if self.generative is not None:
            values["generative"] = self.generative.to_dict()
        if self.continuations is not None:
            values["continuations"] = self.continuations
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EvalReport:
        """The report :meth:`to_dict` wrote."""
        generative = values.get("generative")
        return cls(checkpoint=values["checkpoint"], objective=values["objective"], exact=values["exact"],
                   data=values["data"], split=values["split"], detokenizer=values["detokenizer"],
                   length=values["length"], tokenizer=values["tokenizer"],
                   likelihood=LikelihoodResult.from_dict(values),
                   discrete={int(steps): LikelihoodResult.from_dict(r) for steps, r in values["discrete"].items()},
                   block_variance=values.get("block_variance"),
                   generative=GenerativeResult(**generative) if generative else None,
                   continuations=values.get("continuations"))

