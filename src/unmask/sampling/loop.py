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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from unmask.denoiser import Denoiser, denoise
from unmask.sampling.draw import draw_categorical, filtered_probs
from unmask.schedules import Schedule, get_schedule

SAMPLERS = ("ancestral", "cached", "first_hitting")


@dataclass
class SampleOutput:
    """Samples and what they cost: ``tokens`` [B, L]; ``num_calls`` network calls."""

    tokens: Tensor
    num_calls: int
    num_steps: int


@dataclass
class DrawConfig:
    """How a token is drawn at a position that unmasks (see :func:`filtered_probs`)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None


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


def generate(
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
    draw: DrawConfig | None = None,
    final_step: str = "sample",
    device: torch.device | str | None = None,
    on_step: Callable[[Tensor], None] | None = None,
) -> SampleOutput:
    """Generate [batch_size, length] tokens; see the module docstring for the samplers.

    ``final_step`` fills any position still masked after the last step (possible only when
    alpha_0 < 1): "sample" draws it from p_theta, "argmax" takes the most likely token (the
    reference code's "noise removal"). ``on_step`` sees the state after every step.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if final_step not in ("sample", "argmax"):
        raise ValueError(f"final_step must be 'sample' or 'argmax', got {final_step!r}")
    schedule = get_schedule(schedule)
    draw = draw or DrawConfig()
    if device is None:
        device = next(denoiser.parameters()).device if isinstance(denoiser, torch.nn.Module) else "cpu"
    x = initial_state(batch_size=batch_size, length=length, mask_id=mask_id, template=template, device=device)
    state = _LoopState(denoiser, x, mask_id, draw, generator, on_step)

    with torch.no_grad():
        if sampler == "first_hitting":
            state.first_hitting(schedule)
        else:
            state.grid(schedule, steps, skip_idle=sampler == "cached")
        if (x == mask_id).any():
            still = x == mask_id
            state.unmask(still, torch.zeros(batch_size, device=x.device), argmax=final_step == "argmax")
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
    """Generate tokens [batch_size, length]; :func:`generate` gives the call count and more options."""
    return generate(
        denoiser,
        batch_size=batch_size,
        length=length,
        mask_id=mask_id,
        schedule=schedule,
        steps=steps,
        sampler=sampler,
        template=template,
        generator=generator,
    ).tokens


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

    def unmask(self, chosen: Tensor, t: Tensor, *, argmax: bool = False, skip_idle: bool = True) -> None:
        """Draw tokens at the ``chosen`` [B, L] positions from p_theta(. | x_t) at times t [B]."""
        rows = chosen.any(1) if skip_idle else torch.ones(chosen.shape[0], dtype=torch.bool, device=chosen.device)
        if not bool(rows.any()):
            return
        # Rows with nothing to unmask are not run: each row's output depends on that row alone.
        subset = not bool(rows.all())
        x_rows, chosen_rows, t_rows = (self.x[rows], chosen[rows], t[rows]) if subset else (self.x, chosen, t)
        logits = denoise(self.denoiser, x_rows, t_rows, where=chosen_rows)
        self.num_calls += 1
        if logits.shape[0] == 0:
            return
        if argmax:
            probs = filtered_probs(logits, self.mask_id, temperature=0.0)
        else:
            probs = filtered_probs(
                logits, self.mask_id, temperature=self.draw.temperature, top_k=self.draw.top_k, top_p=self.draw.top_p
            )
        self.x[chosen] = draw_categorical(probs, self.generator)

    def after_step(self) -> None:
        self.num_steps += 1
        if self.on_step is not None:
            self.on_step(self.x)

    def grid(self, schedule: Schedule, steps: int, *, skip_idle: bool) -> None:
        """Ancestral sampling on the uniform grid 1 = t_0 > t_1 > ... > t_T = 0."""
        batch = self.x.shape[0]
        times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64, device=self.x.device)
        for k in range(steps):
            t, s = times[k], times[k + 1]
            p_unmask = schedule.unmask_probability(t, s)
            u = torch.rand(self.x.shape, generator=self.generator, device=self.x.device, dtype=torch.float64)
            chosen = (self.x == self.mask_id) & (u < p_unmask)
            self.unmask(chosen, t.float().expand(batch), skip_idle=skip_idle)
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
