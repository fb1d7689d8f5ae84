"""Noise schedules of the absorbing (masking) forward process.

A schedule gives alpha_t, the probability that a token of the clean sequence is still unmasked
at time t in [0, 1] (alpha_0 ~ 1: clean, alpha_1 ~ 0: all masked). Everything else the
objective and the samplers need is derived from alpha and its derivative (docs/math.md §1):

- ``loss_weight(t) = -alpha'(t) / (1 - alpha(t))``, the weight of the continuous-time NELBO
  (paper eq. 10); for log-linear it is exactly 1/t.
- ``unmask_probability(t, s) = (alpha_s - alpha_t) / (1 - alpha_t)``, the probability that a
  position masked at time t is unmasked at an earlier time s (paper eq. 7).

Each schedule is written in terms of the total noise sigma(t) = -log alpha_t where that is the
natural form, so ``1 - alpha = -expm1(-sigma)`` stays accurate when alpha is close to 1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class Schedule:
    """Base class: subclasses define ``sigma`` and ``sigma_rate`` (d sigma / dt)."""

    name: str = ""

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma_rate(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def alpha(self, t: Tensor) -> Tensor:
        """alpha_t = exp(-sigma(t)): probability that a token is still unmasked at t."""
        return torch.exp(-self.sigma(t))

    def one_minus_alpha(self, t: Tensor) -> Tensor:
        """1 - alpha_t, computed with expm1 so it keeps its precision near t = 0."""
        return -torch.expm1(-self.sigma(t))

    def alpha_derivative(self, t: Tensor) -> Tensor:
        """d alpha / dt = -sigma'(t) alpha_t (negative: masking increases with t)."""
        return -self.sigma_rate(t) * self.alpha(t)

    def loss_weight(self, t: Tensor) -> Tensor:
        """-alpha'(t) / (1 - alpha_t) = sigma'(t) / expm1(sigma(t)) (paper eq. 10)."""
        return self.sigma_rate(t) / torch.expm1(self.sigma(t))

    def unmask_probability(self, t: Tensor, s: Tensor) -> Tensor:
        """P(position masked at t is unmasked at s < t) = (alpha_s - alpha_t) / (1 - alpha_t)."""
        # alpha_s - alpha_t = alpha_s * (1 - exp(sigma_s - sigma_t)) = -alpha_s * expm1(sigma_s - sigma_t)
        gap = -self.alpha(s) * torch.expm1(self.sigma(s) - self.sigma(t))
        return (gap / self.one_minus_alpha(t)).clamp(0.0, 1.0)

    def time_of_alpha(self, alpha: Tensor) -> Tensor:
        """Inverse of alpha(t) on [0, 1] (alpha is decreasing); bisection unless overridden."""
        alpha = alpha.to(torch.float64)
        lo = torch.zeros_like(alpha)
        hi = torch.ones_like(alpha)
        for _ in range(60):
            mid = (lo + hi) / 2
            still_above = self.alpha(mid) > alpha
            lo = torch.where(still_above, mid, lo)
            hi = torch.where(still_above, hi, mid)
        return (lo + hi) / 2

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class LogLinear(Schedule):
    """alpha_t = 1 - (1 - eps) t, i.e. sigma(t) = -log(1 - (1 - eps) t). The paper's default."""

    name = "loglinear"

    def __init__(self, eps: float = 1e-3) -> None:
        self.eps = eps

    def sigma(self, t: Tensor) -> Tensor:
        return -torch.log1p(-(1 - self.eps) * t)

    def sigma_rate(self, t: Tensor) -> Tensor:
        return (1 - self.eps) / (1 - (1 - self.eps) * t)

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - (1 - self.eps) * t

    def one_minus_alpha(self, t: Tensor) -> Tensor:
        return (1 - self.eps) * t

    def loss_weight(self, t: Tensor) -> Tensor:
        return 1 / t

    def time_of_alpha(self, alpha: Tensor) -> Tensor:
        return ((1 - alpha) / (1 - self.eps)).clamp(0.0, 1.0)


class LinearSigma(Schedule):
    """sigma(t) = sigma_min + t (sigma_max - sigma_min): linear in the total noise."""

    name = "linear"

    def __init__(self, sigma_min: float = 1e-4, sigma_max: float = 20.0) -> None:
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min + t * (self.sigma_max - self.sigma_min)

    def sigma_rate(self, t: Tensor) -> Tensor:
        return torch.full_like(t, self.sigma_max - self.sigma_min)


