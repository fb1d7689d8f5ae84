"""An enumerable distribution over short sequences and its exact posterior denoiser.

With the exact conditionals p(x0^i | unmasked tokens of x_t) as the denoiser, the MDLM bound
equals -log p(x0) and the exact samplers reproduce p: the strongest checks of the math.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor


class ToyDistribution:
    """A random table p over all sequences of ``length`` tokens from ``vocab`` real ids.

    The MASK id is ``vocab`` (the last of vocab + 1 ids), as in the denoiser protocol. With
    ``independent`` the table is a product of random per-position marginals (no correlation).
    """

    def __init__(self, vocab: int = 3, length: int = 4, seed: int = 0, concentration: float = 0.5,
                 independent: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        self.vocab, self.length, self.mask_id = vocab, length, vocab
        self.sequences = torch.tensor(list(itertools.product(range(vocab), repeat=length)))
        shape = (length, vocab) if independent else (len(self.sequences),)
        gamma = torch.distributions.Gamma(torch.full(shape, concentration), 1.0)
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
        weights = gamma.sample().double() + 1e-6
        if independent:
            marginals = weights / weights.sum(-1, keepdim=True)
            weights = marginals[torch.arange(length), self.sequences].prod(-1)
        self.probs = weights / weights.sum()

    def index(self, x: Tensor) -> Tensor:
        """Row index of each sequence of x [N, L] in the table."""
        powers = self.vocab ** torch.arange(self.length - 1, -1, -1)
        return (x.long() * powers).sum(-1)

    def log_prob(self, x: Tensor) -> Tensor:
        return self.probs[self.index(x)].log()

    def draw(self, n: int, generator: torch.Generator) -> Tensor:
        return self.sequences[torch.multinomial(self.probs, n, replacement=True, generator=generator)]

    def empirical(self, samples: Tensor) -> Tensor:
        counts = torch.bincount(self.index(samples), minlength=len(self.sequences)).double()
        return counts / counts.sum()

    def tv_distance(self, samples: Tensor, target: Tensor | None = None) -> float:
        target = self.probs if target is None else target
        return 0.5 * float((self.empirical(samples) - target).abs().sum())

    def conditional(self, template: Tensor) -> Tensor:
        """The exact distribution over the table given the fixed (non-MASK) entries of template [L]."""
        fits = ((template == self.mask_id) | (self.sequences == template)).all(-1)
        probs = self.probs * fits
        return probs / probs.sum()

    def product_of_marginals(self, template: Tensor | None = None) -> Tensor:
        """prod_i p(x^i | fixed entries): what decoding every position in one parallel step gives."""
        table = self.probs if template is None else self.conditional(template)
        result = torch.ones(len(self.sequences), dtype=torch.float64)
        for i in range(self.length):
            marginal = torch.zeros(self.vocab, dtype=torch.float64).index_add_(0, self.sequences[:, i], table)
            result = result * marginal[self.sequences[:, i]]
        return result

    def denoiser(self) -> ExactDenoiser:
        return ExactDenoiser(self)


class ExactDenoiser:
    """Logits log p(x0^i = v | unmasked tokens of x_t) by enumeration; the MASK logit is -inf.

    The logits of all (vocab + 1)^length inputs are enumerated once; a call looks its rows up.
    """

    def __init__(self, dist: ToyDistribution) -> None:
        self.dist = dist
        self.calls = 0
        ids = dist.vocab + 1
        inputs = torch.tensor(list(itertools.product(range(ids), repeat=dist.length)))
        seqs = dist.sequences
        fits = ((inputs[:, None, :] == dist.mask_id) | (inputs[:, None, :] == seqs[None])).all(-1)
        weights = fits.double() * dist.probs[None]
        onehot = torch.nn.functional.one_hot(seqs, ids).double()
        marginals = torch.einsum("bs,slv->blv", weights, onehot)
        self.table = (marginals / marginals.sum(-1, keepdim=True)).log().float()
        self.powers = ids ** torch.arange(dist.length - 1, -1, -1)

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.table[(x_t.long() * self.powers).sum(-1)]


class WrongDenoiser(ExactDenoiser):
    """The exact denoiser with its conditionals flattened towards uniform: a worse model."""

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        exact = super().__call__(x_t, t).double().exp()
        mixed = 0.5 * exact + 0.5 / self.dist.vocab
        mixed[..., self.dist.mask_id] = 0.0
        return mixed.log().float()


class ExactScoreDenoiser(ExactDenoiser):
    """The exact concrete score in SEDD's reading of the logits (``unmask.score``, "sedd"):
    log-score = logits - log expm1(sigma) - log(V - 1) with V = vocab + 1 ids, so the logits are
    log p(x0^i = y | x_t) + log(vocab), whatever the time."""

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        return super().__call__(x_t, t) + math.log(self.dist.vocab)


def estimate(fn, repeats: int, **kwargs) -> tuple[Tensor, Tensor]:
    """Mean and standard error over ``repeats`` calls of a random estimator ``fn(**kwargs)``."""
    values = torch.stack([fn(**kwargs) for _ in range(repeats)])
    return values.mean(0), values.std(0) / repeats**0.5
