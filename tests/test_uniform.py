"""Uniform-state diffusion (Duo) against brute force and the enumerable toy distribution."""

import math

import pytest
import torch
from toy import estimate
from toy_uniform import (
    UniformExactDenoiser,
    expected_integrand,
    gauss_legendre,
    reconstruction,
    sample_chain,
)

from unmask.bounds.masking import min_time
from unmask.bounds.relaxation import (
    GaussianSchedule,
    curriculum_temperature,
    duo_curriculum_loss,
    gaussian_alpha,
    gaussian_alpha_derivative,
    relaxed_latent,
)
from unmask.bounds.uniform import corrupt_uniform, uniform_nelbo, uniform_posterior, uniform_token_loss
from unmask.sampling.uniform import psi_step, remdm_kappa, uniform_ancestral_step
from unmask.schedules import SCHEDULES, get_schedule

# Panels of the time quadrature: geometric towards t = 0, where the integrand has a log singularity.
EDGES = [0.0, *(10.0**-k for k in range(10, 0, -1)), 0.5, 1.0]
LINEAR_ALPHA = get_schedule("polynomial", k=1.0)  # alpha_t = 1 - t: z_1 is exactly uniform


@pytest.fixture(autouse=True)
def one_thread():
    # These tests run thousands of small tensor ops, where waking a thread pool costs more than the
    # work: on a 2-core machine beside another busy process, 10x slower with 2 threads than with 1.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _states_matrix(alpha: float, k: int) -> torch.Tensor:
    """q(b | a) for the uniform process with keep probability alpha: [a, b]."""
    return alpha * torch.eye(k, dtype=torch.float64) + (1 - alpha) / k


@pytest.mark.parametrize("mask_id", [2, None])
def test_posterior_is_bayes_and_linear_in_x_theta(mask_id):
    vocab, g = 5, torch.Generator().manual_seed(0)
    states = [i for i in range(vocab) if i != mask_id]
    k = len(states)
    for alpha_t, alpha_s in [(0.1, 0.4), (0.5, 0.9), (0.0, 0.3), (0.7, 1.0), (0.95, 0.99)]:
        x_theta = torch.rand(k, generator=g, dtype=torch.float64) ** 3
        x_theta /= x_theta.sum()
        to_s, s_to_t = _states_matrix(alpha_s, k), _states_matrix(alpha_t / alpha_s, k)
        for z_index, z_t in enumerate(states):
            # Bayes with x ~ x_theta: q(z_s = y | z_t) proportional to sum_x x_theta_x q(y | x) q(z_t | y).
            joint = (x_theta[:, None] * to_s * s_to_t[:, z_index][None, :]).sum(0)
            expected = torch.zeros(vocab, dtype=torch.float64)
            expected[states] = joint / joint.sum()
            full = torch.zeros(vocab, dtype=torch.float64)
            full[states] = x_theta
            if mask_id is not None:
                full[mask_id] = 0.3  # ignored
            got = uniform_posterior(full[None], torch.tensor([z_t]), alpha_t, alpha_s, mask_id=mask_id)[0]
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # Batched shapes: [B, L, V] with alphas per row.
    probs = torch.softmax(torch.randn(2, 3, vocab, generator=g, dtype=torch.float64), -1)
    z = torch.tensor([[0, 1, 3], [4, 4, 0]])
    out = uniform_posterior(probs, z, torch.tensor([[0.2], [0.6]]), torch.tensor([[0.5], [0.7]]), mask_id=mask_id)
    assert out.shape == (2, 3, vocab)
    torch.testing.assert_close(out.sum(-1), torch.ones(2, 3, dtype=torch.float64))
    if mask_id is not None:
        assert (out[..., mask_id] == 0).all()


