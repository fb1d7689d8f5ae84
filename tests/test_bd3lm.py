"""Block diffusion (BD3-LM): the NELBO against the exact toy distribution, the vectorised attention
against running each block with its clean prefix, clipped schedules, and the configuration."""

import pytest
import torch
from toy import ToyDistribution

from unmask import DiT, DiTConfig, nelbo
from unmask.bounds.blocks import bd3lm_nelbo, block_losses, time_range
from unmask.config import ConfigError, apply_overrides, load_preset
from unmask.kinds import sequence_losses
from unmask.models.block_attention import block_causal_mask, block_diffusion_mask, flex_available
from unmask.schedules import get_schedule
from unmask.validation import validate

SCHEDULES = ["loglinear", "linear", "cosine", "cosine_squared", "geometric", "polynomial"]


@pytest.fixture(scope="module")
def toy():
    return ToyDistribution(vocab=3, length=4, seed=1)


def _random_dit(length=16, **overrides):
    torch.manual_seed(0)
    config = DiTConfig(vocab_size=12, length=length, n_layers=2, hidden=32, n_heads=4, cond_dim=16, dropout=0.0,
                       **overrides)
    model = DiT(config).eval()
    for p in model.parameters():  # leave the zero init: random outputs make the checks meaningful
        torch.nn.init.normal_(p, std=0.3)
    return model


class BlockCausalOnly(torch.nn.Module):
    """The DiT run block-causally, without announcing the vectorised pass: the objective then runs it once per block."""

    supports_positions = True

    def __init__(self, model, block_size):
        super().__init__()
        self.model, self.block_size = model, block_size

    def forward(self, x_t, t, where=None):
        return self.model(x_t, t, where=where, block_size=self.block_size)


# --- the NELBO against the exact distribution ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("block_size", [1, 2, 4])
def test_nelbo_equals_exact_nll_for_every_schedule(toy, block_size):
    """With the exact conditionals as denoiser the bound is tight: its mean is -log p(x0) (z-score per sequence)."""
    g = torch.Generator().manual_seed(0)
    x0 = toy.draw(6, g)
    for schedule in SCHEDULES:
        draws = 3000
        per_draw = block_losses(toy.denoiser(), x0, block_size=block_size, schedule=schedule, mask_id=toy.mask_id,
                                num_t=draws, generator=g).sum(-1).double()
        z = (per_draw.mean(0) + toy.log_prob(x0)) / (per_draw.std(0) / draws**0.5)
        assert z.abs().max() < 4.5, (schedule, z)


@pytest.mark.parametrize("antithetic", [True, False])
@pytest.mark.parametrize("schedule", ["loglinear", "cosine", "geometric"])
def test_block_size_L_is_the_mdlm_loss_for_the_same_draws(toy, schedule, antithetic):
    x0 = toy.draw(5, torch.Generator().manual_seed(2))
    kw = dict(schedule=schedule, mask_id=toy.mask_id, num_t=3, antithetic=antithetic)
    blocks = bd3lm_nelbo(toy.denoiser(), x0, block_size=toy.length, generator=torch.Generator().manual_seed(7), **kw)
    mdlm = nelbo(toy.denoiser(), x0, generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(blocks, mdlm)
    # The DiT's vectorised pass at block size L is its plain bidirectional pass.
    model = _random_dit()
    x0 = torch.randint(0, 11, (3, 16), generator=torch.Generator().manual_seed(3))
    kw["mask_id"] = 11
    blocks = bd3lm_nelbo(model, x0, block_size=16, generator=torch.Generator().manual_seed(7), **kw)
    mdlm = nelbo(model, x0, generator=torch.Generator().manual_seed(7), **kw)
    torch.testing.assert_close(blocks, mdlm, rtol=1e-5, atol=1e-4)


def test_block_size_one_scores_each_token_given_the_clean_prefix(toy):
    """At block size 1 a scored token's loss is -log p(x^i | x^{<i}) times the weight: the AR factorisation."""
    x0 = toy.draw(2, torch.Generator().manual_seed(4))
    t = torch.full((2, toy.length), 1.0)  # alpha_1 = 0: everything masked, every block scored with weight 1
    linear_alpha = get_schedule("polynomial", k=1.0)
    per_block = block_losses(toy.denoiser(), x0, block_size=1, schedule=linear_alpha, mask_id=toy.mask_id, t=t)[0]
    log_p = toy.log_prob(x0)
    torch.testing.assert_close(per_block.sum(-1).double(), -log_p.double(), rtol=1e-4, atol=1e-4)


def test_vectorised_pass_equals_block_by_block_calls():
    """The objective's one vectorised pass and its fallback (one call per block) give the same losses."""
    model = _random_dit()
    x0 = torch.randint(0, 11, (4, 16), generator=torch.Generator().manual_seed(5))
    loss_mask = torch.ones_like(x0, dtype=torch.bool)
    loss_mask[0, 12:] = False  # padding: neither scored nor seen
    kw = dict(block_size=4, schedule="loglinear", mask_id=11, num_t=2, loss_mask=loss_mask)
    fast = bd3lm_nelbo(model, x0, generator=torch.Generator().manual_seed(1), **kw)
    plain = bd3lm_nelbo(BlockCausalOnly(model, 4), x0, generator=torch.Generator().manual_seed(1), **kw)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-4)


