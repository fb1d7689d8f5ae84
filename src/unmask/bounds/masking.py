"""The absorbing (masking) forward process as the bounds draw it: times, masks, and sums back into rows.

Every bound here estimates an integral over time by drawing t per sequence (``docs/math.md`` §3-5):
:func:`sample_times` draws them (antithetically by default), :func:`min_time` is the floor that
keeps the 1 / (1 - alpha_t) weight finite, :func:`mask_tokens` is q(x_t | x0), and
:func:`repeat_rows` / :func:`per_row_sum` lay out K time samples per sequence and gather the
per-token losses back into one figure per sequence.
"""

from __future__ import annotations

import torch
from torch import Tensor

from unmask.schedules import Schedule

MIN_MASK_RATE = 1e-3


def min_time(schedule: Schedule, min_mask_rate: float = MIN_MASK_RATE) -> float:
    """The earliest time drawn: where a fraction ``min_mask_rate`` of tokens is masked.

    The NELBO integrand -alpha'/(1 - alpha) E[...] dt equals (1/m) E[...] dm in the masking rate
    m = 1 - alpha_t, so every schedule estimates the same integral. Flooring m rather than t
    (the reference floors t at 1e-3, which for log-linear is the same) keeps the 1/m weight finite
    and leaves out the same sliver, about min_mask_rate * L nats at most, for every schedule.
    """
    floor = schedule.time_of_alpha(torch.tensor(1.0 - min_mask_rate, dtype=torch.float64))
    return float(floor.clamp(0.0, 1.0))


def sample_times(
    n: int,
    *,
    antithetic: bool = True,
    t_min: float = 0.0,
    t_max: float = 1.0,
    blocks: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """n times uniform in [t_min, t_max]; antithetic: t_i = ((u + i) / n) mod 1 with one shared u.

    Each t_i is still uniform on its own, so the estimate stays unbiased, but the batch covers
    [0, 1] evenly, which cuts the variance (paper section 3.5, "low-discrepancy sampler").
    With ``blocks`` (block diffusion: a time per block) the times are [n, blocks], and antithetic
    t_ib = ((u + i / n + b / blocks) mod 1): every block's times cover [0, 1] evenly across the n
    rows, and every row's across its blocks.
    """
    shape = (n,) if blocks is None else (n, blocks)
    if antithetic:
        u = torch.rand(1, generator=generator, device=device, dtype=torch.float64)
        steps = torch.arange(n, device=device, dtype=torch.float64) / n
        if blocks is not None:
            steps = steps[:, None] + torch.arange(blocks, device=device, dtype=torch.float64) / blocks
        u = (u + steps) % 1.0
    else:
        u = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
    return (t_min + (t_max - t_min) * u).float()


def repeat_rows(x: Tensor | None, times: int) -> Tensor | None:
    # Row k * B + b is copy k of sequence b: this matches the antithetic layout of the times.
    return None if x is None else x.repeat(times, *([1] * (x.dim() - 1)))


def seen_rows(counted: Tensor, attention_mask: Tensor | None, copies: int) -> Tensor | None:
    """The attention mask of ``copies`` repeated rows: ``attention_mask`` [B, L] when given (a prompt is seen
    but not counted), else the counted tokens ``counted`` (padding hidden); None when every token is seen."""
    seen = counted if attention_mask is None else attention_mask.bool()
    return None if bool(seen.all()) else repeat_rows(seen, copies)


def mask_tokens(
    x0: Tensor, one_minus_alpha: Tensor, mask_id: int, loss_mask: Tensor, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Forward process q(x_t | x0): each counted token becomes MASK with probability 1 - alpha_t
    (``one_minus_alpha`` per row [R], or per token [R, L])."""
    u = torch.rand(x0.shape, generator=generator, device=x0.device)
    rate = one_minus_alpha if one_minus_alpha.dim() == x0.dim() else one_minus_alpha.unsqueeze(-1)
    masked = (u < rate) & loss_mask
    return torch.where(masked, mask_id, x0), masked


def per_row_sum(values: Tensor, where: Tensor) -> Tensor:
    """Sum values [N] (row-major over the True entries of where [R, L]) back into rows [R]."""
    rows = where.nonzero()[:, 0]
    return torch.zeros(where.shape[0], device=values.device, dtype=values.dtype).index_add_(0, rows, values)


def times_for(
    x0: Tensor,
    t: Tensor | None,
    num_t: int,
    antithetic: bool,
    t_min: float,
    generator: torch.Generator | None,
) -> Tensor:
    """Times as a flat [num_t * B] tensor in the row layout of :func:`repeat_rows`."""
    batch = x0.shape[0]
    if t is None:
        return sample_times(
            batch * num_t, antithetic=antithetic, t_min=t_min, generator=generator, device=x0.device
        )
    t = t.to(x0.device, torch.float32)
    if t.dim() == 1:
        t = t.unsqueeze(1)
    if t.shape[0] != batch:
        raise ValueError(f"t has {t.shape[0]} rows but x0 has {batch} sequences")
    return t.T.reshape(-1)
