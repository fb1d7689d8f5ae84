"""The two distillation losses: a student that takes one step where its teacher takes two (SDTT) or that
predicts now what its teacher predicts a step later on the same trajectory (DCD).

SDTT, self-distillation through time (Deschenaux & Gulcehre, ICLR 2025, Alg. 1), for MDLM: from x_t at time
t the teacher takes two ancestral steps of dt (t -> t - dt -> t - 2 dt, paper eq. 7 each). For every position
masked in x_t the target is the teacher's x0 distribution at the step where that position unmasked, or at the
last step if it is still masked; the student, called once at (x_t, t), is fitted to those targets. One round
trains a student whose T / 2 steps (of 2 dt) stand for the teacher's T steps.

DCD, discrete consistency distillation (Sahoo et al., ICML 2025, "The Diffusion Duality", Alg. 1), for Duo:
a clean x0 and one Gaussian draw eps give a deterministic path through the Gaussian latent
(:func:`unmask.bounds.relaxation.argmax_trajectory`); its uniform-state latents z_t and z_s at t and s = t - dt
are a pair on the trajectory the optimal denoiser would follow, and the student at (z_t, t) is fitted to the
teacher at (z_s, s): it learns to predict now the x0 that its teacher would predict a step later.

Both fit with ``divergence``: "kl-bwd" (KL(student || teacher), the default of both references), "kl-fwd"
(KL(teacher || student)) or "mse" (of the log-probabilities, SDTT's alternative). Losses are per sequence in
nats, summed over the positions fitted, with the number of positions fitted.
"""

from __future__ import annotations

import torch
from torch import Tensor

from unmask.bounds.masking import mask_tokens, per_row_sum, sample_times
from unmask.bounds.nll import masked_log_probs
from unmask.bounds.relaxation import argmax_trajectory, gaussian_alpha
from unmask.bounds.uniform import num_states
from unmask.denoiser import Denoiser, denoise
from unmask.sampling.draw import draw_categorical
from unmask.schedules import Schedule, get_schedule

DIVERGENCES = ("kl-bwd", "kl-fwd", "mse")
# DCD's Gaussian range (the reference's configs/algo/distillation.yaml): wider than the curriculum's.
DCD_GAMMA_MIN, DCD_GAMMA_MAX = -4.0, -1.0


def divergence_per_token(student: Tensor, teacher: Tensor, divergence: str) -> Tensor:
    """The divergence [N] between rows of log-probabilities [N, V] (float32 at least; -inf where an id has no mass)."""
    # Ids without mass in both (MASK) are left out; filled before the arithmetic, so that no inf - inf reaches
    # the gradient of the branch torch.where does not take.
    finite = torch.isfinite(student) & torch.isfinite(teacher)
    student, teacher = student.masked_fill(~finite, 0.0), teacher.masked_fill(~finite, 0.0)
    if divergence == "mse":
        return (student - teacher).pow(2).sum(-1)
    p, q = (student, teacher) if divergence == "kl-bwd" else (teacher, student)
    return torch.where(finite, p.exp() * (p - q), 0.0).sum(-1)


@torch.no_grad()
def sdtt_targets(teacher: Denoiser, x_t: Tensor, t: Tensor, dt: float, *, schedule: Schedule, mask_id: int,
                 generator: torch.Generator | None = None, steps: int = 2) -> Tensor:
    """The teacher's x0 log-probabilities [N, V] at the N masked positions of x_t [B, L] (row-major), each from
    the step of ``steps`` ancestral steps of ``dt`` from t [B] at which it unmasked (the last step's if never)."""
    masked = x_t == mask_id
    x, rows = x_t.clone(), masked.nonzero()[:, 0]
    targets: Tensor | None = None
    settled = torch.zeros(int(masked.sum()), dtype=torch.bool, device=x_t.device)
    for step in range(steps):
        s = (t - dt).clamp_min(0.0)
        log_probs = masked_log_probs(denoise(teacher, x, t, where=masked), mask_id)
        targets = log_probs.clone() if targets is None else targets
        unmask_prob = schedule.unmask_probability(t.double(), s.double())[rows]
        u = torch.rand(settled.shape, generator=generator, device=x_t.device, dtype=torch.float64)
        unmasking = ~settled & ((u < unmask_prob) | (step == steps - 1))  # the last step fixes every target
        targets[unmasking] = log_probs[unmasking]
        drawn = draw_categorical(log_probs.double().exp(), generator)
        chosen = ~settled & (u < unmask_prob)
        values = x[masked]
        values[chosen] = drawn[chosen]
        x[masked] = values
        settled |= unmasking
        t = s
    return targets


