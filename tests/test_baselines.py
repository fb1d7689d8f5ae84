"""The baselines' math (SEDD, D3PM) and SEDD's analytic sampler, against the enumerable toy distribution.

Each docstring says whether its statement is exact (an identity, checked to float tolerance or
within the Monte Carlo error of an unbiased estimate) or an inequality.
"""

import math

import pytest
import torch
from full_head import FullHead
from toy import ExactScoreDenoiser, ToyDistribution, WrongDenoiser, estimate

from unmask import DiT, DiTConfig, nelbo, nelbo_discrete
from unmask.bounds.d3pm import d3pm_nelbo, reconstruction_nll
from unmask.bounds.mdlm import d3pm_masked_kl
from unmask.bounds.nll import masked_nll
from unmask.bounds.sedd import sedd_nelbo, sedd_token_loss
from unmask.sampling import SamplerConfig, SamplingError, generate
from unmask.schedules import get_schedule
from unmask.score import log_score, tweedie_unmask_probability

N = 20000


def _random_dit(**overrides):
    torch.manual_seed(0)
    config = DiTConfig(vocab_size=12, length=16, n_layers=2, hidden=32, n_heads=4, cond_dim=16, **overrides)
    model = DiT(config).eval()
    for p in model.parameters():  # random outputs, so that every term of the losses is exercised
        torch.nn.init.normal_(p, std=0.2)
    return model


# --- SEDD: the score entropy --------------------------------------------------------------------


def test_sedd_token_loss_is_the_score_entropy_of_the_log_score_reading():
    """Exact: the stable form equals the reference's sum_y s_y - q log s_x0 + q (log q - 1), divided
    by q = 1 / expm1(sigma), with log s = logits - log expm1(sigma) - log(V - 1); gradients too."""
    g = torch.Generator().manual_seed(0)
    mask_id, vocab = 6, 7
    logits = (2 * torch.randn(50, vocab, generator=g, dtype=torch.float64)).requires_grad_()
    targets = torch.randint(0, mask_id, (50,), generator=g)
    sigma = torch.rand(50, generator=g, dtype=torch.float64) * 5 + 1e-3

    score = log_score(logits, sigma, mask_id=mask_id, parameterization="sedd")
    assert torch.allclose(score[:, :mask_id], logits[:, :mask_id] - torch.log(torch.expm1(sigma))[:, None]
                          - math.log(vocab - 1))
    assert (score[:, mask_id] == 0).all()  # the current token's entry
    q = 1 / torch.expm1(sigma)
    positive = score[:, :mask_id].exp().sum(-1)
    reference = positive - q * score.gather(-1, targets[:, None]).squeeze(-1) + q * (q.log() - 1)
    ours = sedd_token_loss(logits.float(), targets, mask_id)
    torch.testing.assert_close(ours.double() * q, reference, rtol=1e-5, atol=1e-5)
    assert (ours >= masked_nll(logits.float(), targets, mask_id) - 1e-5).all()  # the penalty Z - 1 - log Z >= 0

    weights = torch.randn(50, generator=g, dtype=torch.float64)
    (grad_reference,) = torch.autograd.grad((weights * reference / q).sum(), logits)
    leaf = logits.detach().float().requires_grad_()
    (grad_ours,) = torch.autograd.grad((weights.float() * sedd_token_loss(leaf, targets, mask_id)).sum(), leaf)
    torch.testing.assert_close(grad_ours.double(), grad_reference, rtol=1e-4, atol=1e-5)


def test_sedd_bound_with_the_exact_score_equals_exact_nll(toy):
    """Exact (in expectation): with the exact score the diffusion-weighted score entropy is -log p(x0),
    within the Monte Carlo error, as the MDLM bound of the exact denoiser is."""
    g = torch.Generator().manual_seed(0)
    x0 = toy.draw(6, g)
    mean, se = estimate(sedd_nelbo, 150, denoiser=ExactScoreDenoiser(toy), x0=x0, schedule="loglinear",
                         mask_id=toy.mask_id, num_t=64, generator=g)
    z = (mean + toy.log_prob(x0)) / se
    assert z.abs().max() < 4.5, z


