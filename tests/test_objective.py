"""The objective against an enumerable distribution, where the truth is known exactly."""

import pytest
import torch
from devices import DEVICES, generator
from full_head import FullHead
from toy import WrongDenoiser, estimate

from unmask import DiT, DiTConfig, ar_loss, nelbo, nelbo_discrete, subs_log_probs
from unmask.bounds import nll as objective
from unmask.bounds.nll import masked_log_probs

SCHEDULES = ["loglinear", "linear", "cosine", "cosine_squared", "geometric", "polynomial"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_continuous_nelbo_equals_exact_nll(toy, schedule, device):
    x0 = toy.draw(6, torch.Generator().manual_seed(0))
    mean, se = estimate(nelbo, 150, denoiser=toy.denoiser(device), x0=x0.to(device), schedule=schedule,
                        mask_id=toy.mask_id, num_t=64, generator=generator(device, 0))
    z = (mean.cpu() + toy.log_prob(x0)) / se.cpu()
    assert z.abs().max() < 4.5, z


def test_explicit_times_and_shapes(toy):
    x0 = toy.draw(3, torch.Generator().manual_seed(1))
    den = toy.denoiser()
    t = torch.tensor([[0.2, 0.7], [0.5, 0.5], [1.0, 0.3]])
    out = nelbo(den, x0, schedule="loglinear", mask_id=toy.mask_id, t=t, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3,)
    g = torch.Generator().manual_seed(0)
    out = nelbo(den, x0, schedule="loglinear", mask_id=toy.mask_id, t=t[:, 0], generator=g)
    assert out.shape == (3,)
    with pytest.raises(ValueError, match="rows"):
        nelbo(den, x0, schedule="loglinear", mask_id=toy.mask_id, t=torch.rand(2))


def test_antithetic_times_cut_the_variance():
    # A denoiser that, like a real one, is surer of the answer the more context it sees: the
    # estimate then depends mostly on t, which is what low-discrepancy times stratify.
    x0 = torch.randint(0, 7, (16, 256), generator=torch.Generator().manual_seed(2))

    def denoiser(x_t, t):
        context = (x_t != 7).float().mean(1, keepdim=True)
        logits = torch.zeros(*x_t.shape, 8)
        return logits.scatter(-1, x0.unsqueeze(-1), 4.0 * context.unsqueeze(-1).expand(-1, x_t.shape[1], 1))

    g = torch.Generator().manual_seed(0)
    kw = dict(denoiser=denoiser, x0=x0, schedule="loglinear", mask_id=7, generator=g)
    plain = torch.stack([nelbo(**kw, antithetic=False).mean() for _ in range(200)])
    anti = torch.stack([nelbo(**kw, antithetic=True).mean() for _ in range(200)])
    assert anti.var() < 0.5 * plain.var()
    assert abs(float(anti.mean() - plain.mean())) < 4 * float(plain.std()) / 200**0.5


@pytest.mark.parametrize("device", DEVICES)
def test_discrete_bound_is_above_continuous_and_falls_with_T(toy, device):
    x0 = toy.draw(400, torch.Generator().manual_seed(3))
    nll = -toy.log_prob(x0).mean()
    den, g = toy.denoiser(device), generator(device, 3)
    gaps = []
    for steps in (1, 2, 4, 16):
        bound = nelbo_discrete(den, x0.to(device), schedule="loglinear", mask_id=toy.mask_id, steps=steps, num_t=32,
                               generator=g)
        gaps.append(float(bound.mean().cpu() - nll))
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3] > 0.0, gaps
    # T = 1 is a single parallel step: the gap is the total correlation of the distribution.
    assert gaps[0] > 0.3


def test_the_discrete_bound_is_above_the_continuous_one_in_expectation_only(toy):
    """docs/math.md section 6: with the exact denoiser the one-step bound of x0 is -log of the product of its
    marginals. For a sequence whose tokens go together that is below -log p(x0), the continuous bound (exact
    here); over the data its mean is the sum of the marginal entropies, above the entropy."""
    marginals = toy.product_of_marginals()
    entropy = float(-(toy.probs * toy.probs.log()).sum())
    assert float(-(toy.probs * marginals.log()).sum()) > entropy + 0.3  # in expectation: above
    favoured = (marginals > toy.probs).nonzero().flatten()
    i = int(favoured[(marginals[favoured] / toy.probs[favoured]).argmax()])
    x0 = toy.sequences[i : i + 1]
    one_step = nelbo_discrete(toy.denoiser(), x0, schedule="loglinear", mask_id=toy.mask_id, steps=1, num_t=4096,
                              generator=torch.Generator().manual_seed(0))
    nll = float(-toy.log_prob(x0)[0])
    # At t = 1 a position is masked with probability 1 - 1e-3: the one step is (almost) all positions at once.
    assert float(one_step[0]) == pytest.approx(-float(marginals[i].log()), abs=0.02)
    assert float(one_step[0]) < nll - 0.2  # this sequence: below