def test_corruption_marginals_padding_and_mask():
    g = torch.Generator().manual_seed(1)
    x0 = torch.full((4000, 50), 3)
    loss_mask = torch.ones_like(x0, dtype=torch.bool)
    loss_mask[:, -10:] = False
    z = corrupt_uniform(x0, torch.full((4000,), 0.3), vocab_size=5, mask_id=2, loss_mask=loss_mask, generator=g)
    assert (z[:, -10:] == 3).all() and not (z == 2).any()
    freq = torch.bincount(z[:, :-10].reshape(-1), minlength=5).double() / z[:, :-10].numel()
    expected = torch.tensor([0.175, 0.175, 0.0, 0.3 + 0.175, 0.175], dtype=torch.float64)
    assert (freq - expected).abs().max() < 4e-3  # standard error ~ 3e-4
    per_token = corrupt_uniform(x0[:2, :4], torch.tensor([[1.0, 0.0, 1.0, 0.0]] * 2), vocab_size=5, mask_id=2,
                                generator=g)
    assert (per_token[:, [0, 2]] == 3).all()


def _rate_form(x_theta, x0, z, alpha, alpha_rate):
    """The integrand straight from the reverse rates, sum_{y != z} [R^ - R + R log(R / R^)] (float64)."""
    k = x_theta.shape[-1]
    onehot = torch.nn.functional.one_hot(x0, k).double()
    x_bar = k * alpha[:, None] * onehot + 1 - alpha[:, None]
    x_bar_theta = k * alpha[:, None] * x_theta + 1 - alpha[:, None]
    rate = x_bar / x_bar.gather(-1, z[:, None])
    rate_theta = x_bar_theta / x_bar_theta.gather(-1, z[:, None])
    terms = rate_theta - rate + rate * (rate / rate_theta).log()
    terms = terms.scatter(-1, z[:, None], 0.0)
    return -alpha_rate / (k * alpha) * terms.sum(-1)


