"""The one sampling loop: start from MASK (or a template), unmask step by step.

Every sampler is the same loop; they differ only in which positions unmask at each step:

- ``ancestral``: T steps on the grid t_k = 1 - k / T. A masked position unmasks between t and s
  with probability (alpha_s - alpha_t) / (1 - alpha_t) (paper eq. 7) and takes a token drawn from
  p_theta(x0 | x_t). The network is called at every step, as in the reference code.
- ``cached``: the same draws, but no network call at a step where nothing unmasks, and only the
  rows that unmask something are run. Under SUBS unmasked tokens never change and which
  positions unmask does not depend on the network, so the samples are identical.
- ``first_hitting``: the exact T -> infinity sampler (Zheng et al. 2024): one position unmasks
  per network call. Among n masked positions the next one to unmask is uniform, and the time
  at which it does solves 1 - alpha_s = (1 - alpha_t) u^(1/n).

Because the unmasking set is chosen before the network is called, the output head and the draw
run only at the positions that unmask (``where=``), the design the fast paths build on.

On the grid samplers, :mod:`unmask.sampling.strategies` adds ordered and threshold decoding
(``order=``, ``threshold=``) and ReMDM remasking (``remasking=``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from unmask.denoiser import Denoiser, denoise
from unmask.sampling.config import DrawConfig, SamplerConfig
from unmask.sampling.draw import draw_categorical, filtered_probs
from unmask.sampling.strategies import Remasking, expected_counts, position_scores, top_per_row
from unmask.schedules import Schedule, get_schedule


@dataclass
class SampleOutput:
    """Samples and what they cost: ``tokens`` [B, L]; ``num_calls`` network calls."""

    tokens: Tensor
    num_calls: int
    num_steps: int


def initial_state(
    *, batch_size: int, length: int, mask_id: int, template: Tensor | None, device: torch.device | str | None
) -> Tensor:
    """All MASK, or the template (every non-MASK entry is a fixed token) broadcast to the batch."""
    if template is None:
        return torch.full((batch_size, length), mask_id, dtype=torch.long, device=device)
    template = torch.as_tensor(template, device=device).long()
    if template.dim() == 1:
        template = template.unsqueeze(0)
    if template.shape[-1] != length or template.shape[0] not in (1, batch_size):
        raise ValueError(f"template of shape {tuple(template.shape)} does not fit batch {batch_size} x length {length}")
    return template.expand(batch_size, length).clone()


def model_device(denoiser: Denoiser) -> torch.device:
    """Where ``denoiser``'s parameters live (CPU for a plain callable)."""
    if isinstance(denoiser, torch.nn.Module):
        parameter = next(denoiser.parameters(), None)
        if parameter is not None:
            return parameter.device
    return torch.device("cpu")


def generate(
    denoiser: Denoiser,
    config: SamplerConfig | None = None,
    *,
    batch_size: int,
    length: int,
    mask_id: int,
    schedule: Schedule | str = "loglinear",
    template: Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    on_step: Callable[[Tensor], None] | None = None,
) -> SampleOutput:
    """Generate [batch_size, length] tokens as ``config`` says (default: ``SamplerConfig()``).

    See the module docstring for the samplers and :class:`SamplerConfig` for the options;
    ``template`` holds fixed tokens (every non-MASK entry). ``on_step`` sees the state after every step.
    """
    config = config or SamplerConfig()
    schedule = get_schedule(schedule)
    device = model_device(denoiser) if device is None else device
    x = initial_state(batch_size=batch_size, length=length, mask_id=mask_id, template=template, device=device)
    state = _LoopState(denoiser, x, mask_id, config.draw, generator, on_step)

    with torch.no_grad():
        if config.sampler == "first_hitting":
            state.first_hitting(schedule)
        else:
            state.grid(schedule, config.steps, skip_idle=config.sampler == "cached", order=config.order,
                       threshold=config.threshold, remasking=config.remasking)
        if (x == mask_id).any():
            still = x == mask_id
            state.unmask(still, torch.zeros(batch_size, device=x.device), argmax=config.final_step == "argmax")
    return SampleOutput(tokens=x, num_calls=state.num_calls, num_steps=state.num_steps)


