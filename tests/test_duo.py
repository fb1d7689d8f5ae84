"""Duo as a model kind: its sampling run on the toy distribution (exact denoiser), templates, draw controls,
the DiT's relaxed inputs, and a duo run through every command."""

import json
import math

import pytest
import torch
from toy_uniform import UniformExactDenoiser, sample_chain

from unmask import DiT, DiTConfig, SamplerConfig, conditional_nelbo, generate_text, load
from unmask.bounds.conditional import RowNoise
from unmask.bounds.uniform import uniform_conditional_bound, uniform_posterior
from unmask.cli import main
from unmask.config import ConfigError, apply_overrides, load_preset
from unmask.sampling import DrawConfig, Process, Remasking
from unmask.sampling.run import initial_state, run_to_end
from unmask.sampling.uniform import UniformRun, psi_step
from unmask.schedules import get_schedule
from unmask.serve import create_app
from unmask.validation import validate

LINEAR_ALPHA = get_schedule("polynomial", k=1.0)  # alpha_t = 1 - t: z_1 is exactly uniform


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()  # thousands of tiny ops: a thread pool costs more than it gives
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class ContextDenoiser(UniformExactDenoiser):
    """The exact leave-one-out denoiser for a template: the ``clean`` positions are known to be uncorrupted
    (alpha = 1 there), as a model that saw clean contexts in training would read them."""

    def __init__(self, toy, clean):
        super().__init__(toy, LINEAR_ALPHA)
        self.clean = clean

    def conditionals(self, z_t, t):
        alpha = self.schedule.alpha(t.double()).view(-1, 1, 1).expand(-1, 1, self.dist.length)
        alpha = torch.where(self.clean, 1.0, alpha)
        matches = (z_t[:, None, :] == self.dist.sequences[None]).double()
        likelihood = alpha * matches + (1 - alpha) / self.dist.vocab
        ones = torch.ones_like(likelihood[..., :1])
        before = torch.cat([ones, likelihood[..., :-1]], -1).cumprod(-1)
        after = torch.cat([likelihood[..., 1:], ones], -1).flip(-1).cumprod(-1).flip(-1)
        weights = self.dist.probs[None, :, None] * before * after
        marginals = torch.stack([weights[..., i] @ self.onehot[:, i] for i in range(self.dist.length)], dim=1)
        return marginals / marginals.sum(-1, keepdim=True)


def _run(toy, config, n, seed, template=None, denoiser=None):
    process = Process(mask_id=toy.mask_id, schedule=LINEAR_ALPHA, parameterization="mean", vocab_size=toy.vocab + 1)
    x = initial_state(batch_size=n, length=toy.length, mask_id=toy.mask_id, template=template, device="cpu")
    run = UniformRun(config, x, process=process, generator=torch.Generator().manual_seed(seed))
    return run_to_end(denoiser or UniformExactDenoiser(toy, LINEAR_ALPHA), run)


def test_the_run_is_the_ancestral_chain(toy):
    """UniformRun with the exact denoiser draws what the reference loop of tests/toy_uniform.py draws."""
    out = _run(toy, SamplerConfig(sampler="ancestral", steps=50), 2000, seed=3)
    chain = sample_chain(UniformExactDenoiser(toy, LINEAR_ALPHA), 2000, 50, torch.Generator().manual_seed(3))
    assert out.num_calls == out.num_steps == 50
    assert (out.tokens == chain).all(1).double().mean() > 0.99  # rounding may move a draw on a boundary


def test_templates_stay_fixed_and_the_conditional_is_reached(toy):
    template = torch.tensor([toy.mask_id, 1, toy.mask_id, toy.mask_id])
    for config in (SamplerConfig(sampler="ancestral", steps=200),
                   SamplerConfig(sampler="psi", steps=200, remasking=Remasking("cap", eta=0.01))):
        out = _run(toy, config, 10_000, seed=4, template=template,
                   denoiser=ContextDenoiser(toy, template != toy.mask_id))
        assert (out.tokens[:, 1] == 1).all()
        assert toy.tv_distance(out.tokens, toy.conditional(template)) < 0.04, config.sampler