def sdtt_loss(student: Denoiser, teacher: Denoiser, x0: Tensor, *, dt: float, schedule: Schedule | str, mask_id: int,
              divergence: str = "kl-bwd", loss_mask: Tensor | None = None,
              generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """SDTT's loss per sequence [B] and positions fitted [B]: t ~ U (antithetic, floored at 2 dt so that both
    teacher steps exist), x_t ~ q(. | x0), targets from :func:`sdtt_targets`, the student's SUBS log-probs at
    the masked positions of x_t fitted to them."""
    schedule = get_schedule(schedule)
    keep = torch.ones_like(x0, dtype=torch.bool) if loss_mask is None else loss_mask.bool()
    t = sample_times(x0.shape[0], antithetic=True, t_min=min(2 * dt, 1.0), generator=generator, device=x0.device)
    x_t, masked = mask_tokens(x0, schedule.one_minus_alpha(t), mask_id, keep, generator)
    targets = sdtt_targets(teacher, x_t, t, dt, schedule=schedule, mask_id=mask_id, generator=generator)
    attention_mask = None if loss_mask is None else keep
    student_log_probs = masked_log_probs(denoise(student, x_t, t, where=masked, attention_mask=attention_mask),
                                         mask_id)
    per_token = divergence_per_token(student_log_probs, targets.float(), divergence)
    return per_row_sum(per_token, masked), masked.sum(1)


def _uniform_log_probs(logits: Tensor, mask_id: int | None) -> Tensor:
    """The mean parameterization's log x_theta over the states (MASK's column at -inf), float32 at least."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32), copy=True)
    if mask_id is not None:
        logits[..., mask_id] = float("-inf")
    return torch.log_softmax(logits, dim=-1)


def dcd_loss(student: Denoiser, teacher: Denoiser, x0: Tensor, *, dt: float, schedule: Schedule | str,
             mask_id: int | None, vocab_size: int, divergence: str = "kl-bwd", gamma_min: float = DCD_GAMMA_MIN,
             gamma_max: float = DCD_GAMMA_MAX, loss_mask: Tensor | None = None,
             generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """DCD's loss per sequence [B] and positions fitted [B] (module docstring): t ~ U (antithetic), moved to
    t + dt (at most 1), s = t - dt; gamma linear on [gamma_min, gamma_max]; the student at (z_t, t) fitted to the
    teacher at (z_s, s). The models see the time at which the run's ``schedule`` has the trajectory's alpha, as
    Duo's curriculum does (:func:`unmask.bounds.relaxation.duo_curriculum_loss`)."""
    schedule = get_schedule(schedule)
    keep = torch.ones_like(x0, dtype=torch.bool) if loss_mask is None else loss_mask.bool()
    t = (sample_times(x0.shape[0], antithetic=True, generator=generator, device=x0.device).double() + dt).clamp(
        max=1.0)
    s = (t - dt).clamp_min(0.0)
    gamma_t, gamma_s = (gamma_min + time * (gamma_max - gamma_min) for time in (t, s))
    z_t, z_s = argmax_trajectory(x0, [gamma_t, gamma_s], vocab_size=vocab_size, mask_id=mask_id, loss_mask=keep,
                                 generator=generator)
    k = num_states(vocab_size, mask_id)
    time_t, time_s = (schedule.time_of_alpha(gaussian_alpha(gamma, k)).float() for gamma in (gamma_t, gamma_s))
    attention_mask = None if loss_mask is None else keep
    with torch.no_grad():
        targets = _uniform_log_probs(denoise(teacher, z_s, time_s, where=keep, attention_mask=attention_mask), mask_id)
    student_log_probs = _uniform_log_probs(denoise(student, z_t, time_t, where=keep, attention_mask=attention_mask),
                                           mask_id)
    per_token = divergence_per_token(student_log_probs, targets, divergence)
    return per_row_sum(per_token, keep), keep.sum(1)
