"""Sampling uniform-state diffusion (Duo, Sahoo et al., ICML 2025): every position moves at every step.

Under the uniform process there is no MASK to wait on: z_1 is uniform noise over the K states and each
step redraws every generated position from the posterior q(z_s | z_t, x_theta) of the model's clean-token
estimate (:func:`unmask.bounds.uniform.uniform_posterior`). So a step always costs a network call over
all rows (no step is idle, unlike the absorbing samplers' cached mode), and few-step sampling is where the
kind shines.

- :func:`uniform_ancestral_step`: the ancestral step (the reference's ``_posterior_from_x0`` and its
  sampling loop); ``greedy``: Duo's greedy tail, the argmax of x_theta instead of the last draw.
- :func:`psi_step` with :func:`remdm_kappa`: a Psi-sampler of the sequel (predictor-corrector).
- :class:`UniformRun`: the run (:mod:`unmask.sampling.run`) that drives either over T steps.
"""

from __future__ import annotations

import torch
from torch import Tensor

from unmask.bounds.uniform import TINY, num_states, state_indicator, uniform_posterior
from unmask.sampling.config import SamplerConfig
from unmask.sampling.draw import draw_categorical, filtered_probs
from unmask.sampling.process import Process
from unmask.sampling.run import DenoiserCall, Events, SampleOutput, StepDone

# Psi's remasking-like rate when the sampler config gives none: the reference's OpenWebText setting, and the
# rate at which the corrector's per-position redraws stay within the toy's sampling error (tests/test_uniform.py).
PSI_ETA = 0.01


def uniform_ancestral_step(
    probs_x0: Tensor,
    z_t: Tensor,
    alpha_t: Tensor | float,
    alpha_s: Tensor | float,
    generator: torch.Generator | None = None,
    *,
    mask_id: int | None = None,
    greedy: bool = False,
) -> Tensor:
    """One ancestral step t -> s: z_s ~ q(z_s | z_t, x_theta) at every position (:func:`uniform_posterior`),
    drawn in float64 by inverse CDF. ``probs_x0`` [..., V] is the model's x_theta, ``z_t`` [...].

    ``greedy`` is the reference's "greedy tail" (``sampling.noise_removal=greedy``, Duo §4.2): instead of a
    draw, every position takes the argmax of x_theta. The reference does this once, after its last step.
    """
    if greedy:
        states = state_indicator(probs_x0.shape[-1], mask_id, probs_x0.device)
        return (probs_x0.to(torch.float64) * states).argmax(-1)
    posterior = uniform_posterior(probs_x0, z_t, alpha_t, alpha_s, mask_id=mask_id)
    return draw_categorical(posterior.reshape(-1, posterior.shape[-1]), generator).view(z_t.shape)


def psi_step(
    probs_x0: Tensor,
    z_t: Tensor,
    alpha_t: Tensor | float,
    alpha_s: Tensor | float,
    kappa: Tensor | float,
    generator: torch.Generator | None = None,
    *,
    mask_id: int | None = None,
) -> Tensor:
    """One step t -> s of a Psi-sampler (Deschenaux, Gulcehre, Sahoo, "The Diffusion Duality, Chapter II:
    Psi-Samplers", ICLR 2026, arXiv 2602.21185; the reference's ``_psi_update``).

    The Psi-posterior is a superposition of a predictor and a corrector:

        kappa q(z_s | z_t, x_theta) + (1 - kappa) [alpha_s x0_hat + (1 - alpha_s) / K],

    the first the ancestral posterior, the second the forward process to time s applied to
    x0_hat = q(z_0 | z_t, x_theta), the posterior of the clean token given z_t (:func:`uniform_posterior`
    at alpha_s = 1). Given the true x0 both parts map q_t(. | x0) to q_s(. | x0), so every kappa in [0, 1]
    keeps the marginals; kappa = 1 is ancestral sampling. :func:`remdm_kappa` gives one schedule of kappa.
    With a per-position x_theta the corrector redraws positions independently of each other, exact only as
    1 - kappa -> 0: on the toy distribution, with the exact denoiser, a pure corrector step (kappa = 0) over
    the last 10% of 200 steps leaves a visible error, over the last 1% none (tests/test_uniform.py).
    """
    predictor = uniform_posterior(probs_x0, z_t, alpha_t, alpha_s, mask_id=mask_id)
    clean = uniform_posterior(probs_x0, z_t, alpha_t, 1.0, mask_id=mask_id)
    states = state_indicator(probs_x0.shape[-1], mask_id, probs_x0.device)
    alpha_s = torch.as_tensor(alpha_s, dtype=torch.float64, device=probs_x0.device).unsqueeze(-1)
    corrector = alpha_s * clean + (1 - alpha_s) * states / states.sum()
    kappa = torch.as_tensor(kappa, dtype=torch.float64, device=probs_x0.device)
    kappa = kappa.unsqueeze(-1) if kappa.dim() > 0 else kappa
    mixture = kappa * predictor + (1 - kappa) * corrector
    return draw_categorical(mixture.reshape(-1, mixture.shape[-1]), generator).view(z_t.shape)


