"""Exact denoisers of the uniform-state process on the enumerable toy distribution (tests/toy.py).

Under uniform corruption every latent position carries some evidence about every clean token, so the
exact conditionals depend on the time, and two of them matter:

- the leave-one-out conditional p(x0^i | z_t^{-i}), which the true reverse rates need: with it the
  uniform NELBO equals -log p(x0) and ancestral sampling reproduces p;
- the full posterior p(x0^i | z_t), which also reads position i's own latent: a valid but looser bound.

The MASK id of the toy (``dist.mask_id``, the last of vocab + 1 ids) never appears; its logit is -inf.
"""

from __future__ import annotations

import numpy
import torch
from torch import Tensor
from toy import ToyDistribution

from unmask.bounds.uniform import uniform_token_loss
from unmask.sampling.uniform import uniform_ancestral_step
from unmask.schedules import Schedule, get_schedule


class UniformExactDenoiser:
    """Logits log p(x0^i = v | z_t^{-i}) (``leave_one_out``) or log p(x0^i = v | z_t), by enumeration.

    ``flatten`` in [0, 1) mixes the conditionals with the uniform distribution: a worse model.
    """

    def __init__(self, dist: ToyDistribution, schedule: Schedule | str, *, leave_one_out: bool = True,
                 flatten: float = 0.0) -> None:
        self.dist, self.schedule = dist, get_schedule(schedule)
        self.leave_one_out, self.flatten = leave_one_out, flatten
        self.onehot = torch.nn.functional.one_hot(dist.sequences, dist.vocab).double()  # [S, L, K]

    def conditionals(self, z_t: Tensor, t: Tensor) -> Tensor:
        """[B, L, K] float64: the exact distribution of each clean token."""
        alpha = self.schedule.alpha(t.double()).view(-1, 1, 1)
        # q(z_t^j | x^j) for every table sequence x: [B, S, L]
        matches = (z_t[:, None, :] == self.dist.sequences[None]).double()
        likelihood = alpha * matches + (1 - alpha) / self.dist.vocab
        if self.leave_one_out:  # the product over j != i, from exclusive prefix and suffix products
            ones = torch.ones_like(likelihood[..., :1])
            before = torch.cat([ones, likelihood[..., :-1]], -1).cumprod(-1)
            after = torch.cat([likelihood[..., 1:], ones], -1).flip(-1).cumprod(-1).flip(-1)
            evidence = before * after
        else:
            evidence = likelihood.prod(-1, keepdim=True).expand_as(likelihood)
        weights = self.dist.probs[None, :, None] * evidence  # [B, S, L]
        marginals = torch.stack([weights[..., i] @ self.onehot[:, i] for i in range(self.dist.length)], dim=1)
        probs = marginals / marginals.sum(-1, keepdim=True)
        return (1 - self.flatten) * probs + self.flatten / self.dist.vocab

    def __call__(self, z_t: Tensor, t: Tensor) -> Tensor:
        table = self.dist.sequences
        if z_t.shape[0] > table.shape[0] and bool((t == t[0]).all()):
            # One time for all rows (a sampling step): compute every latent once and look the rows up.
            probs = self.conditionals(table, t[:1].expand(table.shape[0]))[self.dist.index(z_t)]
        else:
            probs = self.conditionals(z_t, t)
        mask = torch.zeros(*probs.shape[:-1], 1, dtype=probs.dtype)
        return torch.cat([probs, mask], dim=-1).log().float()


def expected_integrand(den: UniformExactDenoiser, schedule: Schedule, x0: Tensor, t: Tensor) -> Tensor:
    """E_{z_t ~ q(.|x0)} sum_i uniform_token_loss, [X, T] float64 for x0 [X, L] and times t [T], by summing
    over all vocab^length latents instead of drawing them."""
    dist = den.dist
    latents, length, k = dist.sequences, dist.length, dist.vocab
    n_z, n_t = latents.shape[0], t.shape[0]
    t = t.double()
    z = latents.repeat(n_t, 1)  # row j * n_z + m: latent m at time j
    probs = den.conditionals(z, t.repeat_interleave(n_z))
    logits = torch.cat([probs.log(), torch.full_like(probs[..., :1], float("-inf"))], dim=-1).view(-1, k + 1)
    alpha, rest, rate = schedule.alpha(t), schedule.one_minus_alpha(t), schedule.alpha_derivative(t)
    per_position = n_z * length
    out = torch.zeros(x0.shape[0], n_t, dtype=torch.float64)
    for row, x in enumerate(x0):
        loss = uniform_token_loss(logits, x.repeat(n_z * n_t), z.view(-1), alpha.repeat_interleave(per_position),
                                  rest.repeat_interleave(per_position), rate.repeat_interleave(per_position),
                                  mask_id=dist.mask_id).view(n_t, n_z, length).sum(-1)
        q_z = (alpha[:, None, None] * (latents == x) + rest[:, None, None] / k).prod(-1)  # [T, n_z]
        out[row] = (q_z * loss).sum(-1)
    return out


def gauss_legendre(edges: list[float], points: int = 16) -> tuple[Tensor, Tensor]:
    """Nodes and weights of Gauss-Legendre rules on each panel [edges[j], edges[j + 1]] (float64)."""
    x, w = numpy.polynomial.legendre.leggauss(points)
    x, w = torch.from_numpy(x), torch.from_numpy(w)
    nodes, weights = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        nodes.append((hi - lo) / 2 * x + (hi + lo) / 2)
        weights.append((hi - lo) / 2 * w)
    return torch.cat(nodes), torch.cat(weights)


def reconstruction(dist: ToyDistribution, schedule: Schedule, x0: Tensor) -> Tensor:
    """E_{z_0 ~ q(.|x0)} [-log p(x0 | z_0)] [X] with the exact joint posterior: the bound's term at t = 0, which
    the NELBO leaves out (it is 0 when alpha_0 = 1)."""
    zero = torch.zeros(1, dtype=torch.float64)
    alpha, rest = schedule.alpha(zero), schedule.one_minus_alpha(zero)
    seqs = dist.sequences
    # q(z | x) for every pair of table sequences [x, z]
    q = (alpha * (seqs[:, None, :] == seqs[None, :, :]) + rest / dist.vocab).prod(-1)
    posterior = dist.probs[:, None] * q / (dist.probs[:, None] * q).sum(0, keepdim=True)
    rows = dist.index(x0)
    return -torch.special.xlogy(q[rows], posterior[rows]).sum(-1)


def sample_chain(den: UniformExactDenoiser, n: int, steps: int, generator: torch.Generator,
                 step_fn=None) -> Tensor:
    """n sequences from uniform z_1 through ``steps`` equal steps of t (den.schedule must reach alpha_1 = 0
    and alpha_0 = 1). ``step_fn(probs, z_t, alpha_t, alpha_s, generator)`` defaults to the ancestral step."""
    dist = den.dist
    step_fn = step_fn or (lambda p, z, a_t, a_s, g: uniform_ancestral_step(p, z, a_t, a_s, g, mask_id=dist.mask_id))
    z = torch.randint(0, dist.vocab, (n, dist.length), generator=generator)
    grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    for t, s in zip(grid[:-1], grid[1:]):
        probs = den(z, t.float().expand(n)).double().exp()
        z = step_fn(probs, z, den.schedule.alpha(t), den.schedule.alpha(s), generator)
    return z