# --- the attention of the vectorised input ------------------------------------------------------


def test_block_diffusion_mask_pattern():
    # L = 4, blocks of 2: noisy n0 n1 | n2 n3, then clean c0 c1 | c2 c3.
    expected = torch.tensor([
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],  # a noisy block: itself and the clean blocks before it
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],  # a clean block: the clean blocks up to itself, never the noisy half
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 1],
        [0, 0, 0, 0, 1, 1, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(block_diffusion_mask(4, 2), expected)
    assert torch.equal(block_causal_mask(4, 2), expected[4:, 4:])


@pytest.mark.parametrize("block_size", [1, 4, 8, 16])
def test_vectorised_logits_equal_each_block_run_with_its_clean_prefix(block_size):
    model = _random_dit()
    g = torch.Generator().manual_seed(6)
    x0 = torch.randint(0, 11, (3, 16), generator=g)
    x_t = torch.where(torch.rand(3, 16, generator=g) < 0.5, 11, x0)
    vectorised = model(x_t, x0=x0, block_size=block_size)
    where = x_t == 11
    torch.testing.assert_close(model(x_t, x0=x0, block_size=block_size, where=where), vectorised[where])
    for b in range(16 // block_size):
        span = slice(b * block_size, (b + 1) * block_size)
        alone = model(torch.cat([x0[:, : b * block_size], x_t[:, span]], dim=1), block_size=block_size)
        torch.testing.assert_close(vectorised[:, span], alone[:, span], rtol=1e-5, atol=1e-5)
        cache = model.new_cache(block_size)
        for j in range(b):
            model.extend_cache(cache, x0[:, j * block_size : (j + 1) * block_size])
        torch.testing.assert_close(model(x_t[:, span], cache=cache), alone[:, span], rtol=1e-5, atol=1e-5)


def test_vectorised_pass_hides_padding_and_later_blocks():
    model = _random_dit()
    g = torch.Generator().manual_seed(7)
    x0 = torch.randint(0, 11, (2, 16), generator=g)
    x_t = torch.where(torch.rand(2, 16, generator=g) < 0.5, 11, x0)
    base = model(x_t, x0=x0, block_size=4)
    later = x0.clone(), x_t.clone()
    later[0][:, 8:], later[1][:, 8:] = 3, 5  # change blocks 2 and 3 only
    torch.testing.assert_close(model(later[1], x0=later[0], block_size=4)[:, :8], base[:, :8])
    keep = torch.ones_like(x0, dtype=torch.bool)
    keep[:, 12:] = False
    padded = model(x_t, x0=x0, block_size=4, attention_mask=keep)[:, :12]
    torch.testing.assert_close(padded, model(x_t[:, :12], x0=x0[:, :12], block_size=4), rtol=1e-5, atol=1e-5)


def test_block_passes_refuse_what_they_cannot_do():
    model = _random_dit()
    x = torch.randint(0, 11, (1, 16))
    with pytest.raises(ValueError, match="must divide"):
        model(x, block_size=5)
    with pytest.raises(ValueError, match="time conditioning"):
        _random_dit(time_conditioning=True)(x, x0=x, block_size=4)
    cache = model.new_cache(4)
    model.extend_cache(cache, x[:, :4])
    with pytest.raises(ValueError, match="exceeds"):
        model(x, cache=cache)
    with pytest.raises(ValueError, match="attention"):
        DiT(DiTConfig(vocab_size=12, length=16, attention="xformers"))


@pytest.mark.slow
@pytest.mark.skipif(not flex_available(), reason="FlexAttention needs torch >= 2.5")
@torch.no_grad()  # on CPU FlexAttention runs inference only (training there uses SDPA)
def test_flex_attention_gives_the_sdpa_logits():
    sdpa, flex = _random_dit(), _random_dit(attention="flex")
    g = torch.Generator().manual_seed(8)
    x0 = torch.randint(0, 11, (2, 16), generator=g)
    x_t = torch.where(torch.rand(2, 16, generator=g) < 0.5, 11, x0)
    torch.testing.assert_close(flex(x_t, x0=x0, block_size=4), sdpa(x_t, x0=x0, block_size=4), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(flex(x_t, block_size=4), sdpa(x_t, block_size=4), rtol=1e-4, atol=1e-4)


# --- clipped schedules ---------------------------------------------------------------------------


def test_mask_rate_range_sets_the_times():
    loglinear = get_schedule("loglinear")
    low, high = time_range(loglinear, (0.3, 0.8))
    assert low == pytest.approx(0.3 / 0.999) and high == pytest.approx(0.8 / 0.999)
    assert time_range(loglinear) == (pytest.approx(1e-3 / 0.999), 1.0)
    cosine = get_schedule("cosine")
    low, high = time_range(cosine, (0.3, 0.8))
    rates = cosine.one_minus_alpha(torch.tensor([low, high], dtype=torch.float64))
    torch.testing.assert_close(rates, torch.tensor([0.3, 0.8], dtype=torch.float64))

    seen = []

    class Recorder:
        def __call__(self, x_t, t):
            seen.append((x_t == 11).float().mean())
            return torch.zeros(*x_t.shape, 12)

    x0 = torch.randint(0, 11, (64, 64))
    block_losses(Recorder(), x0, block_size=64, schedule="loglinear", mask_id=11, mask_rate_range=(0.6, 0.7))
    assert 0.6 - 0.02 < float(seen[0]) < 0.7 + 0.02


def test_training_uses_the_clipped_range_and_evaluation_the_full_one():
    config = apply_overrides(load_preset("tiny"), ["objective.name=bd3lm", "objective.block_size=4",
                                                   "objective.mask_rate_range=[0.5,0.9]", "data.length=16"])
    validate(config)
    model = _random_dit()
    batch = {"input_ids": torch.randint(0, 11, (4, 16)), "loss_mask": torch.ones(4, 16, dtype=torch.bool)}

    def losses(**kw):
        return sequence_losses(model, batch, config.objective, 11, generator=torch.Generator().manual_seed(0), **kw)[0]

    full = bd3lm_nelbo(model, batch["input_ids"], block_size=4, schedule="loglinear", mask_id=11,
                       generator=torch.Generator().manual_seed(0))
    clipped = bd3lm_nelbo(model, batch["input_ids"], block_size=4, schedule="loglinear", mask_id=11,
                          mask_rate_range=(0.5, 0.9), generator=torch.Generator().manual_seed(0))
    assert torch.equal(losses(), full) and torch.equal(losses(step=0), clipped)
    assert not torch.equal(full, clipped)


def test_clipped_range_lowers_the_variance_of_the_per_block_loss(toy):
    x0 = toy.draw(2000, torch.Generator().manual_seed(9))

    def variance(rates):
        losses = block_losses(toy.denoiser(), x0, block_size=2, schedule="loglinear", mask_id=toy.mask_id,
                              mask_rate_range=rates, generator=torch.Generator().manual_seed(0))
        return float(losses.var())

    assert variance((0.3, 0.8)) < 0.5 * variance((0.0, 1.0))


# --- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "message"), [
    (["objective.block_size=5"], "must divide data.length"),
    (["model.time_conditioning=true"], "time_conditioning=false"),
    (["objective.discrete_steps=100"], "continuous-time"),
    (["objective.mask_rate_range=[0.8,0.3]"], "0 <= beta < omega <= 1"),
    (["objective.mask_rate_range=[0.3]"], "beta, omega"),
    (["objective.mask_rate_range=0.3"], "list of numbers"),
    (["model.attention=flash"], "model.attention must be one of"),
])
def test_bad_bd3lm_configs_name_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(apply_overrides(load_preset("tiny"), ["objective.name=bd3lm", *overrides]))


def test_mask_rate_range_is_for_bd3lm_only():
    with pytest.raises(ConfigError, match="bd3lm only"):
        validate(apply_overrides(load_preset("tiny"), ["objective.mask_rate_range=[0.3,0.8]"]))
    config = apply_overrides(load_preset("tiny"), ["objective.name=bd3lm", "objective.mask_rate_range=[0.3, 0.8]"])
    validate(config)
    assert config.objective.mask_rate_range == [0.3, 0.8]
    assert not config.model_config(100).causal