@pytest.mark.parametrize("schedule", ["loglinear", "cosine", "linear"])
def test_sedd_bound_of_the_exact_score_is_the_mdlm_bound_draw_for_draw(toy, schedule):
    """Exact (for every draw): the exact score normalises (Z = 1), so the penalty Z - 1 - log Z is 0 and
    SEDD's bound is the MDLM bound of the exact denoiser on the same times and masks."""
    x0 = toy.draw(32, torch.Generator().manual_seed(1))
    kw = dict(x0=x0, schedule=schedule, mask_id=toy.mask_id, num_t=4)
    sedd = sedd_nelbo(ExactScoreDenoiser(toy), generator=torch.Generator().manual_seed(2), **kw)
    mdlm = nelbo(toy.denoiser(), generator=torch.Generator().manual_seed(2), **kw)
    torch.testing.assert_close(sedd, mdlm, rtol=1e-5, atol=1e-4)


def test_sedd_bound_is_never_below_the_mdlm_bound_of_its_own_x0_prediction():
    """Inequality (for every draw): Z - 1 - log Z >= 0, so SEDD's bound of a model is at least the MDLM
    bound of softmax(logits), with equality only when the score normalises."""
    model = _random_dit(time_conditioning=True)
    x0 = torch.randint(0, 11, (8, 16), generator=torch.Generator().manual_seed(0))
    kw = dict(x0=x0, schedule="loglinear", mask_id=11, num_t=3)
    sedd = sedd_nelbo(model, generator=torch.Generator().manual_seed(1), **kw)
    mdlm = nelbo(model, generator=torch.Generator().manual_seed(1), **kw)
    assert (sedd >= mdlm - 1e-4).all() and (sedd > mdlm + 1e-3).any()


def test_masked_only_head_equals_full_head_for_the_baselines():
    model = _random_dit(time_conditioning=True)
    x0 = torch.randint(0, 11, (4, 16), generator=torch.Generator().manual_seed(0))
    loss_mask = torch.ones_like(x0, dtype=torch.bool)
    loss_mask[:, 12:] = False
    kw = dict(x0=x0, schedule="loglinear", mask_id=11, num_t=3, loss_mask=loss_mask)
    for bound in (sedd_nelbo, d3pm_nelbo):
        fast = bound(model, generator=torch.Generator().manual_seed(0), **kw)
        plain = bound(FullHead(model), generator=torch.Generator().manual_seed(0), **kw)
        torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)


# --- D3PM -----------------------------------------------------------------------------------------