def test_wrong_denoiser_gives_a_larger_bound_on_average(toy):
    g = torch.Generator().manual_seed(4)
    x0 = toy.draw(300, g)
    kw = dict(x0=x0, schedule="loglinear", mask_id=toy.mask_id, num_t=16)
    exact = nelbo(toy.denoiser(), generator=torch.Generator().manual_seed(9), **kw).mean()
    wrong = nelbo(WrongDenoiser(toy), generator=torch.Generator().manual_seed(9), **kw).mean()
    assert wrong > exact + 0.05


def test_ablations_are_valid_upper_bounds(toy):
    g = torch.Generator().manual_seed(5)
    x0 = toy.draw(200, g)
    kw = dict(x0=x0, schedule="loglinear", mask_id=toy.mask_id, steps=8, num_t=8)
    wrong = WrongDenoiser(toy)
    subs = nelbo_discrete(wrong, generator=torch.Generator().manual_seed(1), **kw)
    no_carry = nelbo_discrete(wrong, carry_over=False, generator=torch.Generator().manual_seed(1), **kw)
    # Same draws: scoring unmasked positions too only adds non-negative terms.
    assert (no_carry >= subs - 1e-5).all() and no_carry.mean() > subs.mean()
    # Without zero masking but with a denoiser that puts no mass on MASK, the D3PM KL is the SUBS term.
    d3pm = nelbo_discrete(wrong, zero_masking=False, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.allclose(d3pm, subs, atol=1e-4)


def test_d3pm_kl_charges_mass_on_mask(toy):
    class LeakyMask:
        def __call__(self, x_t, t):
            logits = toy.denoiser()(x_t, t)
            logits[..., toy.mask_id] = 0.0  # mass on MASK: what zero masking forbids
            return logits

    x0 = toy.draw(100, torch.Generator().manual_seed(6))
    kw = dict(x0=x0, schedule="loglinear", mask_id=toy.mask_id, steps=8, num_t=8)
    exact = nelbo_discrete(toy.denoiser(), generator=torch.Generator().manual_seed(2), **kw)
    leaky = nelbo_discrete(LeakyMask(), zero_masking=False, generator=torch.Generator().manual_seed(2), **kw)
    assert leaky.mean() > exact.mean()


def test_subs_parameterization():
    logits = torch.randn(2, 5, 7)
    x_t = torch.tensor([[6, 1, 6, 3, 6], [0, 6, 6, 6, 2]])
    log_probs = subs_log_probs(logits, x_t, mask_id=6)
    probs = log_probs.exp()
    assert torch.allclose(probs.sum(-1), torch.ones(2, 5))
    assert (probs[..., 6] == 0).all(), "MASK is never predicted"
    unmasked = x_t != 6
    carried = probs[unmasked].gather(-1, x_t[unmasked].unsqueeze(-1))
    assert (carried == 1).all(), "unmasked tokens are carried over with probability 1"
    assert torch.allclose(log_probs[~unmasked], masked_log_probs(logits, 6)[~unmasked])


def _tiny_dit(**overrides):
    torch.manual_seed(0)
    config = DiTConfig(vocab_size=12, length=16, n_layers=2, hidden=32, n_heads=4, cond_dim=16, **overrides)
    model = DiT(config).eval()
    for p in model.parameters():  # leave the zero init: random outputs make the checks meaningful
        torch.nn.init.normal_(p, std=0.2)
    return model


def test_masked_only_head_equals_full_head():
    model = _tiny_dit()
    x0 = torch.randint(0, 11, (4, 16))
    kw = dict(x0=x0, schedule="loglinear", mask_id=11, num_t=3)
    fast = nelbo(model, generator=torch.Generator().manual_seed(0), **kw)
    plain = nelbo(FullHead(model), generator=torch.Generator().manual_seed(0), **kw)
    assert torch.allclose(fast, plain, rtol=1e-5, atol=1e-5)
    fast = nelbo_discrete(model, steps=10, generator=torch.Generator().manual_seed(0), **kw)
    plain = nelbo_discrete(FullHead(model), steps=10, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.allclose(fast, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_autocast_keeps_the_loss_in_float32(device):
    model = _tiny_dit().to(device)
    x0 = torch.randint(0, 11, (4, 16), generator=torch.Generator().manual_seed(1)).to(device)
    kw = dict(x0=x0, schedule="loglinear", mask_id=11, num_t=2)
    with torch.no_grad():
        reference = nelbo(model, generator=generator(device, 0), **kw)
    head_dtypes = []
    model.head.register_forward_hook(lambda module, args, out: head_dtypes.append(out.dtype))
    with torch.autocast(device, dtype=torch.bfloat16):
        loss = nelbo(model, generator=generator(device, 0), **kw)
    loss.sum().backward()

    assert head_dtypes == [torch.bfloat16], "autocast reached the network"
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference, rtol=0.05, atol=0.05)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and g.isfinite().all() for g in grads)


def test_loss_is_zero_at_unmasked_positions():
    model = _tiny_dit()
    x0 = torch.randint(0, 11, (2, 16))
    # t tiny: almost nothing is masked; masking nothing gives exactly zero loss.
    out = nelbo(model, x0, schedule="loglinear", mask_id=11, t=torch.full((2,), 1e-9))
    assert (out == 0).all()


def test_padding_is_neither_scored_nor_seen():
    model = _tiny_dit()
    short = torch.tensor([[1, 2, 3, 4, 5, 6]])
    padded = torch.tensor([[1, 2, 3, 4, 5, 6, 0, 0, 0, 0]])
    loss_mask = padded.new_zeros(padded.shape, dtype=torch.bool)
    loss_mask[:, :6] = True
    t = torch.tensor([0.7])
    a = nelbo(model, short, schedule="loglinear", mask_id=11, t=t, generator=torch.Generator().manual_seed(3))
    b = nelbo(model, padded, schedule="loglinear", mask_id=11, t=t, loss_mask=loss_mask,
              generator=torch.Generator().manual_seed(3))
    assert torch.allclose(a, b, atol=1e-5)


def test_ar_loss_is_next_token_cross_entropy():
    model = _tiny_dit(causal=True)
    x0 = torch.randint(0, 11, (3, 16))
    logits = model(x0).float()
    logits[..., 11] = float("-inf")
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 12), x0[:, 1:].reshape(-1), reduction="none"
    ).view(3, 15).sum(1)
    assert torch.allclose(ar_loss(model, x0, mask_id=11), expected, atol=1e-4)
    loss_mask = torch.ones_like(x0, dtype=torch.bool)
    loss_mask[:, 10:] = False
    part = ar_loss(model, x0, mask_id=11, loss_mask=loss_mask)
    assert (part < ar_loss(model, x0, mask_id=11)).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mask_id", [6, None])