def sample(
    denoiser: Denoiser,
    *,
    batch_size: int,
    length: int,
    mask_id: int,
    schedule: Schedule | str = "loglinear",
    steps: int = 128,
    sampler: str = "ancestral",
    template: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Generate tokens [batch_size, length]; :func:`generate` gives the call count and every option."""
    config = SamplerConfig(sampler=sampler, steps=steps)
    return generate(denoiser, config, batch_size=batch_size, length=length, mask_id=mask_id, schedule=schedule,
                    template=template, generator=generator).tokens


class _LoopState:
    """The sequence being generated, the network-call counter, and the single unmasking step."""

    def __init__(
        self,
        denoiser: Denoiser,
        x: Tensor,
        mask_id: int,
        draw: DrawConfig,
        generator: torch.Generator | None,
        on_step: Callable[[Tensor], None] | None,
    ) -> None:
        self.denoiser = denoiser
        self.x = x
        self.mask_id = mask_id
        self.draw = draw
        self.generator = generator
        self.on_step = on_step
        self.num_calls = 0
        self.num_steps = 0
        self.fixed = x != mask_id  # template tokens: never changed, never remasked
        self.confidence = torch.ones(x.shape, dtype=torch.float64, device=x.device)

    def _probs(self, logits: Tensor, argmax: bool = False) -> Tensor:
        if argmax:
            return filtered_probs(logits, self.mask_id, temperature=0.0)
        d = self.draw
        return filtered_probs(logits, self.mask_id, temperature=d.temperature, top_k=d.top_k, top_p=d.top_p)

    def _call(self, where: Tensor, t: Tensor, *, skip_idle: bool = True) -> tuple[Tensor, Tensor] | None:
        """Logits at the ``where`` [B, L] positions, running only the rows that have any (if skip_idle)."""
        rows = where.any(1) if skip_idle else torch.ones(where.shape[0], dtype=torch.bool, device=where.device)
        if not bool(rows.any()):
            return None
        # Rows with nothing to unmask are not run: each row's output depends on that row alone.
        subset = not bool(rows.all())
        x_rows, where_rows, t_rows = (self.x[rows], where[rows], t[rows]) if subset else (self.x, where, t)
        self.num_calls += 1
        return denoise(self.denoiser, x_rows, t_rows, where=where_rows), rows

    def unmask(self, chosen: Tensor, t: Tensor, *, argmax: bool = False, skip_idle: bool = True) -> None:
        """Draw tokens at the ``chosen`` [B, L] positions from p_theta(. | x_t) at times t [B]."""
        called = self._call(chosen, t, skip_idle=skip_idle)
        if called is None or called[0].shape[0] == 0:
            return
        probs = self._probs(called[0], argmax)
        tokens = draw_categorical(probs, self.generator)
        self.x[chosen] = tokens
        self.confidence[chosen] = probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

    def unmask_ordered(self, counts: Tensor, t: Tensor, order: str, threshold: float | None) -> None:
        """Score every masked position; unmask the ``counts`` best per row, and all above ``threshold``."""
        masked = self.x == self.mask_id
        active = masked & ((counts > 0) | (threshold is not None)).unsqueeze(1)
        called = self._call(active, t)
        if called is None:
            return
        probs = self._probs(called[0])
        tokens = draw_categorical(probs, self.generator)
        scores = torch.full(self.x.shape, float("-inf"), dtype=torch.float64, device=self.x.device)
        scores[active] = position_scores(probs, order if order != "random" else "confidence")
        chosen = top_per_row(scores, counts.where(counts > 0, 1 if threshold is not None else 0))
        if threshold is not None:
            confident = torch.zeros_like(chosen)
            confident[active] = probs.max(-1).values > threshold
            chosen |= confident
        drawn = torch.full_like(self.x, self.mask_id)
        drawn[active] = tokens
        chosen_probs = torch.zeros(self.x.shape, dtype=torch.float64, device=self.x.device)
        chosen_probs[active] = probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        self.x[chosen] = drawn[chosen]
        self.confidence[chosen] = chosen_probs[chosen]

    def after_step(self) -> None:
        self.num_steps += 1
        if self.on_step is not None:
            self.on_step(self.x)

    def grid(
        self,
        schedule: Schedule,
        steps: int,
        *,
        skip_idle: bool,
        order: str = "random",
        threshold: float | None = None,
        remasking: Remasking | None = None,
    ) -> None:
        """Ancestral sampling on the uniform grid 1 = t_0 > t_1 > ... > t_T = 0."""
        batch = self.x.shape[0]
        times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64, device=self.x.device)
        for k in range(steps):
            t, s = times[k], times[k + 1]
            masked = self.x == self.mask_id
            remask = None
            if remasking is None:
                p_unmask = schedule.unmask_probability(t, s)
            else:
                alpha_t, alpha_s = remasking.alpha(schedule.alpha, t), remasking.alpha(schedule.alpha, s)
                sigma = remasking.sigma(alpha_t, alpha_s, t)
                p_unmask = ((alpha_s - (1 - sigma) * alpha_t) / (1 - alpha_t).clamp_min(1e-12)).clamp(0.0, 1.0)
                if sigma > 0:  # decided from x_t, like the unmasking set
                    decoded = ~masked & ~self.fixed
                    u = torch.rand(self.x.shape, generator=self.generator, device=self.x.device, dtype=torch.float64)
                    remask = u < remasking.per_token(sigma, decoded, self.confidence)
            t_batch = t.float().expand(batch)
            if order == "random" and threshold is None:
                u = torch.rand(self.x.shape, generator=self.generator, device=self.x.device, dtype=torch.float64)
                self.unmask(masked & (u < p_unmask), t_batch, skip_idle=skip_idle)
            else:
                self.unmask_ordered(expected_counts(masked, p_unmask), t_batch, order, threshold)
            if remask is not None:
                self.x[remask] = self.mask_id
            self.after_step()

    def first_hitting(self, schedule: Schedule) -> None:
        """One position per row and per network call, at the exact first-hitting times."""
        batch = self.x.shape[0]
        one_minus_alpha = schedule.one_minus_alpha(torch.ones(batch, dtype=torch.float64, device=self.x.device))
        while True:
            masked = self.x == self.mask_id
            n = masked.sum(1)
            if not bool(n.any()):
                return
            # The next unmask time among n masked positions: 1 - alpha_s = (1 - alpha_t) u^(1/n).
            u = torch.rand(batch, generator=self.generator, device=self.x.device, dtype=torch.float64)
            one_minus_alpha = torch.where(n > 0, one_minus_alpha * u ** (1.0 / n.clamp_min(1)), one_minus_alpha)
            t = schedule.time_of_alpha(1 - one_minus_alpha)
            # Which position: uniform among the masked ones (random keys, the smallest wins).
            keys = torch.rand(self.x.shape, generator=self.generator, device=self.x.device, dtype=torch.float64)
            keys = keys.masked_fill(~masked, 2.0)
            chosen = torch.zeros_like(masked)
            chosen[torch.arange(batch, device=self.x.device), keys.argmin(1)] = True
            self.unmask(chosen & masked, t.float())
            self.after_step()