def test_d3pm_kl_is_the_kl_of_the_enumerated_posteriors():
    """Exact: the KL term equals KL(q(x_s | x_t = MASK, x0) || p_theta(x_s | x_t)) computed from the two
    distributions over the V ids, with p_theta(x_s | x_t) proportional to
    sum_x0' q(x_s, x_t | x0') p_theta(x0' | x_t) (MASK included as a prediction)."""
    g = torch.Generator().manual_seed(0)
    mask_id, vocab, n = 4, 5, 64
    log_probs = torch.log_softmax(torch.randn(n, vocab, generator=g, dtype=torch.float64), -1)
    x0 = torch.randint(0, mask_id, (n,), generator=g)
    alpha_t = torch.rand(n, generator=g, dtype=torch.float64) * 0.9
    alpha_s = alpha_t + (1 - alpha_t) * torch.rand(n, generator=g, dtype=torch.float64)
    alpha_s[:8] = 1.0  # the first step (s = 0): the posterior is the clean token
    unmask = (alpha_s - alpha_t) / (1 - alpha_t)

    theta = log_probs.exp()
    model = (alpha_s - alpha_t)[:, None] * theta  # x0' = y: x_s = y then masked by t
    model[:, mask_id] = (1 - alpha_s) * (1 - theta[:, mask_id]) + theta[:, mask_id]  # or x_s already MASK
    model = model / model.sum(-1, keepdim=True)
    truth = torch.zeros(n, vocab, dtype=torch.float64)
    truth[torch.arange(n), x0] = unmask
    truth[:, mask_id] = 1 - unmask
    where = truth > 0
    enumerated = torch.where(where, truth * (truth.clamp_min(1e-300).log() - model.log()), 0.0).sum(-1)
    ours = d3pm_masked_kl(log_probs, x0, mask_id, alpha_t, alpha_s, unmask)
    torch.testing.assert_close(ours, enumerated, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("steps", [1, 4, 1000])
def test_d3pm_bound_is_exact_for_independent_tokens_at_every_T(steps):
    """Exact (in expectation), for a distribution of independent tokens: the exact per-position
    conditionals then ARE the reverse process, and the steps' weights sum to alpha_0 - alpha_1, so
    D3PM's bound is (1 - alpha_1) (-log p(x0)) at every T: -log p(x0) but for the alpha_1 = 1e-3 of
    tokens the forward process leaves unmasked at t = 1 (at T = 1 the estimate is precise enough to
    see that). For correlated tokens a per-position model cannot unmask two positions jointly in one
    step: see the next test."""
    toy = ToyDistribution(vocab=3, length=4, seed=2, concentration=2.0, independent=True)
    g = torch.Generator().manual_seed(0)
    x0 = toy.draw(6, g)
    mean, se = estimate(d3pm_nelbo, 100, denoiser=toy.denoiser(), x0=x0, schedule="loglinear",
                         mask_id=toy.mask_id, steps=steps, num_t=64, generator=g)
    alpha_1 = float(get_schedule("loglinear").alpha(torch.tensor(1.0)))
    z = (mean + (1 - alpha_1) * toy.log_prob(x0)) / se.clamp_min(1e-6)
    assert z.abs().max() < 4.5, z


def test_d3pm_bound_of_the_exact_denoiser_on_correlated_tokens(toy):
    """Exact (for every draw): with the exact conditionals (no mass on MASK, and the clean sequence
    identifies itself) the D3PM KL is the SUBS term and the reconstruction term is 0, so D3PM's bound
    is the discrete SUBS bound. Inequality: it is above -log p(x0) on average and falls with T (the gap
    at T = 1 is the distribution's total correlation)."""
    g = torch.Generator().manual_seed(3)
    x0 = toy.draw(400, g)
    den = toy.denoiser()
    assert (reconstruction_nll(den, x0) == 0).all()
    kw = dict(x0=x0, schedule="loglinear", mask_id=toy.mask_id, steps=8, num_t=4)
    torch.testing.assert_close(d3pm_nelbo(den, generator=torch.Generator().manual_seed(1), **kw),
                               nelbo_discrete(den, generator=torch.Generator().manual_seed(1), **kw))
    nll = -toy.log_prob(x0).mean()
    gaps = [float(d3pm_nelbo(den, x0, schedule="loglinear", mask_id=toy.mask_id, steps=steps, num_t=32,
                             generator=g).mean() - nll) for steps in (1, 4, 16)]
    assert gaps[0] > gaps[1] > gaps[2] > 0.0, gaps


def test_d3pm_bound_lies_above_the_continuous_mdlm_bound_of_an_imperfect_denoiser(toy):
    """Inequality, in expectation over the data, for WrongDenoiser (t-free, 0.5 exact + 0.5 uniform):

    1. its discrete SUBS bound at T is >= its continuous bound. With h(a) the expected loss of a masked
       position when each other token is kept with probability a, L_T - L_inf = sum over steps of
       int_{a_t}^{a_s} (h(a_t) - h(a)) da, and h is non-increasing: q -> sum_v q_v (-log(q_v / 2 + 1 / 6))
       is concave, and a larger context refines the exact conditional (Jensen);
    2. D3PM's bound adds the reconstruction term (>= 0; here 4 log 1.5) and, with no mass on MASK,
       its KL is the SUBS term (checked draw for draw in the previous test).

    The expectation over the data is exact (all 81 sequences weighted by p); only t and the masks
    are sampled. The T-dependence of (1) alone is below what this Monte Carlo resolves at large T."""
    wrong, data, weights = WrongDenoiser(toy), toy.sequences, toy.probs.float()

    def expected(bound, **kw):
        values = torch.stack([(weights * bound(wrong, data, schedule="loglinear", mask_id=toy.mask_id, num_t=8,
                                               generator=torch.Generator().manual_seed(seed), **kw)).sum()
                              for seed in range(20)])
        return float(values.mean()), float(values.std() / len(values) ** 0.5)

    continuous, se_continuous = expected(nelbo)
    assert float(reconstruction_nll(wrong, data).mean()) == pytest.approx(4 * math.log(1.5), rel=1e-5)
    for steps in (10, 100, 1000):
        d3pm, se_d3pm = expected(d3pm_nelbo, steps=steps)
        assert d3pm > continuous + 4 * math.hypot(se_continuous, se_d3pm), (steps, d3pm, continuous)


# --- SEDD's analytic sampler ----------------------------------------------------------------------


def test_tweedie_step_of_an_exact_score_is_the_ancestral_step(toy):
    """Exact: for a normalised score (the exact one read as "sedd", any x0 prediction read as "subs")
    the probability of leaving MASK between t and s is (alpha_s - alpha_t) / (1 - alpha_t); a score
    scaled by c unmasks c times as fast (capped at 1)."""
    schedule = get_schedule("loglinear")
    t, s = torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.55, dtype=torch.float64)
    x_t = torch.tensor([[toy.mask_id, 1, toy.mask_id, 0]])
    where = x_t == toy.mask_id
    exact = schedule.unmask_probability(t, s)
    kw = dict(sigma_t=schedule.sigma(t), sigma_s=schedule.sigma(s), mask_id=toy.mask_id)
    sedd = ExactScoreDenoiser(toy)(x_t, t[None])[where]
    torch.testing.assert_close(tweedie_unmask_probability(sedd, parameterization="sedd", **kw), exact.expand(2))
    x0_logits = torch.randn(2, toy.vocab + 1)
    torch.testing.assert_close(tweedie_unmask_probability(x0_logits, parameterization="subs", **kw), exact.expand(2))
    torch.testing.assert_close(tweedie_unmask_probability(sedd + math.log(2), parameterization="sedd", **kw),
                               (2 * exact).clamp(max=1).expand(2))