def test_fused_masked_nll_equals_log_softmax_and_gather(monkeypatch, dtype, mask_id, device):
    monkeypatch.setattr(objective, "_CHUNK_ELEMENTS", 16)  # two rows per chunk: the chunking is exercised
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(9, 7, generator=g)).to(device, dtype).requires_grad_()
    targets = torch.randint(0, 6, (9,), generator=g).to(device)
    weights = torch.randn(9, generator=g).to(device)

    fused = objective.masked_nll(logits, targets, mask_id)
    (grad_fused,) = torch.autograd.grad((fused * weights).sum(), logits)
    log_probs = torch.log_softmax(logits.float(), -1) if mask_id is None else masked_log_probs(logits, mask_id)
    plain = -log_probs.gather(-1, targets[:, None]).squeeze(-1)
    (grad_plain,) = torch.autograd.grad((plain * weights).sum(), logits)

    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    tolerance = 1e-2 if dtype == torch.bfloat16 else 1e-6  # bf16 gradients are rounded to 8 bits
    torch.testing.assert_close(grad_fused.float(), grad_plain.float(), rtol=tolerance, atol=tolerance)
    if mask_id is not None:
        assert grad_fused[:, mask_id].eq(0).all()  # MASK has no probability, so no gradient
        assert objective.masked_nll(logits[:2], torch.full((2,), mask_id, device=device), mask_id).isinf().all()