class Geometric(Schedule):
    """sigma(t) = sigma_min^(1-t) sigma_max^t: geometric interpolation of the total noise."""

    name = "geometric"

    def __init__(self, sigma_min: float = 1e-4, sigma_max: float = 20.0) -> None:
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min ** (1 - t) * self.sigma_max**t

    def sigma_rate(self, t: Tensor) -> Tensor:
        return self.sigma(t) * math.log(self.sigma_max / self.sigma_min)


class AlphaSchedule(Schedule):
    """Schedules defined directly by alpha_t; sigma is derived from it."""

    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def alpha_derivative(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def one_minus_alpha(self, t: Tensor) -> Tensor:
        return 1 - self.alpha(t)

    def sigma(self, t: Tensor) -> Tensor:
        return -torch.log(self.alpha(t))

    def sigma_rate(self, t: Tensor) -> Tensor:
        return -self.alpha_derivative(t) / self.alpha(t)

    def loss_weight(self, t: Tensor) -> Tensor:
        return -self.alpha_derivative(t) / self.one_minus_alpha(t)

    def unmask_probability(self, t: Tensor, s: Tensor) -> Tensor:
        return ((self.alpha(s) - self.alpha(t)) / self.one_minus_alpha(t)).clamp(0.0, 1.0)


class Cosine(AlphaSchedule):
    """alpha_t = eps + (1 - eps) cos(pi t / 2): the cosine schedule, kept above zero by eps."""

    name = "cosine"

    def __init__(self, eps: float = 1e-3) -> None:
        self.eps = eps

    def alpha(self, t: Tensor) -> Tensor:
        return self.eps + (1 - self.eps) * torch.cos(math.pi / 2 * t)

    def one_minus_alpha(self, t: Tensor) -> Tensor:
        # 1 - cos(x) = 2 sin^2(x / 2) keeps precision near t = 0.
        return (1 - self.eps) * 2 * torch.sin(math.pi / 4 * t) ** 2

    def alpha_derivative(self, t: Tensor) -> Tensor:
        return -(1 - self.eps) * math.pi / 2 * torch.sin(math.pi / 2 * t)


class CosineSquared(AlphaSchedule):
    """alpha_t = eps + (1 - eps) cos^2(pi t / 2)."""

    name = "cosine_squared"

    def __init__(self, eps: float = 1e-3) -> None:
        self.eps = eps

    def alpha(self, t: Tensor) -> Tensor:
        return self.eps + (1 - self.eps) * torch.cos(math.pi / 2 * t) ** 2

    def one_minus_alpha(self, t: Tensor) -> Tensor:
        return (1 - self.eps) * torch.sin(math.pi / 2 * t) ** 2

    def alpha_derivative(self, t: Tensor) -> Tensor:
        return -(1 - self.eps) * math.pi / 2 * torch.sin(math.pi * t)


class Polynomial(AlphaSchedule):
    """alpha_t = 1 - t^k (the MD4 family; k = 1 is the linear-in-alpha schedule)."""

    name = "polynomial"

    def __init__(self, k: float = 2.0) -> None:
        self.k = k

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t**self.k

    def one_minus_alpha(self, t: Tensor) -> Tensor:
        return t**self.k

    def alpha_derivative(self, t: Tensor) -> Tensor:
        return -self.k * t ** (self.k - 1)

    def loss_weight(self, t: Tensor) -> Tensor:
        return self.k / t

    def time_of_alpha(self, alpha: Tensor) -> Tensor:
        return (1 - alpha).clamp(0.0, 1.0) ** (1 / self.k)


SCHEDULES: dict[str, type[Schedule]] = {
    cls.name: cls for cls in (LogLinear, LinearSigma, Cosine, CosineSquared, Geometric, Polynomial)
}


def get_schedule(name: str | Schedule = "loglinear", **kwargs: float) -> Schedule:
    """Look up a schedule by name ("loglinear", "linear", "cosine", "cosine_squared",
    "geometric", "polynomial"); keyword arguments go to its constructor. A Schedule passes through."""
    if isinstance(name, Schedule):
        return name
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    try:
        return SCHEDULES[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"bad arguments for schedule {name!r}: {err}") from None