def test_draw_controls_and_the_greedy_tail(toy):
    cold = SamplerConfig(steps=8, draw=DrawConfig(temperature=0.0))
    assert len({tuple(_run(toy, cold, 1, seed=s).tokens[0].tolist()) for s in range(4)}) <= 4
    greedy = SamplerConfig(steps=8, final_step="argmax")
    # The last step takes the argmax of x_theta: the same z_{1/8} gives the same tokens whatever the last draw.
    a, b = _run(toy, greedy, 64, seed=5), _run(toy, greedy, 64, seed=5)
    assert torch.equal(a.tokens, b.tokens)
    top = _run(toy, SamplerConfig(steps=8, draw=DrawConfig(top_k=1)), 256, seed=6)
    assert toy.tv_distance(top.tokens) > toy.tv_distance(_run(toy, SamplerConfig(steps=8), 256, seed=6).tokens)


def test_relaxed_inputs_embed_as_the_mixture():
    torch.manual_seed(0)
    model = DiT(DiTConfig(vocab_size=9, length=8, n_layers=1, hidden=16, n_heads=2, cond_dim=8, dropout=0.0,
                          time_conditioning=True)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    ids = torch.randint(0, 8, (2, 8))
    t = torch.rand(2)
    one_hot = torch.nn.functional.one_hot(ids, 9).float()
    assert torch.allclose(model(one_hot, t), model(ids, t), atol=1e-5)
    soft = torch.softmax(torch.randn(2, 8, 9), -1)
    mixed = model(soft, t)
    assert mixed.shape == (2, 8, 9) and not torch.allclose(mixed, model(ids, t))


def test_duo_settings_are_checked():
    base = load_preset("tiny")
    with pytest.raises(ConfigError, match="time_conditioning=true"):
        validate(apply_overrides(base, ["objective.name=duo"]))
    with pytest.raises(ConfigError, match="applies to objective.name=duo only"):
        validate(apply_overrides(load_preset("tiny"), ["objective.curriculum_end=10"]))
    with pytest.raises(ConfigError, match="must not come after"):
        validate(apply_overrides(load_preset("tiny"), ["objective.name=duo", "model.time_conditioning=true",
                                                       "objective.curriculum_start=20", "objective.curriculum_end=10"]))


@pytest.mark.slow
def test_a_duo_run_through_every_command(tmp_path, corpus_file, tiny_overrides, capsys):
    run = tmp_path / "duo"
    args = [*tiny_overrides, "objective.name=duo", "model.time_conditioning=true", "objective.curriculum_start=0",
            "objective.curriculum_end=2"]  # steps 0-2 on the relaxed inputs, then the uniform-state NELBO
    assert main(["train", "--preset", "tiny", "--data", str(corpus_file), "--out", str(run), "--quiet",
                 "--max-steps", "4", *args]) == 0
    assert main(["eval", str(run), "--num-t", "2", "--json", str(tmp_path / "eval.json")]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["objective"] == "duo" and not report["exact"] and report["nelbo_per_token"] > 0
    pipeline = load(run)
    for flags, config in ((["--steps", "4"], SamplerConfig(steps=4)),
                          (["--steps", "4", "--sampler", "psi", "--remask", "cap", "--eta", "0.05"],
                           SamplerConfig(sampler="psi", steps=4, remasking=Remasking("cap", eta=0.05))),
                          (["--steps", "4", "--final-step", "argmax", "--top-p", "0.9"],
                           SamplerConfig(steps=4, final_step="argmax", draw=DrawConfig(top_p=0.9)))):
        out = tmp_path / "samples.json"
        assert main(["sample", str(run), "--num-samples", "2", "--seed", "1", "--prompt", "it is", *flags,
                     "--json", str(out)]) == 0
        tokens = [s["tokens"] for s in json.loads(out.read_text())["samples"]]
        expected = generate_text(pipeline, config, num_samples=2, seed=1, prompt="it is")
        assert tokens == expected.tokens.tolist()
        assert all(text.startswith("it is") for text in expected.texts)
    long = generate_text(pipeline, SamplerConfig(steps=2), num_samples=1, length=80, prompt="it is")
    assert long.tokens.shape == (1, 80) and long.num_calls == 2 * 4  # four windows of 32, two steps each
    fastapi = pytest.importorskip("fastapi.testclient")
    # The server samples a duo run as unmask sample does.
    with fastapi.TestClient(create_app(pipeline), base_url="http://localhost") as client:
        body = {"prompt": "it is", "steps": 4, "seed": 3, "num_samples": 2, "sampler": "psi", "top_k": 5}
        served = client.post("/v1/generate", json=body).json()
    expected = generate_text(pipeline, SamplerConfig(sampler="psi", steps=4, draw=DrawConfig(top_k=5)), num_samples=2,
                             seed=3, prompt="it is")
    assert [s["tokens"] for s in served["samples"]] == expected.tokens.tolist()
    bound = conditional_nelbo(pipeline, "it is", " a truth", num_t=8)  # lm-eval's loglikelihood of a duo run
    assert math.isfinite(float(bound)) and float(bound) > 0
    capsys.readouterr()
    assert main(["sample", str(run), "--sampler", "first_hitting"]) == 2
    assert "samples with --sampler ancestral, cached, psi" in capsys.readouterr().err


@pytest.mark.parametrize("kappa", [1.0, 0.3])
def test_the_mixture_draw_is_the_posterior(kappa):
    """Stay / model / uniform (sampling/uniform.py) draws what the (Psi-)posterior over the vocabulary says."""
    n, z = 200_000, 2
    x_theta = torch.tensor([0.1, 0.05, 0.25, 0.6, 0.0], dtype=torch.float64)  # id 4 is MASK
    alpha_t, alpha_s = torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64)
    draws = psi_step(x_theta.expand(n, 5), torch.full((n,), z), alpha_t, alpha_s, kappa,
                     torch.Generator().manual_seed(0), mask_id=4)
    predictor = uniform_posterior(x_theta, torch.tensor(z), alpha_t, alpha_s, mask_id=4)
    corrector = alpha_s * uniform_posterior(x_theta, torch.tensor(z), alpha_t, 1.0, mask_id=4)
    corrector[:4] += (1 - alpha_s) / 4
    expected = kappa * predictor + (1 - kappa) * corrector
    empirical = torch.bincount(draws, minlength=5).double() / n
    assert empirical[4] == 0 and (empirical - expected).abs().max() < 4e-3


def test_the_conditional_bound_is_exact_given_the_context(toy):
    """-log p(y | c) on the toy: context at position 1, the continuation at 0, 2 and 3 (infilling), with the
    exact leave-one-out denoiser that reads the context as clean."""
    x0 = toy.sequences[toy.probs.argmax()].unsqueeze(0)
    scored = torch.tensor([[True, False, True, True]])
    template = torch.where(scored[0], toy.mask_id, x0[0])
    truth = -float(torch.log(toy.conditional(template)[toy.index(x0)]))
    denoiser = ContextDenoiser(toy, ~scored[0])
    rows = 20_000
    noise = RowNoise.draw(rows, toy.length, torch.Generator().manual_seed(0))
    estimates = uniform_conditional_bound(denoiser, x0.expand(rows, -1), scored.expand(rows, -1), noise.u,
                                          noise.order, schedule=LINEAR_ALPHA, mask_id=toy.mask_id,
                                          vocab_size=toy.vocab + 1, min_noise_rate=1e-5)
    error = float(estimates.std()) / rows**0.5
    assert abs(float(estimates.mean()) - truth) < 4 * error + 0.003, (float(estimates.mean()), truth, error)
