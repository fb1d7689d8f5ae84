"""Samplers against the exact denoiser of an enumerable distribution."""

import dataclasses

import pytest
import torch
from devices import DEVICES, generator
from full_head import FullHead
from sampling_args import split

from unmask import DiT, DiTConfig, sample
from unmask.sampling import DrawConfig, SamplerConfig, draw_categorical, filtered_probs, generate

N = 20000


def _draw(toy, n=N, seed=0, device="cpu", **kwargs):
    """Samples of the exact denoiser on ``device``; the tokens come back on the CPU (the toy's tables)."""
    config, rest = split(kwargs)
    if "template" in rest:
        rest["template"] = rest["template"].to(device)
    out = generate(toy.denoiser(device), config, batch_size=n, length=toy.length, mask_id=toy.mask_id,
                   generator=generator(device, seed), device=device, **rest)
    return dataclasses.replace(out, tokens=out.tokens.cpu())


@pytest.mark.parametrize("device", DEVICES)
def test_first_hitting_reproduces_the_distribution(toy, device):
    out = _draw(toy, sampler="first_hitting", device=device)
    assert toy.tv_distance(out.tokens) < 0.03
    assert out.num_calls == toy.length  # one network call per generated token


@pytest.mark.parametrize("device", DEVICES)
def test_one_step_ancestral_is_the_product_of_marginals(toy, device):
    out = _draw(toy, sampler="ancestral", steps=1, device=device)
    assert toy.tv_distance(out.tokens, toy.product_of_marginals()) < 0.04
    assert toy.tv_distance(out.tokens) > 0.2


@pytest.mark.parametrize("device", DEVICES)
def test_ancestral_approaches_the_truth_as_steps_grow(toy, device):
    distances = [toy.tv_distance(_draw(toy, sampler="ancestral", steps=steps, device=device).tokens)
                 for steps in (1, 4, 64)]
    assert distances[0] > distances[1] > distances[2]
    assert distances[2] < 0.04


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sampler", ["first_hitting", "cached"])
def test_template_gives_the_exact_conditional(toy, sampler, device):
    template = torch.tensor([toy.mask_id, 1, toy.mask_id, 0])
    out = _draw(toy, sampler=sampler, steps=256, template=template, device=device)
    assert (out.tokens[:, 1] == 1).all() and (out.tokens[:, 3] == 0).all(), "fixed tokens never change"
    assert toy.tv_distance(out.tokens, toy.conditional(template)) < 0.03


@pytest.mark.parametrize("device", DEVICES)
def test_cached_calls_only_when_something_unmasks(toy, device):
    den = toy.denoiser(device)
    masked_counts = [3 * toy.length]
    out = generate(den, SamplerConfig(sampler="cached", steps=200), batch_size=3, length=toy.length,
                   mask_id=toy.mask_id, generator=generator(device, 1), device=device,
                   on_step=lambda x: masked_counts.append(int((x == toy.mask_id).sum())))
    steps_that_unmasked = sum(after < before for before, after in zip(masked_counts, masked_counts[1:]))
    assert out.num_calls == den.calls == steps_that_unmasked < 200 and out.num_steps == 200
    plain = generate(toy.denoiser(device), SamplerConfig(sampler="ancestral", steps=200), batch_size=3,
                     length=toy.length, mask_id=toy.mask_id, generator=generator(device, 1), device=device)
    assert plain.num_calls == 200


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("steps", [1, 2, 3])
def test_cached_samples_as_ancestral_does(toy, device, steps):
    """The cached sampler draws each position's step at once: the same distribution as the ancestral one's
    step-by-step draws, at few steps, where simultaneous unmaskings keep both far from the truth (TV 0.18 to
    0.42) and a step off would show; the two samples' own noise is about 0.014."""
    n = 100_000
    cached = _draw(toy, n=n, sampler="cached", steps=steps, device=device)
    ancestral = _draw(toy, n=n, seed=1, sampler="ancestral", steps=steps, device=device)
    assert toy.tv_distance(cached.tokens, toy.empirical(ancestral.tokens)) < 0.025
    assert cached.num_calls <= steps and ancestral.num_calls == steps


