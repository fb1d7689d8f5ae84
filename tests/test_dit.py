import pytest
import torch

from unmask import DiT, DiTConfig, nelbo
from unmask.config import load_preset
from unmask.data import get_tokenizer


def test_owt_small_preset_has_the_papers_parameter_count():
    """The owt-small run preset (with its GPT-2 tokenizer) builds the paper's 169.6M-parameter DiT small."""
    config = load_preset("owt-small")
    vocab = get_tokenizer(config.data.tokenizer).vocab_size
    assert vocab == 50258
    with torch.device("meta"):
        model = DiT(config.model_config(vocab))
    assert (model.config.length, model.config.causal) == (1024, False)
    total = model.num_parameters()
    assert abs(total - 169.6e6) < 0.1e6, total
    blocks = sum(p.numel() for p in model.blocks.parameters())
    assert abs(blocks - 92.1e6) < 0.1e6
    # The AR baseline of the same preset is the same network with causal attention.
    config.objective.name = "ar"
    assert config.model_config(vocab).causal


def test_model_config_fields_that_follow_from_the_run_are_not_settable():
    from unmask.config import ConfigError, apply_overrides

    with pytest.raises(ConfigError, match="model.vocab_size is not set in a run's config: it follows from the tok"):
        apply_overrides(load_preset("tiny"), ["model.vocab_size=10"])
    assert "vocab_size" not in load_preset("tiny").to_dict()["model"]
    with pytest.raises(ValueError, match="vocab_size must be a positive"):
        DiT(DiTConfig())


def test_zero_init_gives_uniform_predictions():
    model = DiT(DiTConfig(vocab_size=10, length=8, n_layers=2, hidden=32, n_heads=4, cond_dim=16))
    logits = model(torch.randint(0, 10, (2, 8)), torch.rand(2))
    assert (logits == 0).all()


def _random(causal=False, time_conditioning=False):
    torch.manual_seed(0)
    model = DiT(DiTConfig(vocab_size=10, length=8, n_layers=2, hidden=32, n_heads=4, cond_dim=16, causal=causal,
                          time_conditioning=time_conditioning, dropout=0.0))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model


def test_causal_mode_sees_no_future_tokens():
    model = _random(causal=True)
    x = torch.randint(0, 10, (1, 8))
    y = x.clone()
    y[0, 5] = (x[0, 5] + 1) % 10
    a, b = model(x), model(y)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6)
    assert not torch.allclose(a[:, 5:], b[:, 5:])
    bidirectional = _random()
    assert not torch.allclose(bidirectional(x)[:, :5], bidirectional(y)[:, :5])


def test_time_conditioning_switch():
    x = torch.randint(0, 10, (1, 8))
    off, on = _random(), _random(time_conditioning=True)
    assert torch.equal(off(x, torch.tensor([0.1])), off(x, torch.tensor([0.9])))
    assert not torch.allclose(on(x, torch.tensor([0.1])), on(x, torch.tensor([0.9])))


def test_positions_and_attention_mask():
    model = _random().eval()
    x = torch.randint(0, 10, (3, 8))
    where = torch.rand(3, 8) < 0.5
    assert torch.allclose(model(x, where=where), model(x)[where], atol=1e-5)
    keep = torch.ones(3, 8, dtype=torch.bool)
    keep[:, 5:] = False
    masked = model(x, attention_mask=keep)
    assert torch.allclose(masked[:, :5], model(x[:, :5]), atol=1e-5)
    with pytest.raises(ValueError, match="exceeds"):
        model(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.slow
def test_tiny_dit_overfits_a_repeated_text():
    text = b"the cat sat on the mat. "
    x0 = torch.tensor(list(text * 3)[:64]).unsqueeze(0).repeat(16, 1)
    torch.manual_seed(0)
    model = DiT(DiTConfig(vocab_size=257, length=64, n_layers=2, hidden=64, n_heads=4, cond_dim=32, dropout=0.0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(300):
        loss = nelbo(model, x0, schedule="loglinear", mask_id=256, generator=g).mean() / 64
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-20:]) / 20
    assert last < first / 5, (first, last)


def test_cpu_dropout_keeps_the_expectation():
    from unmask.models.dropout import Dropout, keep_mask

    keep, rate = keep_mask(torch.Size([400, 1000]), 0.1, torch.device("cpu"))
    assert rate == round(0.1 * 2**15) / 2**15
    n = keep.numel()
    # Binomial count of kept entries within 5 standard deviations of n (1 - rate).
    assert abs(keep.sum().item() - n * (1 - rate)) < 5 * (n * rate * (1 - rate)) ** 0.5
    assert abs(keep[:, ::2].float().mean() - keep[:, 1::2].float().mean()) < 0.01  # both 16-bit halves

    dropout = Dropout(0.25)
    x = torch.randn(64, 512, requires_grad=True)
    torch.manual_seed(0)
    y = dropout(x)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / 0.75)  # 0.25 is a multiple of 2^-15: exact scale
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(grad, kept.float() / 0.75)
    torch.manual_seed(0)
    assert torch.equal(dropout(x), y)  # reproducible from the global seed
    assert torch.equal(dropout.eval()(x), x) and torch.equal(Dropout(0.0)(x), x)
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)
    almost_all = Dropout(1 - 2**-17).train()(torch.ones(4, 2**16))  # the rate stops at 1 - 2^-15
    assert torch.isfinite(almost_all).all() and set(almost_all.unique().tolist()) <= {0.0, 2.0**15}
    x = (1 + torch.rand(2**20)).bfloat16()
    ratio = Dropout(0.1)(x).float().sum() / x.float().sum()
    assert abs(ratio.item() - 1.0) < 0.001  # the scale is not rounded to bf16 (1.109 for 1.111: 0.998)