def remdm_kappa(alpha_t: Tensor, alpha_s: Tensor, eta: float) -> Tensor:
    """kappa of the reference's "max-capped-eta" Psi mode (ReMDM's capped remasking rate, Wang et al. 2025):

        sigma = min(eta, (1 - alpha_s) / alpha_t),    kappa = clip(1 - sigma / (1 - alpha_s), 0, 1),

    with sigma = eta where alpha_t = 0, and kappa = 1 (a pure ancestral step) where alpha_s = 1. The
    reference's OpenWebText Psi runs use eta = 0.01.
    """
    alpha_t, alpha_s = alpha_t.to(torch.float64), alpha_s.to(torch.float64)
    cap = torch.where(alpha_t > 0, (1 - alpha_s) / alpha_t.clamp_min(TINY), eta)
    sigma = cap.clamp(max=eta)
    room = 1 - alpha_s
    return torch.where(room > 0, (1 - sigma / room.clamp_min(TINY)).clamp(0.0, 1.0), 1.0)


class UniformRun:
    """Uniform-state sampling of ``x`` [B, L] as ``config`` says: its MASK entries are the positions to
    generate, which start as uniform noise over the states (z_1); the other entries are fixed tokens (a
    template) that the model sees clean and that never change.

    T = ``config.steps`` steps on the grid t_k = 1 - k / T, one network call each: x_theta is the model's
    softmax at the generated positions after the draw controls (temperature, top-k, top-p), and z moves to
    t_{k+1} by the posterior (sampler "psi": the Psi-posterior, its rate ``config.remasking.eta`` or
    :data:`PSI_ETA`). The last step goes to the clean data (alpha = 1): a draw of x0 from its posterior, or
    with ``config.final_step == "argmax"`` the argmax of x_theta (the greedy tail).
    """

    def __init__(self, config: SamplerConfig, x: Tensor, *, process: Process,
                 generator: torch.Generator | None = None) -> None:
        self.config, self.process, self.generator = config, process, generator
        self.mask_id = process.mask_id
        self.generated = x == self.mask_id
        vocab_size = int(process.vocab_size)
        noise = torch.randint(0, num_states(vocab_size, self.mask_id), x.shape, generator=generator, device=x.device)
        noise = noise + (noise >= self.mask_id).long()  # state index -> id: MASK is not a state
        self.x = torch.where(self.generated, noise, x)
        self.num_calls = self.num_steps = 0

    def output(self) -> SampleOutput:
        return SampleOutput(tokens=self.x, num_calls=self.num_calls, num_steps=self.num_steps)

    def events(self) -> Events:
        config, schedule, generated = self.config, self.process.schedule, self.generated
        batch = self.x.shape[0]
        times = torch.linspace(1.0, 0.0, config.steps + 1, dtype=torch.float64, device=self.x.device)
        alphas = schedule.alpha(times)
        alphas[-1] = 1.0  # the last step reaches the clean data
        eta = config.remasking.eta if config.remasking is not None else PSI_ETA
        d = config.draw
        for k in range(config.steps):
            if not bool(generated.any()):
                return
            logits = yield DenoiserCall(self.x, times[k].float().expand(batch), generated)
            self.num_calls += 1
            probs = filtered_probs(logits, self.mask_id, temperature=d.temperature, top_k=d.top_k, top_p=d.top_p)
            z_t, last = self.x[generated], k == config.steps - 1
            if last and config.final_step == "argmax":
                z_s = uniform_ancestral_step(probs, z_t, alphas[k], alphas[k + 1], mask_id=self.mask_id, greedy=True)
            elif config.sampler == "psi":
                kappa = remdm_kappa(alphas[k], alphas[k + 1], eta)
                z_s = psi_step(probs, z_t, alphas[k], alphas[k + 1], kappa, self.generator, mask_id=self.mask_id)
            else:
                z_s = uniform_ancestral_step(probs, z_t, alphas[k], alphas[k + 1], self.generator,
                                             mask_id=self.mask_id)
            self.x[generated] = z_s
            self.num_steps += 1
            yield StepDone(self.num_steps, self.x)