def _analytic(denoiser, toy, parameterization, n=N, template=None):
    return generate(denoiser, SamplerConfig(sampler="analytic", steps=128), batch_size=n, length=toy.length,
                    mask_id=toy.mask_id, template=template, generator=torch.Generator().manual_seed(0),
                    parameterization=parameterization)


@pytest.mark.slow
def test_analytic_sampler_with_the_exact_score_reproduces_the_distribution(toy):
    """Exact as T grows: with the exact score the Tweedie step is the exact reverse step, so at 128
    steps (two of the 4 positions seldom unmask in the same step) the samples follow p. A score 50
    times too large unmasks many positions at once and is caught."""
    out = _analytic(ExactScoreDenoiser(toy), toy, "sedd")
    assert toy.tv_distance(out.tokens) < 0.03
    assert out.num_steps == 128 and out.num_calls <= 128

    class TooLarge(ExactScoreDenoiser):
        def __call__(self, x_t, t):
            return super().__call__(x_t, t) + math.log(50)

    assert toy.tv_distance(_analytic(TooLarge(toy), toy, "sedd").tokens) > 0.08
    template = torch.tensor([toy.mask_id, 1, toy.mask_id, 0])
    fixed = _analytic(ExactScoreDenoiser(toy), toy, "sedd", n=500, template=template).tokens
    assert (fixed[:, 1] == 1).all() and (fixed[:, 3] == 0).all() and not (fixed == toy.mask_id).any()


def test_analytic_sampler_reads_an_x0_prediction_as_a_score(toy):
    """Exact (draw for draw), for MDLM models: the exact x0 prediction converted to a score ("subs") gives
    the same unmasking probabilities and tokens as the exact score read as SEDD's, hence the same samples,
    which the test above shows follow p."""
    x0_prediction = _analytic(toy.denoiser(), toy, "subs", n=2000).tokens
    assert torch.equal(x0_prediction, _analytic(ExactScoreDenoiser(toy), toy, "sedd", n=2000).tokens)


def test_analytic_sampler_options():
    with pytest.raises(SamplingError, match="Tweedie"):
        SamplerConfig(sampler="analytic", order="confidence")
    with pytest.raises(ValueError, match="parameterization"):
        generate(_random_dit(), SamplerConfig(sampler="analytic"), batch_size=1, length=4, mask_id=11,
                 parameterization="score")
