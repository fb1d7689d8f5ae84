"""The one sampling loop: start from MASK (or a template), unmask step by step.

Every sampler is the same loop; they differ only in which positions unmask at each step:

- ``ancestral``: T steps on the grid t_k = 1 - k / T. A masked position unmasks between t and s
  with probability (alpha_s - alpha_t) / (1 - alpha_t) (paper eq. 7) and takes a token drawn from
  p_theta(x0 | x_t). The network is called at every step, as in the reference code.
- ``cached``: the same process, but no network call at a step where nothing unmasks, and only the
  rows that unmask something are run. Under SUBS unmasked tokens never change and which
  positions unmask does not depend on the network, so each masked position's step can be drawn
  at once: it stays masked down to time s with probability (1 - alpha_s) / (1 - alpha_1), so with
  u uniform it unmasks in the step whose interval holds the time where 1 - alpha = u (1 - alpha_1).
  The loop then visits only the steps where something unmasks: its cost follows its calls, not T
  (T = 10^6 at length 16 is 16 calls at most). The samples have the ancestral sampler's distribution;
  a seed gives other samples than it (the draws differ).
- ``first_hitting``: the exact T -> infinity sampler (Zheng et al. 2024): one position unmasks
  per network call. Among n masked positions the next one to unmask is uniform, and the time
  at which it does solves 1 - alpha_s = (1 - alpha_t) u^(1/n).
- ``analytic``: SEDD's Tweedie tau-leaping (Lou et al. 2024, section 4.2) on the same grid. The
  network is called at every masked position first, because how likely a position is to unmask
  depends on the model's score (:func:`unmask.score.tweedie_unmask_probability`); the token is
  then drawn like the others' (softmax of the logits over real tokens). ``parameterization``
  says how to read the logits: "sedd" (a log-score, SEDD runs) or "subs" (an x0 prediction, whose
  score makes this step the ancestral one).

Because the unmasking set is chosen before the network is called, the output head and the draw
run only at the positions that unmask (``where=``), the design the fast paths build on.

On the grid samplers, :mod:`unmask.sampling.strategies` adds ordered and threshold decoding
(``order=``, ``threshold=``) and ReMDM remasking (``remasking=``).

A :class:`SamplingRun` is this loop as a run (:mod:`unmask.sampling.run`): it yields a call whenever
it needs logits and is sent them back; :func:`generate` builds one and answers it with a denoiser.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import torch
from torch import Tensor

from unmask.denoiser import Denoiser
from unmask.sampling.config import SamplerConfig
from unmask.sampling.draw import draw_categorical, filtered_probs
from unmask.sampling.process import Process
from unmask.sampling.run import DenoiserCall, Event, SampleOutput, StepDone, initial_state, model_device, run_to_end
from unmask.sampling.strategies import expected_counts, position_scores, top_per_row
from unmask.schedules import Schedule
from unmask.score import tweedie_unmask_probability


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
    parameterization: str = "subs",
    static_shapes: bool = False,
) -> SampleOutput:
    """Generate [batch_size, length] tokens as ``config`` says (default: ``SamplerConfig()``).

    See the module docstring for the samplers and :class:`SamplerConfig` for the options;
    ``template`` holds fixed tokens (every non-MASK entry). ``on_step`` sees the state after every step.
    ``parameterization`` ("subs" or "sedd", :mod:`unmask.score`) is how the analytic sampler reads the logits.
    ``static_shapes`` runs every denoiser call at [batch_size, length] (see :func:`unmask.sampling.run.answer_with`).
    """
    device = model_device(denoiser) if device is None else device
    x = initial_state(batch_size=batch_size, length=length, mask_id=mask_id, template=template, device=device)
    process = Process(mask_id=mask_id, schedule=schedule, parameterization=parameterization)
    run = SamplingRun(config or SamplerConfig(), x, process=process, generator=generator)
    return run_to_end(denoiser, run, on_step=on_step, static_shapes=static_shapes)


def sample(
    denoiser: Denoiser,
    *,
    batch_size: int,
    length: int,
    mask_id: int,
    schedule: Schedule | str = "loglinear",
    steps: int | None = None,
    sampler: str | None = None,
    template: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Generate tokens [batch_size, length]; :func:`generate` gives the call count and every option.
    ``steps`` and ``sampler`` default to :class:`SamplerConfig`'s."""
    config = SamplerConfig.from_options(sampler=sampler, steps=steps)
    return generate(denoiser, config, batch_size=batch_size, length=length, mask_id=mask_id, schedule=schedule,
                    template=template, generator=generator).tokens