@pytest.mark.parametrize("device", DEVICES)
def test_cached_cost_follows_calls_not_steps(toy, device):
    """A grid of 10^12 steps: a loop over it would never end; the cached sampler visits the steps where
    something unmasks, at most one per masked position."""
    den = toy.denoiser(device)
    out = generate(den, SamplerConfig(sampler="cached", steps=10**12), batch_size=3, length=toy.length,
                   mask_id=toy.mask_id, generator=generator(device, 2), device=device)
    assert out.num_steps == 10**12 and out.num_calls == den.calls <= 3 * toy.length
    assert not (out.tokens == toy.mask_id).any()


def test_seeded_generators_reproduce_samples(toy):
    a = _draw(toy, n=64, seed=7, sampler="first_hitting").tokens
    b = _draw(toy, n=64, seed=7, sampler="first_hitting").tokens
    c = _draw(toy, n=64, seed=8, sampler="first_hitting").tokens
    assert torch.equal(a, b) and not torch.equal(a, c)


def _random_dit():
    torch.manual_seed(0)
    model = DiT(DiTConfig(vocab_size=20, length=12, n_layers=2, hidden=32, n_heads=4, cond_dim=16)).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sampler", ["ancestral", "cached", "first_hitting", "analytic"])
def test_positions_only_head_gives_the_same_samples(sampler, device):
    model = _random_dit().to(device)
    kw = dict(batch_size=5, length=12, mask_id=19, steps=16, sampler=sampler)
    fast = sample(model, generator=generator(device, 3), **kw)
    plain = sample(FullHead(model), generator=generator(device, 3), **kw)
    assert torch.equal(fast, plain)
    assert not (fast == 19).any()


def test_final_step_fills_what_the_schedule_leaves_masked():
    model = _random_dit()
    # linear-in-sigma has alpha_0 < 1: a few positions can stay masked after the grid.
    for final_step in ("sample", "argmax"):
        out = generate(model, SamplerConfig(steps=2, final_step=final_step), batch_size=4, length=12, mask_id=19,
                       schedule="linear", generator=torch.Generator().manual_seed(0))
        assert not (out.tokens == 19).any()


def test_filtered_probs_controls():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 3.0]])
    plain = filtered_probs(logits, mask_id=4)
    assert plain[0, 4] == 0 and plain.dtype == torch.float64
    assert torch.allclose(filtered_probs(logits, 4, top_k=5), plain)
    assert torch.allclose(filtered_probs(logits, 4, top_p=1.0), plain)
    assert (filtered_probs(logits, 4, top_k=2)[0, 2:] == 0).all()
    nucleus = filtered_probs(logits, 4, top_p=0.6)
    assert nucleus[0, 0] > 0 and (nucleus[0, 1:] == 0).all()
    assert filtered_probs(logits, 4, temperature=0.0)[0].argmax() == 0
    cold = filtered_probs(logits, 4, temperature=0.5)
    assert cold[0, 0] > plain[0, 0]


def test_categorical_draw_matches_probabilities():
    probs = torch.tensor([[0.0, 0.2, 0.0, 0.5, 0.3]], dtype=torch.float64).repeat(50000, 1)
    ids = draw_categorical(probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(ids, minlength=5).double() / len(ids)
    assert torch.allclose(freq, probs[0], atol=0.01)
    assert freq[0] == 0 and freq[2] == 0


def test_a_draw_rounding_past_the_total_stays_on_an_id_with_mass(monkeypatch):
    probs = torch.tensor([[0.0, 0.6, 0.4, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0, 0.5]], dtype=torch.float64)
    ones = torch.ones(2, 1, dtype=torch.float64)
    monkeypatch.setattr(torch, "rand", lambda *args, **kwargs: ones)  # u * total == total exactly
    assert draw_categorical(probs).tolist() == [2, 4]


def test_temperature_zero_is_deterministic(toy):
    cfg = SamplerConfig(steps=4, draw=DrawConfig(temperature=0.0))
    a = generate(toy.denoiser(), cfg, batch_size=4, length=4, mask_id=toy.mask_id,
                 generator=torch.Generator().manual_seed(0)).tokens
    b = generate(toy.denoiser(), cfg, batch_size=4, length=4, mask_id=toy.mask_id,
                 generator=torch.Generator().manual_seed(0)).tokens
    assert torch.equal(a, b)


def test_bad_arguments():
    model = _random_dit()
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(model, batch_size=1, length=12, mask_id=19, sampler="magic")
    with pytest.raises(ValueError, match="template"):
        sample(model, batch_size=2, length=12, mask_id=19, template=torch.zeros(3, 12, dtype=torch.long))
