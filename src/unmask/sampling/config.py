"""How to sample, as one value: :class:`SamplerConfig`, validated once where it is built.

The CLI, :func:`unmask.generation.generate_text`, semi-autoregressive generation, the frontier
tool and the server all pass one ``SamplerConfig`` to :func:`unmask.sampling.generate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from unmask.sampling.strategies import ORDERS, Remasking, SamplingError

SAMPLERS = ("ancestral", "cached", "first_hitting", "analytic", "psi")
FINAL_STEPS = ("sample", "argmax")


@dataclass(frozen=True)
class DrawConfig:
    """How a token is drawn at a position that unmasks (see :func:`unmask.sampling.filtered_probs`)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if not self.temperature >= 0:  # also refuses nan
            raise SamplingError(f"{{0}} must be >= 0 (0 takes the most likely token), got {self.temperature}",
                                "temperature")
        if self.top_k is not None and self.top_k < 1:
            raise SamplingError(f"{{0}} must be at least 1 (leave it out to keep every token), got {self.top_k}",
                                "top_k")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise SamplingError(f"{{0}} must be in (0, 1] (1 keeps every token), got {self.top_p}", "top_p")


@dataclass(frozen=True)
class SamplerConfig:
    """How to sample: which sampler, how many steps, in which order, how tokens are drawn.

    - ``sampler``: "ancestral" (the network called at every step), "cached" (the same distribution,
      each position's step drawn at once: no call, and no work, where nothing unmasks), "first_hitting"
      (exact, one position per call; ``steps`` does not apply) or "analytic" (SEDD's Tweedie tau-leaping:
      how many positions unmask follows the model's score; for an x0 prediction it draws as "ancestral" does);
      for uniform-state (Duo) models "ancestral" and "cached" are the ancestral sampler and "psi" a
      Psi-sampler (its corrector's rate is ``remasking.eta``, strategy "cap").
    - ``steps``: T, the steps of the time grid (grid samplers).
    - ``order``: "random" (exact) or most certain first ("confidence", "margin", "entropy").
    - ``threshold``: parallel decoding: also unmask every position whose confidence exceeds it.
    - ``remasking``: ReMDM remasking (:class:`unmask.sampling.Remasking`), or None.
    - ``draw``: temperature, top-k, top-p.
    - ``final_step``: what fills a position still masked after the last step: "sample" or
      "argmax" (the reference code's "noise removal"); for uniform-state models, "argmax" takes the
      last step's tokens as the argmax of the model's prediction (Duo's greedy tail).
    """

    sampler: str = "cached"
    steps: int = 128
    order: str = "random"
    threshold: float | None = None
    remasking: Remasking | None = None
    draw: DrawConfig = field(default_factory=DrawConfig)
    final_step: str = "sample"

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise SamplingError(f"unknown {{0}} {self.sampler!r}; choose one of {', '.join(SAMPLERS)}", "sampler")
        if self.order not in ORDERS:
            raise SamplingError(f"unknown {{0}} {self.order!r}; choose one of {', '.join(ORDERS)}", "order")
        if self.steps < 1:
            raise SamplingError(f"{{0}} must be at least 1, got {self.steps}", "steps")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise SamplingError(f"{{0}} is a confidence in [0, 1] (e.g. 0.9), got {self.threshold}", "threshold")
        if self.final_step not in FINAL_STEPS:
            raise SamplingError(f"final_step must be one of {', '.join(FINAL_STEPS)}, got {self.final_step!r}")
        if self.sampler in ("first_hitting", "analytic") and self.uses_strategy:
            what = "the exact random-order sampler" if self.sampler == "first_hitting" else "SEDD's Tweedie tau-leaping"
            raise SamplingError(f"{{0}} {self.sampler} is {what}: drop {{1}}, {{2}} and {{3}}, or use {{0}} cached",
                                "sampler", "order", "threshold", "remask")
        if self.sampler == "psi" and (self.order != "random" or self.threshold is not None):
            raise SamplingError("{0} psi moves every position at every step: drop {1} and {2}", "sampler", "order",
                                "threshold")
        if self.sampler == "psi" and self.remasking is not None and self.remasking.strategy != "cap":
            raise SamplingError("{0} psi sets its corrector's rate as ReMDM's cap does: use {1} cap with {2}",
                                "sampler", "remask", "eta")

    @classmethod
    def from_options(cls, *, remask: str | None = None, eta: float | None = None, temperature: float | None = None,
                     top_k: int | None = None, top_p: float | None = None, **options: Any) -> SamplerConfig:
        """The config of flat options, as ``unmask sample`` and the server take them.

        ``remask`` names a ReMDM strategy and ``eta`` its rate; ``temperature``, ``top_k`` and ``top_p``
        make the draw; ``options`` are the other fields (sampler, steps, order, threshold). An option
        that is None takes its default.
        """
        if eta is not None and remask is None:
            raise SamplingError("{0} is the remasking rate: give {1} STRATEGY with it (or drop {0})", "eta", "remask")
        remasking = None if remask is None else Remasking(remask, **_given(eta=eta))
        draw = DrawConfig(**_given(temperature=temperature, top_k=top_k, top_p=top_p))
        return cls(remasking=remasking, draw=draw, **_given(**options))

    @property
    def uses_strategy(self) -> bool:
        """True when positions are not simply unmasked in random order (ordered, threshold or remasking)."""
        return self.order != "random" or self.threshold is not None or self.remasking is not None


def _given(**options: Any) -> dict[str, Any]:
    return {name: value for name, value in options.items() if value is not None}