class SamplingRun:
    """A batch of sequences ``x`` [B, L] being sampled as ``config`` says, without the network.

    :meth:`events` is a generator: it yields a :class:`DenoiserCall` whenever it needs logits (send
    them back) and a :class:`StepDone` after every step (send None). ``x`` holds the current state;
    ``num_calls`` and ``num_steps`` count what was asked for. ``process`` is what the model reverses
    (its MASK id and schedule) and how the analytic sampler reads its logits.
    """

    def __init__(self, config: SamplerConfig, x: Tensor, *, process: Process,
                 generator: torch.Generator | None = None) -> None:
        self.config = config
        self.process = process
        self.x = x
        self.mask_id = process.mask_id
        self.schedule = process.schedule
        self.generator = generator
        self.num_calls = 0
        self.num_steps = 0
        self.fixed = x != self.mask_id  # template tokens: never changed, never remasked
        self.confidence = torch.ones(x.shape, dtype=torch.float64, device=x.device)

    def output(self) -> SampleOutput:
        """The samples (the state, complete once :meth:`events` is exhausted) and what they cost."""
        return SampleOutput(tokens=self.x, num_calls=self.num_calls, num_steps=self.num_steps)

    def events(self) -> Generator[Event, Tensor | None, None]:
        if self.config.sampler == "first_hitting":
            yield from self._first_hitting()
        elif self.config.sampler == "analytic":
            yield from self._analytic()
        else:
            yield from self._grid()
        still = self.x == self.mask_id
        if bool(still.any()):  # possible only when alpha_0 < 1
            times = torch.zeros(self.x.shape[0], device=self.x.device)
            yield from self._unmask(still, times, argmax=self.config.final_step == "argmax")

    def _rand(self, shape: tuple[int, ...]) -> Tensor:
        return torch.rand(shape, generator=self.generator, device=self.x.device, dtype=torch.float64)

    def _probs(self, logits: Tensor, argmax: bool = False) -> Tensor:
        if argmax:
            return filtered_probs(logits, self.mask_id, temperature=0.0)
        d = self.config.draw
        return filtered_probs(logits, self.mask_id, temperature=d.temperature, top_k=d.top_k, top_p=d.top_p)

    def _call(self, where: Tensor, t: Tensor, *,
              skip_idle: bool = True) -> Generator[Event, Tensor | None, Tensor | None]:
        """Logits at the ``where`` [B, L] positions, asking only for the rows that have any (if skip_idle)."""
        rows = where.any(1) if skip_idle else torch.ones(where.shape[0], dtype=torch.bool, device=where.device)
        if not bool(rows.any()):
            return None
        subset = not bool(rows.all())
        self.num_calls += 1
        call = DenoiserCall(self.x[rows], t[rows], where[rows], rows) if subset else DenoiserCall(self.x, t, where)
        return (yield call)

    def _step_done(self, step: int | None = None) -> Generator[Event, Tensor | None, None]:
        """The step ``step`` of the grid (default: the next one) is done."""
        self.num_steps = self.num_steps + 1 if step is None else step
        yield StepDone(self.num_steps, self.x)

    def _unmask(self, chosen: Tensor, t: Tensor, *, argmax: bool = False,
                skip_idle: bool = True) -> Generator[Event, Tensor | None, None]:
        """Draw tokens at the ``chosen`` [B, L] positions from p_theta(. | x_t) at times t [B]."""
        logits = yield from self._call(chosen, t, skip_idle=skip_idle)
        if logits is not None and logits.shape[0] > 0:
            self._place(chosen, logits, argmax)

    def _place(self, chosen: Tensor, logits: Tensor, argmax: bool = False) -> None:
        """Draw a token at each ``chosen`` [B, L] position from its row of ``logits`` [N, V]."""
        probs = self._probs(logits, argmax)
        tokens = draw_categorical(probs, self.generator)
        self.x[chosen] = tokens
        self.confidence[chosen] = probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

    def _unmask_ordered(self, counts: Tensor, t: Tensor) -> Generator[Event, Tensor | None, None]:
        """Score every masked position; unmask the ``counts`` best per row, and all above the threshold."""
        order, threshold = self.config.order, self.config.threshold
        masked = self.x == self.mask_id
        active = masked & ((counts > 0) | (threshold is not None)).unsqueeze(1)
        logits = yield from self._call(active, t)
        if logits is None:
            return
        probs = self._probs(logits)
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

    def _time(self, k: int) -> Tensor:
        """t_k = 1 - k / T on the uniform grid 1 = t_0 > t_1 > ... > t_T = 0 (computed, never a table of T + 1)."""
        return torch.tensor(1.0 - k / self.config.steps, dtype=torch.float64, device=self.x.device)

    def _grid(self) -> Generator[Event, Tensor | None, None]:
        """Ancestral sampling on the uniform grid 1 = t_0 > t_1 > ... > t_T = 0."""
        config, schedule = self.config, self.schedule
        if config.sampler == "cached" and not config.uses_strategy:
            yield from self._unmask_steps()
            return
        remasking, skip_idle = config.remasking, config.sampler == "cached"
        batch = self.x.shape[0]
        for k in range(config.steps):
            t, s = self._time(k), self._time(k + 1)
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
                    remask = self._rand(self.x.shape) < remasking.per_token(sigma, decoded, self.confidence)
            t_batch = t.float().expand(batch)
            if config.order == "random" and config.threshold is None:
                unmasking = masked & (self._rand(self.x.shape) < p_unmask)
                yield from self._unmask(unmasking, t_batch, skip_idle=skip_idle)
            else:
                yield from self._unmask_ordered(expected_counts(masked, p_unmask), t_batch)
            if remask is not None:
                self.x[remask] = self.mask_id
            yield from self._step_done()

    def _unmask_steps(self) -> Generator[Event, Tensor | None, None]:
        """The cached random-order sampler: every masked position's step drawn at once (see the module docstring),
        then a call at each step where something unmasks, in order. A position that stays masked at t_T = 0
        (alpha_0 < 1) is left to the final step, as on the grid."""
        steps, batch = self.config.steps, self.x.shape[0]
        masked = self.x == self.mask_id
        one = torch.ones((), dtype=torch.float64, device=self.x.device)
        target = self._rand(self.x.shape) * self.schedule.one_minus_alpha(one)  # 1 - alpha at the unmasking time
        when = self.schedule.time_of_alpha(1 - target)
        # Masked at t_j while t_j > when: the last such j (the step from t_j to t_j+1) is where it unmasks.
        step = (torch.ceil(steps * (1 - when)) - 1).clamp(0, steps - 1).long()
        never = target < self.schedule.one_minus_alpha(torch.zeros_like(one))
        step = torch.where(masked & ~never, step, steps)
        for k in torch.unique(step[step < steps]).tolist():  # ascending
            t = self._time(k).float().expand(batch)
            yield from self._unmask(step == k, t)
            yield from self._step_done(k + 1)
        if self.num_steps < steps:
            yield from self._step_done(steps)

    def _first_hitting(self) -> Generator[Event, Tensor | None, None]:
        """One position per row and per network call, at the exact first-hitting times."""
        batch = self.x.shape[0]
        one_minus_alpha = self.schedule.one_minus_alpha(torch.ones(batch, dtype=torch.float64, device=self.x.device))
        while True:
            masked = self.x == self.mask_id
            n = masked.sum(1)
            if not bool(n.any()):
                return
            # The next unmask time among n masked positions: 1 - alpha_s = (1 - alpha_t) u^(1/n).
            u = self._rand((batch,))
            one_minus_alpha = torch.where(n > 0, one_minus_alpha * u ** (1.0 / n.clamp_min(1)), one_minus_alpha)
            t = self.schedule.time_of_alpha(1 - one_minus_alpha)
            # Which position: uniform among the masked ones (random keys, the smallest wins).
            keys = self._rand(self.x.shape).masked_fill(~masked, 2.0)
            chosen = torch.zeros_like(masked)
            chosen[torch.arange(batch, device=self.x.device), keys.argmin(1)] = True
            yield from self._unmask(chosen & masked, t.float())
            yield from self._step_done()

    def _analytic(self) -> Generator[Event, Tensor | None, None]:
        """SEDD's Tweedie tau-leaping on the uniform grid 1 = t_0 > t_1 > ... > t_T = 0."""
        batch = self.x.shape[0]
        for k in range(self.config.steps):
            masked = self.x == self.mask_id
            t, s = self._time(k), self._time(k + 1)
            logits = yield from self._call(masked, t.float().expand(batch))
            if logits is not None:
                leave = tweedie_unmask_probability(logits, self.schedule.sigma(t), self.schedule.sigma(s),
                                                   mask_id=self.mask_id,
                                                   parameterization=self.process.parameterization)
                unmasking = self._rand(leave.shape) < leave
                if bool(unmasking.any()):
                    chosen = torch.zeros_like(masked)
                    chosen[masked] = unmasking
                    self._place(chosen, logits[unmasking])
            yield from self._step_done()
