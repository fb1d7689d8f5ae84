"""The generation toolkit: draw controls, ordered/threshold decoding, remasking, semi-AR."""

import math

import pytest
import torch
from sampling_args import split
from toy import ToyDistribution

from unmask import DiT, DiTConfig, nelbo
from unmask.sampling import DrawConfig, Remasking, SamplerConfig, generate, generate_long
from unmask.sampling.semi_ar import window_plan
from unmask.sampling.strategies import expected_counts, position_scores, top_per_row


@pytest.fixture(scope="module")
def toy():
    return ToyDistribution(vocab=3, length=4, seed=1)


def _gen(toy, seed=0, n=2000, **kwargs):
    config, rest = split(kwargs)
    return generate(toy.denoiser(), config, batch_size=n, length=toy.length, mask_id=toy.mask_id,
                    generator=torch.Generator().manual_seed(seed), **rest)


@pytest.mark.parametrize("template", [[3, 3, 3, 2], [0, 3, 3, 3], [1, 3, 2, 3], [3, 0, 3, 3]])
def test_first_hitting_is_exact_under_any_fixed_positions(toy, template):
    template = torch.tensor(template)
    out = _gen(toy, n=20000, sampler="first_hitting", template=template)
    fixed = template != toy.mask_id
    assert (out.tokens[:, fixed] == template[fixed]).all()
    assert toy.tv_distance(out.tokens, toy.conditional(template)) < 0.03


def test_full_nucleus_and_full_top_k_change_nothing(toy):
    plain = _gen(toy, sampler="cached", steps=8).tokens
    assert torch.equal(plain, _gen(toy, sampler="cached", steps=8, draw=DrawConfig(top_p=1.0)).tokens)
    assert torch.equal(plain, _gen(toy, sampler="cached", steps=8, draw=DrawConfig(top_k=toy.vocab + 1)).tokens)
    assert torch.equal(plain, _gen(toy, sampler="cached", steps=8, draw=DrawConfig(top_k=toy.vocab)).tokens)


def test_temperature_zero_is_the_argmax_path(toy):
    cold = DrawConfig(temperature=0.0)
    # One parallel step: every position takes the argmax of its exact marginal.
    one_step = _gen(toy, n=8, sampler="ancestral", steps=1, draw=cold).tokens
    marginals = toy.denoiser()(torch.full((1, toy.length), toy.mask_id), torch.ones(1))[0]
    assert (one_step == marginals.argmax(-1)).all()
    # Confidence order at temperature 0 involves no randomness at all: every seed gives one path.
    paths = {tuple(_gen(toy, seed=s, n=1, sampler="cached", steps=4, order="confidence", draw=cold).tokens[0].tolist())
             for s in range(5)}
    assert len(paths) == 1


@pytest.mark.parametrize("order", ["confidence", "margin", "entropy"])
def test_ordered_decoding_completes_and_keeps_fixed_tokens(toy, order):
    template = torch.tensor([3, 1, 3, 3])
    out = _gen(toy, n=64, sampler="cached", steps=2, order=order, template=template)
    assert not (out.tokens == toy.mask_id).any() and (out.tokens[:, 1] == 1).all()
    assert out.num_calls <= 2


@pytest.mark.parametrize("order", ["confidence", "margin", "entropy"])
def test_ordered_decoding_unmasks_the_best_scored_position_first(toy, order):
    # One position per step at temperature 0: the first to unmask is the one whose exact marginal (all masked)
    # scores highest under the order; random order would pick it only by chance (and not for every seed).
    marginals = toy.denoiser()(torch.full((1, toy.length), toy.mask_id), torch.ones(1))[0].double().exp()
    best = int(position_scores(marginals[:, : toy.vocab], order).argmax())
    firsts = set()
    for seed in range(6):
        states = []
        _gen(toy, seed=seed, n=1, sampler="cached", steps=toy.length, order=order,
             draw=DrawConfig(temperature=0.0), on_step=lambda x, states=states: states.append(x.clone()))
        unmasked = (states[0][0] != toy.mask_id).nonzero().flatten().tolist()
        firsts.add(tuple(unmasked))
    assert firsts == {(best,)}


def test_position_scores_by_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2], [1.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(position_scores(probs, "confidence"), torch.tensor([0.7, 0.4, 1.0], dtype=torch.float64))
    assert torch.allclose(position_scores(probs, "margin"), torch.tensor([0.5, 0.0, 1.0], dtype=torch.float64))
    entropy = torch.tensor([-(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)),
                            -(2 * 0.4 * math.log(0.4) + 0.2 * math.log(0.2)), 0.0], dtype=torch.float64)
    assert torch.allclose(position_scores(probs, "entropy"), -entropy)  # certain first: minus the entropy
    with pytest.raises(ValueError, match="unknown order"):
        position_scores(probs, "random")


def test_top_per_row_picks_the_highest_finite_scores():
    inf = float("-inf")
    scores = torch.tensor([[0.1, 0.9, 0.5, inf], [inf, inf, 0.3, 0.2], [0.4, 0.6, 0.8, 0.1]], dtype=torch.float64)
    chosen = top_per_row(scores, torch.tensor([2, 3, 0]))
    # Row 1 asks for 3 but has only 2 positions with a score; row 2 asks for none.
    assert chosen.tolist() == [[False, True, True, False], [False, False, True, True], [False] * 4]


