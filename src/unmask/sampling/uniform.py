"""Sampling uniform-state diffusion (Duo, Sahoo et al., ICML 2025): every position moves at every step.

Under the uniform process there is no MASK to wait on: z_1 is uniform noise over the K states and each
step redraws every generated position from the posterior q(z_s | z_t, x_theta) of the model's clean-token
estimate (:func:`unmask.bounds.uniform.uniform_posterior`). So a step always costs a network call over all
rows (no step is idle, unlike the absorbing samplers' cached mode), and few-step sampling is where the
kind shines.

The draw never builds the posterior over the vocabulary. Written out, with keep = alpha_t / alpha_s,

    q(z_s = y | z_t, x) ∝ keep [y = z_t] (alpha_s x_{z_t} + (1 - alpha_s) / K)
                          + ((1 - keep) / K) (alpha_s x_y + (1 - alpha_s) / K),

a mixture of three draws whose weights need only x_{z_t}: stay at z_t; draw y from x_theta; draw y
uniformly. The second part sums to (1 - keep) / K over y (x sums to 1). The Psi-sampler's corrector,
alpha_s q(z_0 | z_t, x) + (1 - alpha_s) / K, is the same mixture at alpha_s = 1 mixed with uniform noise.
So one float64 uniform per position picks its branch, and only the positions that draw from x_theta
need a categorical over the vocabulary (float64, inverse CDF: :func:`unmask.sampling.draw_categorical`):
at a 50k vocabulary that draw, not the network, would otherwise dominate a step on a CPU.

- :func:`uniform_ancestral_step`: the ancestral step (the reference's ``_posterior_from_x0`` and its loop);
  ``greedy``: Duo's greedy tail, the argmax of x_theta instead of the last draw.
- :func:`psi_step` with :func:`remdm_kappa`: a Psi-sampler of the sequel (predictor-corrector).
- :class:`UniformRun`: the run (:mod:`unmask.sampling.run`) that drives either over T steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from unmask.bounds.uniform import TINY, num_states
from unmask.sampling.config import DrawConfig, SamplerConfig
from unmask.sampling.draw import draw_categorical, filtered_probs
from unmask.sampling.process import Process
from unmask.sampling.run import DenoiserCall, Events, SampleOutput, StepDone

# Psi's remasking-like rate when the sampler config gives none: the reference's OpenWebText setting, and the
# rate at which the corrector's per-position redraws stay within the toy's sampling error (tests/test_uniform.py).
PSI_ETA = 0.01

# Draws y ~ x_theta at the selected positions (bool [N]): ids [selected].
DrawFromModel = Callable[[Tensor], Tensor]


def _float64(value: Tensor | float, device: torch.device) -> Tensor:
    return torch.as_tensor(value, dtype=torch.float64, device=device)


def _stay_probability(x_z: Tensor, alpha_t: Tensor, alpha_s: Tensor, k: int) -> Tensor:
    """P(the posterior's draw is "stay at z_t") [N] (module docstring): its weight over the total."""
    keep = alpha_t / alpha_s.clamp_min(TINY)
    stay = keep * (alpha_s * x_z + (1 - alpha_s) / k)
    return stay / (stay + (1 - keep) / k).clamp_min(TINY)


def mixture_step(x_z: Tensor, draw_from_model: DrawFromModel, z_t: Tensor, alpha_t: Tensor | float,
                 alpha_s: Tensor | float, kappa: Tensor | float, generator: torch.Generator | None, *,
                 vocab_size: int, mask_id: int | None) -> Tensor:
    """z_s [N] from kappa q(z_s | z_t, x) + (1 - kappa) [alpha_s q(z_0 | z_t, x) + (1 - alpha_s) / K] (kappa = 1:
    the ancestral posterior), as one draw among stay / model / uniform per position (module docstring).

    ``x_z`` [N] is x_theta at z_t; ``draw_from_model`` draws from x_theta where asked. One float64 uniform per
    position, then the model's and the uniform draws in position order: the same generator state gives the
    same draws whatever kappa, so kappa = 1 is the ancestral step draw for draw.
    """
    device, k = z_t.device, num_states(vocab_size, mask_id)
    x_z = x_z.to(torch.float64)
    alpha_t, alpha_s, kappa = (_float64(value, device) for value in (alpha_t, alpha_s, kappa))
    stay_s = _stay_probability(x_z, alpha_t, alpha_s, k)  # the predictor: the posterior at s
    stay_0 = _stay_probability(x_z, alpha_t, _float64(1.0, device), k)  # the corrector's posterior of z_0
    # Each branch's probability: the predictor q(z_s | .) with weight kappa, the corrector with 1 - kappa.
    stay = kappa * stay_s + (1 - kappa) * alpha_s * stay_0
    model = kappa * (1 - stay_s) * alpha_s + (1 - kappa) * alpha_s * (1 - stay_0)
    u = torch.rand(z_t.shape, generator=generator, device=device, dtype=torch.float64)
    from_model = (u >= stay) & (u < stay + model)
    uniform = u >= stay + model
    z_s = z_t.clone()
    if bool(from_model.any()):
        z_s[from_model] = draw_from_model(from_model)
    if bool(uniform.any()):
        states = torch.randint(0, k, (int(uniform.sum()),), generator=generator, device=device)
        z_s[uniform] = states if mask_id is None else states + (states >= mask_id).long()
    return z_s


def _probs_draws(probs: Tensor, generator: torch.Generator | None) -> DrawFromModel:
    flat = probs.to(torch.float64).reshape(-1, probs.shape[-1])
    return lambda where: draw_categorical(flat[where.reshape(-1)], generator)


def uniform_ancestral_step(probs_x0: Tensor, z_t: Tensor, alpha_t: Tensor | float, alpha_s: Tensor | float,
                           generator: torch.Generator | None = None, *, mask_id: int | None = None,
                           greedy: bool = False) -> Tensor:
    """One ancestral step t -> s: z_s ~ q(z_s | z_t, x_theta) at every position, ``probs_x0`` [..., V] being the
    model's x_theta and ``z_t`` [...] the current ids (:func:`mixture_step` with kappa = 1).

    ``greedy`` is the reference's "greedy tail" (``sampling.noise_removal=greedy``, Duo §4.2): instead of a
    draw, every position takes the argmax of x_theta. The reference does this once, after its last step.
    """
    probs = probs_x0.to(torch.float64)
    if mask_id is not None:
        probs = probs.index_fill(-1, torch.tensor([mask_id], device=probs.device), 0.0)
    if greedy:
        return probs.argmax(-1)
    x_z = probs.gather(-1, z_t.unsqueeze(-1)).squeeze(-1)
    return mixture_step(x_z.reshape(-1), _probs_draws(probs, generator), z_t.reshape(-1), alpha_t, alpha_s, 1.0,
                        generator, vocab_size=probs.shape[-1], mask_id=mask_id).view(z_t.shape)


def psi_step(probs_x0: Tensor, z_t: Tensor, alpha_t: Tensor | float, alpha_s: Tensor | float,
             kappa: Tensor | float, generator: torch.Generator | None = None, *, mask_id: int | None = None) -> Tensor:
    """One step t -> s of a Psi-sampler (Deschenaux, Gulcehre, Sahoo, "The Diffusion Duality, Chapter II:
    Psi-Samplers", ICLR 2026, arXiv 2602.21185; the reference's ``_psi_update``).

    The Psi-posterior is a superposition of a predictor and a corrector:

        kappa q(z_s | z_t, x_theta) + (1 - kappa) [alpha_s x0_hat + (1 - alpha_s) / K],

    the first the ancestral posterior, the second the forward process to time s applied to
    x0_hat = q(z_0 | z_t, x_theta), the posterior of the clean token given z_t (:func:`unmask.bounds.uniform.
    uniform_posterior` at alpha_s = 1). Given the true x0 both parts map q_t(. | x0) to q_s(. | x0), so every
    kappa in [0, 1] keeps the marginals; kappa = 1 is ancestral sampling. :func:`remdm_kappa` gives one schedule
    of kappa. With a per-position x_theta the corrector redraws positions independently of each other, exact only
    as 1 - kappa -> 0: on the toy distribution, with the exact denoiser, a pure corrector step (kappa = 0) over
    the last 10% of 200 steps leaves a visible error, over the last 1% none (tests/test_uniform.py).
    """
    probs = probs_x0.to(torch.float64)
    if mask_id is not None:
        probs = probs.index_fill(-1, torch.tensor([mask_id], device=probs.device), 0.0)
    x_z = probs.gather(-1, z_t.unsqueeze(-1)).squeeze(-1)
    return mixture_step(x_z.reshape(-1), _probs_draws(probs, generator), z_t.reshape(-1), alpha_t, alpha_s, kappa,
                        generator, vocab_size=probs.shape[-1], mask_id=mask_id).view(z_t.shape)


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


def model_probability(logits: Tensor, z_t: Tensor, draw: DrawConfig, mask_id: int,
                      generator: torch.Generator | None) -> tuple[Tensor, DrawFromModel]:
    """x_theta at z_t [N] under the draw controls, and a draw from x_theta where asked, from logits [N, V].

    Without top-k or top-p, x_theta at z_t needs one logsumexp per row and only the rows that draw from the
    model are turned into float64 probabilities; with them, every row's filtered distribution is built.
    """
    controls = dict(temperature=draw.temperature, top_k=draw.top_k, top_p=draw.top_p)
    if draw.top_k is not None or draw.top_p is not None or draw.temperature == 0:
        probs = filtered_probs(logits, mask_id, **controls)
        return probs.gather(-1, z_t.unsqueeze(-1)).squeeze(-1), _probs_draws(probs, generator)
    scaled = logits.float() / draw.temperature
    scaled[:, mask_id] = float("-inf")
    x_z = (scaled.gather(-1, z_t.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(scaled, -1)).double().exp()
    return x_z, lambda where: draw_categorical(filtered_probs(logits[where], mask_id, **controls), generator)


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
        self.mask_id, self.vocab_size = process.mask_id, int(process.vocab_size)
        self.generated = x == self.mask_id
        noise = torch.randint(0, num_states(self.vocab_size, self.mask_id), x.shape, generator=generator,
                              device=x.device)
        noise = noise + (noise >= self.mask_id).long()  # state index -> id: MASK is not a state
        self.x = torch.where(self.generated, noise, x)
        self.num_calls = self.num_steps = 0

    def output(self) -> SampleOutput:
        return SampleOutput(tokens=self.x, num_calls=self.num_calls, num_steps=self.num_steps)

    def events(self) -> Events:
        config, generated = self.config, self.generated
        batch = self.x.shape[0]
        times = torch.linspace(1.0, 0.0, config.steps + 1, dtype=torch.float64, device=self.x.device)
        alphas = self.process.schedule.alpha(times)
        alphas[-1] = 1.0  # the last step reaches the clean data
        eta = config.remasking.eta if config.remasking is not None else PSI_ETA
        for k in range(config.steps):
            if not bool(generated.any()):
                return
            logits = yield DenoiserCall(self.x, times[k].float().expand(batch), generated)
            self.num_calls += 1
            z_t = self.x[generated]
            if k == config.steps - 1 and config.final_step == "argmax":
                z_s = logits.float().index_fill(-1, torch.tensor([self.mask_id], device=logits.device),
                                                float("-inf")).argmax(-1)
            else:
                x_z, draw = model_probability(logits, z_t, config.draw, self.mask_id, self.generator)
                kappa = remdm_kappa(alphas[k], alphas[k + 1], eta) if config.sampler == "psi" else 1.0
                z_s = mixture_step(x_z, draw, z_t, alphas[k], alphas[k + 1], kappa, self.generator,
                                   vocab_size=self.vocab_size, mask_id=self.mask_id)
            self.x[generated] = z_s
            self.num_steps += 1
            yield StepDone(self.num_steps, self.x)