def test_token_loss_matches_the_reverse_rates_and_is_zero_for_the_oracle():
    g = torch.Generator().manual_seed(2)
    n, k = 4000, 6
    logits = 3 * torch.randn(n, k + 1, generator=g, dtype=torch.float64)
    x0, z = torch.randint(0, k, (n,), generator=g), torch.randint(0, k, (n,), generator=g)
    z[: n // 2] = x0[: n // 2]
    alpha = torch.rand(n, generator=g, dtype=torch.float64).clamp(1e-3, 1 - 1e-3)
    rate = -torch.rand(n, generator=g, dtype=torch.float64)
    got = uniform_token_loss(logits, x0, z, alpha, 1 - alpha, rate, mask_id=k)
    x_theta = torch.softmax(logits[:, :k], -1)
    torch.testing.assert_close(got, _rate_form(x_theta, x0, z, alpha, rate), rtol=1e-9, atol=1e-12)
    assert (got >= 0).all()
    # MASK in the middle of the vocabulary: the same numbers with ids above it shifted.
    moved = torch.cat([logits[:, :2], logits[:, k : k + 1], logits[:, 2:k]], -1)
    shift = lambda ids: ids + (ids >= 2).long()  # noqa: E731
    torch.testing.assert_close(uniform_token_loss(moved, shift(x0), shift(z), alpha, 1 - alpha, rate, mask_id=2),
                               got, rtol=1e-12, atol=1e-12)
    # The oracle x_theta = onehot(x0) costs nothing.
    oracle = torch.full((n, k + 1), float("-inf"), dtype=torch.float64).scatter(-1, x0[:, None], 0.0)
    assert uniform_token_loss(oracle, x0, z, alpha, 1 - alpha, rate, mask_id=k).abs().max() < 1e-12


def test_token_loss_keeps_float32_precision_at_the_ends():
    g = torch.Generator().manual_seed(3)
    n, k = 2000, 4
    logits = torch.randn(n, k, generator=g, dtype=torch.float64)
    x0, z = torch.randint(0, k, (n,), generator=g), torch.randint(0, k, (n,), generator=g)
    rate = -torch.ones(n, dtype=torch.float64)
    for alpha in (1e-7, 1e-3, 1 - 1e-6):
        a = torch.full((n,), alpha, dtype=torch.float64)
        double = uniform_token_loss(logits, x0, z, a, 1 - a, rate, mask_id=None)
        single = uniform_token_loss(logits.float(), x0, z, a.float(), (1 - a).float(), rate.float(), mask_id=None)
        assert single.dtype == torch.float32
        # As alpha -> 0 the integrand shrinks like K alpha: still float32's relative precision. (The rate
        # form above, even in float64, is off by up to 20% at alpha = 1e-7: R^ - R + R log(R / R^) cancels.)
        torch.testing.assert_close(single.double(), double, rtol=1e-5, atol=0)
    # The polynomial schedule's alpha_1 = 0 and t = 0's alpha = 1 give the integrand's finite limits.
    zero = torch.zeros(n)
    assert (uniform_token_loss(logits.float(), x0, z, zero, 1 - zero, -torch.ones(n), mask_id=None) == 0).all()
    same = uniform_token_loss(logits.float(), x0, x0, 1 - zero, zero, -torch.ones(n), mask_id=None)
    assert same.isfinite().all()


def test_bf16_logits_give_a_float32_loss_and_gradient():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(64, 9, generator=g).bfloat16().requires_grad_()
    x0, z = torch.randint(0, 8, (64,), generator=g), torch.randint(0, 8, (64,), generator=g)
    alpha = torch.rand(64, generator=g)
    loss = uniform_token_loss(logits, x0, z, alpha, 1 - alpha, -torch.ones(64), mask_id=8)
    assert loss.dtype == torch.float32
    loss.sum().backward()
    assert logits.grad.isfinite().all() and (logits.grad[:, 8] == 0).all()


def _bound(den, schedule, x0):
    """The NELBO of each sequence of x0 by quadrature over t and summation over every latent (no draws)."""
    t, w = gauss_legendre(EDGES)
    return (expected_integrand(den, schedule, x0, t) * w).sum(-1)


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_leave_one_out_denoiser_makes_the_bound_exact(toy, schedule):
    # No Monte Carlo: E_t E_{z_t} is a quadrature over t and a sum over all 81 latents. linear and
    # geometric start at alpha_0 = exp(-1e-4) < 1, where the bound's term at t = 0, which the NELBO
    # leaves out as the reference does, is not 0: it is added here from the exact joint posterior.
    schedule = get_schedule(schedule)
    x0 = toy.draw(6, torch.Generator().manual_seed(0))
    bound = _bound(UniformExactDenoiser(toy, schedule), schedule, x0) + reconstruction(toy, schedule, x0)
    torch.testing.assert_close(bound, -toy.log_prob(x0), rtol=0, atol=1e-4)


def test_other_denoisers_give_larger_bounds_on_average(toy):
    # A bound holds for -log p_theta(x0), the model's own likelihood, which for an unlikely x0 can be below
    # -log p(x0): the comparison is of averages over x0 ~ p, where the exact denoiser reaches the entropy.
    t, w = gauss_legendre([0.0, 1e-8, 1e-6, 1e-4, 1e-2, 0.5, 1.0])

    def mean_bound(den):
        return float(toy.probs @ (expected_integrand(den, LINEAR_ALPHA, toy.sequences, t) * w).sum(-1))

    entropy = float(-(toy.probs * toy.probs.log()).sum())
    assert mean_bound(UniformExactDenoiser(toy, LINEAR_ALPHA)) == pytest.approx(entropy, abs=1e-4)
    # The conditional given all of z_t, position i's own latent included: 1.9 nats above here.
    assert mean_bound(UniformExactDenoiser(toy, LINEAR_ALPHA, leave_one_out=False)) > entropy + 1.0
    assert mean_bound(UniformExactDenoiser(toy, LINEAR_ALPHA, flatten=0.3)) > entropy + 0.05


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_nelbo_estimate_is_unbiased(toy, schedule):
    # The estimator's draws against the same integral computed without draws. Near t = 0 a corrupted
    # token costs ~ log(1 / (1 - alpha_t)) / (1 - alpha_t) nats with probability ~ 1 - alpha_t: heavy-tailed
    # draws. A floor of 1 - alpha_t >= 0.05 keeps the standard error small and tests the same plumbing
    # (the time floor, the interval's length, corruption, scoring) as the default floor.
    schedule = get_schedule(schedule)
    x0 = toy.draw(6, torch.Generator().manual_seed(0))
    den = UniformExactDenoiser(toy, schedule)
    t_min = min_time(schedule, 0.05)
    t, w = gauss_legendre([t_min, *(e for e in EDGES if e > t_min)])
    target = (expected_integrand(den, schedule, x0, t) * w).sum(-1)
    mean, se = estimate(uniform_nelbo, 40, denoiser=den, x0=x0, schedule=schedule, mask_id=toy.mask_id, num_t=64,
                        generator=torch.Generator().manual_seed(1), min_noise_rate=0.05)
    z = (mean.double() - target) / se.double()
    assert z.abs().max() < 4.5, z


def test_default_floor_leaves_out_a_sliver_near_t0(toy):
    # With the default floor (1 - alpha_t >= 1e-3, the reference's t >= 1e-3 for log-linear) the estimate
    # is -log p(x0) minus the integral below the floor: measured here, about 0.02 nats per sequence of 4.
    schedule = get_schedule("loglinear")
    x0 = toy.draw(6, torch.Generator().manual_seed(0))
    den = UniformExactDenoiser(toy, schedule)
    t, w = gauss_legendre([e for e in EDGES if e <= 1e-3])
    sliver = (expected_integrand(den, schedule, x0, t) * w).sum(-1)
    assert (sliver > 0).all() and sliver.mean() < 0.05, sliver
    mean, se = estimate(uniform_nelbo, 80, denoiser=den, x0=x0, schedule=schedule, mask_id=toy.mask_id,
                        num_t=64, generator=torch.Generator().manual_seed(2))
    pooled = float((mean.double() + toy.log_prob(x0) + sliver).mean())
    assert abs(pooled) < 4.5 * float(se.double().pow(2).mean().sqrt()) / math.sqrt(len(x0)), pooled


def test_explicit_times_padding_and_shapes(toy):
    den = UniformExactDenoiser(toy, "loglinear")
    x0 = toy.draw(3, torch.Generator().manual_seed(5))
    out = uniform_nelbo(den, x0, schedule="loglinear", mask_id=toy.mask_id, t=torch.tensor([[0.2, 0.7]] * 3))
    assert out.shape == (3,) and (out >= 0).all()
    with pytest.raises(ValueError, match="rows"):
        uniform_nelbo(den, x0, schedule="loglinear", mask_id=toy.mask_id, t=torch.rand(2))
    # Padding is neither corrupted nor scored.
    loss_mask = torch.ones_like(x0, dtype=torch.bool)
    loss_mask[:, 2:] = False
    seen = []
    padded = uniform_nelbo(lambda z, t: seen.append(z) or den(z, t), x0, schedule="loglinear", mask_id=toy.mask_id,
                           t=torch.full((3,), 0.9), loss_mask=loss_mask, generator=torch.Generator().manual_seed(0))
    assert (seen[0][:, 2:] == x0[:, 2:]).all() and padded.shape == (3,)


def _exact_tv_noise(toy, n: int) -> tuple[float, float]:
    """Mean and standard deviation of the total variation to p of n exact draws: the sampling noise."""
    g = torch.Generator().manual_seed(10)
    tvs = torch.tensor([toy.tv_distance(toy.draw(n, g)) for _ in range(40)])
    return float(tvs.mean()), float(tvs.std())


def test_ancestral_sampling_reaches_p(toy):
    n = 10_000
    noise, spread = _exact_tv_noise(toy, n)  # ~0.029 +- 0.003 at 10,000 draws
    den = UniformExactDenoiser(toy, LINEAR_ALPHA)
    fine = toy.tv_distance(sample_chain(den, n, 200, torch.Generator().manual_seed(1)))
    coarse = toy.tv_distance(sample_chain(den, n, 8, torch.Generator().manual_seed(1)))
    assert fine < noise + 4 * spread, (fine, noise, spread)
    assert coarse > fine + 0.04, (coarse, fine)  # 8 steps: each step's parallel draws cost accuracy
    # The full posterior p(x0^i | z_t) in place of the leave-one-out conditional does not reach p.
    full = UniformExactDenoiser(toy, LINEAR_ALPHA, leave_one_out=False)
    assert toy.tv_distance(sample_chain(full, n, 50, torch.Generator().manual_seed(1))) > 0.2


def test_greedy_tail_takes_the_argmax():
    probs = torch.tensor([[0.1, 0.5, 0.0, 0.4], [0.3, 0.2, 0.0, 0.5]], dtype=torch.float64)
    probs_with_mask = torch.cat([probs[:, :2], torch.ones(2, 1), probs[:, 2:]], -1)
    z = torch.tensor([0, 0])
    assert uniform_ancestral_step(probs_with_mask, z, 0.1, 1.0, mask_id=2, greedy=True).tolist() == [1, 4]


def test_psi_sampler_reaches_p(toy):
    n = 10_000
    noise, spread = _exact_tv_noise(toy, n)
    den = UniformExactDenoiser(toy, LINEAR_ALPHA)

    # eta = 0.01, the reference's OpenWebText setting. kappa = 0 (a pure corrector step, every position
    # redrawn at once) wherever 1 - alpha_s < eta: with eta = 0.1 that is the last 10% of the steps, and
    # the parallel redraws leave TV ~ 0.04 against 0.029 of noise.
    def step(probs, z, alpha_t, alpha_s, g):
        return psi_step(probs, z, alpha_t, alpha_s, remdm_kappa(alpha_t, alpha_s, 0.01), g, mask_id=toy.mask_id)

    samples = sample_chain(den, n, 200, torch.Generator().manual_seed(2), step)
    assert toy.tv_distance(samples) < noise + 4 * spread
    # kappa = 1 is the ancestral step, draw for draw.
    probs = torch.softmax(torch.randn(50, 4, 4, generator=torch.Generator().manual_seed(0)), -1).double()
    z = torch.randint(0, 3, (50, 4), generator=torch.Generator().manual_seed(1))
    a = psi_step(probs, z, 0.3, 0.5, 1.0, torch.Generator().manual_seed(7), mask_id=3)
    b = uniform_ancestral_step(probs, z, 0.3, 0.5, torch.Generator().manual_seed(7), mask_id=3)
    assert torch.equal(a, b)


def test_remdm_kappa():
    alpha_t, alpha_s = torch.tensor([0.0, 0.5, 0.95, 0.5]), torch.tensor([0.1, 0.6, 0.99, 1.0])
    kappa = remdm_kappa(alpha_t, alpha_s, 0.05)
    # sigma = min(eta, (1 - alpha_s) / alpha_t): 0.05 (alpha_t = 0), 0.05, 0.01 / 0.95; and kappa = 1 at alpha_s = 1.
    expected = torch.tensor([1 - 0.05 / 0.9, 1 - 0.05 / 0.4, 1 - (0.01 / 0.95) / 0.01, 1.0], dtype=torch.float64)
    torch.testing.assert_close(kappa, expected.clamp(0, 1))


# Gaussian relaxation


def test_gaussian_alpha_against_closed_forms_and_the_reference_table():
    gamma = torch.linspace(-6, 2, 81, dtype=torch.float64)
    # K = 2: P(N(mu, 1) > N(0, 1)) = Phi(mu / sqrt 2), so alpha = 2P - 1 = erf(mu / 2) with mu = exp(-gamma / 2).
    torch.testing.assert_close(gaussian_alpha(gamma, 2), torch.erf(torch.exp(-gamma / 2) / 2), rtol=0, atol=1e-12)
    # P(gamma) for GPT-2's 50,257 ids at two of the grid points of the reference's precomputed table
    # (integral/gpt2.pkl, scipy quad): alpha = (K P - 1) / (K - 1).
    k = 50_257
    for g, p, dp in [(-5.0, 0.9999999999998244, -6.5883964950330665e-12),
                     (-1.0, 0.0062060830978489835, -0.014059714260374659)]:
        g = torch.tensor([g], dtype=torch.float64)
        torch.testing.assert_close(gaussian_alpha(g, k), torch.tensor([(k * p - 1) / (k - 1)], dtype=torch.float64),
                                   rtol=1e-9, atol=1e-13)
        torch.testing.assert_close(gaussian_alpha_derivative(g, k), torch.tensor([k / (k - 1) * dp],
                                   dtype=torch.float64), rtol=1e-8, atol=1e-14)
    for k in (3, 1000, 50_257):
        noise = GaussianSchedule(k, gamma_min=-6.0, gamma_max=2.0).one_minus_alpha((gamma + 6) / 8)
        assert (noise.diff() > 0).all(), "more Gaussian noise, less signal"  # 1 - alpha: ~1e-88 at K = 3, gamma = -6
        h = 1e-5
        numeric = (gaussian_alpha(gamma + h, k) - gaussian_alpha(gamma - h, k)) / (2 * h)
        torch.testing.assert_close(gaussian_alpha_derivative(gamma, k), numeric, rtol=1e-5, atol=1e-9)
        extremes = gaussian_alpha(torch.tensor([-40.0, 40.0], dtype=torch.float64), k)
        assert extremes[0] > 1 - 1e-12 and abs(float(extremes[1])) < 1e-6  # P -> 1 and P -> 1 / K
    schedule = GaussianSchedule(3)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    torch.testing.assert_close(schedule.alpha(t) + schedule.one_minus_alpha(t), torch.ones_like(t))


def test_argmax_of_the_gaussian_latent_is_the_uniform_process():
    g = torch.Generator().manual_seed(6)
    vocab, mask_id, k = 4, 3, 3
    x0 = torch.randint(0, k, (64, 1 << 16), generator=g)
    for gamma in (-3.0, -1.0):
        z, _ = relaxed_latent(x0, torch.full((64,), gamma), None, vocab_size=vocab, mask_id=mask_id, generator=g)
        alpha = float(gaussian_alpha(torch.tensor(gamma, dtype=torch.float64), k))
        stay = float((z == x0).double().mean())
        # 4.2M draws: standard error <= 2.5e-4; agreement to 3 decimals.
        assert abs(stay - (alpha + (1 - alpha) / k)) < 1e-3, (stay, alpha)
        moved = (z - x0) % k  # the other states are equally likely
        share = torch.bincount(moved[moved > 0], minlength=k)[1:].double()
        assert abs(float(share[0] / share.sum()) - 0.5) < 3e-3
        assert not (z == mask_id).any()


def test_tempered_softmax_tends_to_the_argmax_one_hot():
    g = torch.Generator().manual_seed(7)
    x0 = torch.randint(0, 6, (8, 64), generator=g)
    x0 += (x0 >= 2).long()  # ids 0..6 but MASK (2)
    loss_mask = torch.ones_like(x0, dtype=torch.bool)
    loss_mask[:, -4:] = False
    gaps = []
    for temperature in (1.0, 0.1, 1e-2, 1e-4):
        z, soft = relaxed_latent(x0, torch.full((8,), -2.0), temperature, vocab_size=7, mask_id=2,
                                 loss_mask=loss_mask, generator=torch.Generator().manual_seed(0))
        assert soft.shape == (8, 64, 7) and (soft[..., 2] == 0).all()
        torch.testing.assert_close(soft.sum(-1), torch.ones(8, 64))
        assert (soft.argmax(-1) == z).all() and (z[:, -4:] == x0[:, -4:]).all()
        gaps.append(float((soft - torch.nn.functional.one_hot(z, 7)).abs().mean()))
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-3, gaps


def test_curriculum_temperature():
    assert curriculum_temperature(0) == pytest.approx(0.1)
    assert curriculum_temperature(150_000) == pytest.approx(10**-1.5)
    assert curriculum_temperature(200_000) == pytest.approx(0.01)
    assert curriculum_temperature(200_001) is None
    owt = dict(start_step=0, end_step=500_000, log10_start=-3.0, log10_end=-3.0)  # the reference's OpenWebText run
    assert curriculum_temperature(10, **owt) == pytest.approx(1e-3)


class SoftInputModel(torch.nn.Module):
    """A tiny denoiser that takes ids [B, L] or probability vectors [B, L, V] (embedded as the weighted mix of
    its input embeddings), and t [B]."""

    def __init__(self, vocab: int, hidden: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Parameter(torch.randn(vocab, hidden))
        self.time = torch.nn.Linear(1, hidden)
        self.head = torch.nn.Linear(2 * hidden, vocab)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = x @ self.embed if x.is_floating_point() else self.embed[x]
        h = h + self.time(t[:, None, None].float())
        context = h.mean(1, keepdim=True).expand_as(h)
        return self.head(torch.cat([h, context], -1))


def test_curriculum_loss_at_low_temperature_is_the_hard_loss():
    vocab, mask_id = 6, 5
    model = SoftInputModel(vocab)
    x0 = torch.randint(0, 5, (16, 12), generator=torch.Generator().manual_seed(8))
    t = torch.rand(16, generator=torch.Generator().manual_seed(9))
    kw = dict(schedule="loglinear", mask_id=mask_id, t=t)
    cold = duo_curriculum_loss(model, x0, temperature=1e-5, generator=torch.Generator().manual_seed(1), **kw)
    # The same draws by hand, with hard ids as the model's input.
    gaussian = GaussianSchedule(5)
    z, _ = relaxed_latent(x0, gaussian.gamma(t.double()), None, vocab_size=vocab, mask_id=mask_id,
                          generator=torch.Generator().manual_seed(1))
    alpha = gaussian.alpha(t.double())
    logits = model(z, get_schedule("loglinear").time_of_alpha(alpha).float())
    rows = torch.arange(16).repeat_interleave(12)
    hard = uniform_token_loss(logits.reshape(-1, vocab), x0.reshape(-1), z.reshape(-1), alpha[rows],
                              gaussian.one_minus_alpha(t.double())[rows], gaussian.alpha_derivative(t.double())[rows],
                              mask_id=mask_id).view(16, 12).sum(1)
    torch.testing.assert_close(cold, hard, rtol=1e-4, atol=1e-4)
    warm = duo_curriculum_loss(model, x0, temperature=1.0, generator=torch.Generator().manual_seed(1), **kw)
    assert not torch.allclose(warm, cold)
    warm.sum().backward()
    assert model.embed.grad is not None and model.embed.grad[mask_id].abs().max() == 0  # MASK is never an input


def test_curriculum_loss_is_the_uniform_integrand_of_the_gaussian_schedule(toy):
    # With hard latents the curriculum loss is the uniform-state integrand under the Gaussian schedule:
    # its mean over t in [0, 1] matches the same integral computed without draws.
    gaussian = GaussianSchedule(toy.vocab)
    den = UniformExactDenoiser(toy, LINEAR_ALPHA)  # sees t = 1 - alpha_t: recovers alpha_t exactly
    x0 = toy.draw(4, torch.Generator().manual_seed(0))
    t, w = gauss_legendre([0.0, 0.5, 1.0], 24)
    target = (expected_integrand(UniformExactDenoiser(toy, gaussian), gaussian, x0, t) * w).sum(-1)

    def hard_input(soft, time):
        return den(soft.argmax(-1), time)

    mean, se = estimate(duo_curriculum_loss, 30, denoiser=hard_input, x0=x0.repeat(64, 1), temperature=1.0,
                        schedule=LINEAR_ALPHA, mask_id=toy.mask_id, generator=torch.Generator().manual_seed(4))
    mean, se = mean.view(64, -1).mean(0), se.view(64, -1).pow(2).mean(0).sqrt() / 8
    z = (mean.double() - target) / se.double()
    assert z.abs().max() < 4.5, z