def test_expected_counts_round_and_unmask_at_least_one():
    masked = torch.tensor([[True] * 4, [False] * 4, [True, True, True, False], [True, False, False, False]])
    assert expected_counts(masked, torch.tensor(0.3, dtype=torch.float64)).tolist() == [1, 0, 1, 1]
    assert expected_counts(masked, torch.tensor(0.6, dtype=torch.float64)).tolist() == [2, 0, 2, 1]
    assert expected_counts(masked, torch.tensor(0.1, dtype=torch.float64)).tolist() == [1, 0, 1, 1]  # round to 0
    assert expected_counts(masked, torch.tensor(0.0, dtype=torch.float64)).tolist() == [0, 0, 0, 0]
    assert expected_counts(masked, torch.tensor(1.0, dtype=torch.float64)).tolist() == [4, 0, 3, 1]


def test_remasking_without_budget_is_ancestral_sampling(toy):
    plain = _gen(toy, sampler="ancestral", steps=16).tokens
    for strategy in ("cap", "conf", "rescale"):
        same = _gen(toy, sampler="ancestral", steps=16, remasking=Remasking(strategy, eta=0.0)).tokens
        assert torch.equal(plain, same), strategy


@pytest.mark.parametrize("strategy", ["cap", "conf", "rescale", "loop"])
def test_remasking_with_budget_returns_no_mask(toy, strategy):
    template = torch.tensor([3, 3, 2, 3])
    states = []
    out = _gen(toy, n=500, sampler="cached", steps=32, template=template,
               remasking=Remasking(strategy, eta=0.5 if strategy != "conf" else 1.0),
               on_step=lambda x: states.append(x.clone()))
    assert not (out.tokens == toy.mask_id).any()
    assert (out.tokens[:, 2] == 2).all(), "fixed tokens are never remasked"
    remasked = sum(int(((a != toy.mask_id) & (b == toy.mask_id)).sum()) for a, b in zip(states, states[1:]))
    assert remasked > 0


@pytest.mark.slow
def test_remasking_keeps_the_distribution(toy):
    # ReMDM keeps the marginals q(z_t | x0): with the exact denoiser only simultaneous unmaskings
    # (as in any finite-step sampler) separate it from the truth.
    out = _gen(toy, n=10000, sampler="cached", steps=32, remasking=Remasking("cap", eta=0.05))
    assert toy.tv_distance(out.tokens) < 0.06


def _random_dit(length=16, vocab=20):
    torch.manual_seed(0)
    model = DiT(DiTConfig(vocab_size=vocab, length=length, n_layers=1, hidden=32, n_heads=4, cond_dim=16)).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model


def test_semi_autoregressive_three_windows_and_more():
    model = _random_dit()
    prefix = torch.tensor([1, 2, 3, 4])
    plan = window_plan(48, 16, 8, 4)
    assert plan == [12, 8, 8, 8, 8] and sum(plan) + 4 == 48
    out = generate_long(model, SamplerConfig(sampler="ancestral", steps=5), batch_size=3, total_length=48, window=16,
                        overlap=8, mask_id=19, prefix=prefix, generator=torch.Generator().manual_seed(0))
    assert out.tokens.shape == (3, 48)
    assert (out.tokens[:, :4] == prefix).all(), "the prefix is preserved exactly"
    assert out.num_calls == len(plan) * 5
    assert not (out.tokens == 19).any()
    with pytest.raises(ValueError, match="at most 15 fit"):
        generate_long(model, batch_size=1, total_length=48, window=16, mask_id=19, prefix=torch.arange(16))


def test_semi_autoregressive_stops_at_eos():
    model = _random_dit()
    always_eos = generate_long(model, SamplerConfig(steps=4, draw=DrawConfig(top_k=1)), batch_size=2, total_length=64,
                               window=16, mask_id=19, stop_id=5, generator=torch.Generator().manual_seed(0))
    hit = (always_eos.tokens == 5).any(1).all()
    assert always_eos.tokens.shape[1] == 16 if hit else always_eos.tokens.shape[1] == 64


@pytest.fixture(scope="module")
def trained_dit():
    """A small DiT trained for a few hundred steps on a repeated text: confident where it learned."""
    text = b"the cat sat on the mat. the dog sat on the log. "
    x0 = torch.tensor(list(text * 2)[:48]).unsqueeze(0).repeat(16, 1)
    torch.manual_seed(0)
    model = DiT(DiTConfig(vocab_size=257, length=48, n_layers=2, hidden=64, n_heads=4, cond_dim=32, dropout=0.0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(250):
        loss = nelbo(model, x0, schedule="loglinear", mask_id=256, generator=g).mean() / 48
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.slow
def test_threshold_decoding_trades_calls_for_confidence(trained_dit):
    calls = {}
    for tau in (1.0, 0.9, 0.5, 0.0):
        config = SamplerConfig(steps=48, order="confidence", threshold=tau)
        out = generate(trained_dit, config, batch_size=1, length=48, mask_id=256,
                       generator=torch.Generator().manual_seed(0))
        assert not (out.tokens == 256).any()
        calls[tau] = out.num_calls
    assert calls[1.0] == 48, "tau = 1: one token per step"
    assert calls[0.0] == 1, "tau = 0: everything in one step"
    assert calls[1.0] >= calls[0.9] >= calls[0.5] >= calls[0.0] and calls[0.9] < 48, calls
